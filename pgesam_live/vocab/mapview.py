"""The timbre map as every front end shows it: its region, its data, its colours.

`MapRegion` is the one region of the latent plane that the terminal map draws, the web page's
`#map` shows, and a 0..1 pad (`xy U V`, OSC `/pgesam/xy`, MIDI CC) maps onto: the square
around the model's training points, with a margin (the contract's "Web page"). A model
without training points gets the nominal square [-1, 1]^2.

`map_data` is what `pgesam-live map --json` prints and the web page fetches (`/map.json`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pgesam_live.notes import playable_range
from pgesam_live.vocab.commands import XY_LIMIT

# Colours by NSynth family (the map picture's, `pgesam-live map --out`, and the web page's).
FAMILY_COLOURS: dict[str, str] = {
    "bass": "#1f77b4", "brass": "#ff7f0e", "flute": "#2ca02c", "guitar": "#d62728",
    "keyboard": "#9467bd", "mallet": "#8c564b", "organ": "#e377c2", "reed": "#7f7f7f",
    "string": "#bcbd22", "synth_lead": "#17becf", "vocal": "#000000",
}
OTHER_COLOUR = "#4d4d4d"

MARGIN_FRAC = 0.12   # of the training points' span, on each side
MIN_HALF = 0.25      # the region is at least 0.5 wide (one point, or a tight cluster)
GRID = 0.01          # the region's edges are round numbers


@dataclass(frozen=True)
class MapRegion:
    """A square of the latent plane: x_min..x_max left to right, y_min..y_max bottom to top."""

    x_min: float = -1.0
    x_max: float = 1.0
    y_min: float = -1.0
    y_max: float = 1.0

    @classmethod
    def of_points(cls, points: Iterable[Sequence[float]]) -> MapRegion:
        """The square around `points` ((x, y, ...) each) with a margin, within the command
        table's coordinate range; [-1, 1]^2 when there are none."""
        pts = [(float(p[0]), float(p[1])) for p in points
               if math.isfinite(float(p[0])) and math.isfinite(float(p[1]))]
        if not pts:
            return cls()
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        span = max(max(xs) - min(xs), max(ys) - min(ys))
        half = min(XY_LIMIT, max(MIN_HALF, span / 2 * (1 + 2 * MARGIN_FRAC)))
        half = math.ceil(half / GRID - 1e-9) * GRID
        cx = _clamp(round((min(xs) + max(xs)) / 2 / GRID) * GRID, -XY_LIMIT + half,
                    XY_LIMIT - half)
        cy = _clamp(round((min(ys) + max(ys)) / 2 / GRID) * GRID, -XY_LIMIT + half,
                    XY_LIMIT - half)
        return cls(round(cx - half, 4), round(cx + half, 4), round(cy - half, 4),
                   round(cy + half, 4))

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    def to_xy(self, u: float, v: float) -> tuple[float, float]:
        """A pad position (u, v in 0..1, v up) -> the latent point."""
        return (round(self.x_min + float(u) * self.width, 6),
                round(self.y_min + float(v) * self.height, 6))

    def to_uv(self, x: float, y: float) -> tuple[float, float]:
        """A latent point -> the pad position, clamped to 0..1 (a point off the map sits on
        its edge)."""
        return (_clamp((float(x) - self.x_min) / self.width, 0.0, 1.0),
                _clamp((float(y) - self.y_min) / self.height, 0.0, 1.0))

    def contains(self, x: float, y: float) -> bool:
        return self.x_min <= x <= self.x_max and self.y_min <= y <= self.y_max

    def clamp(self, x: float, y: float) -> tuple[float, float]:
        return (_clamp(x, self.x_min, self.x_max), _clamp(y, self.y_min, self.y_max))

    def as_dict(self) -> dict[str, float]:
        return {"x_min": self.x_min, "x_max": self.x_max, "y_min": self.y_min,
                "y_max": self.y_max}


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, value))


def region_of(training_points: Iterable[Any]) -> MapRegion:
    """The region of a model's training points, given as dicts ({"x", "y", ...}) or tuples
    ((x, y, family), as `EngineView.model_points`)."""
    return MapRegion.of_points((p["x"], p["y"]) if isinstance(p, Mapping) else (p[0], p[1])
                               for p in training_points)


# GM program names for the training instruments' labels (`fluidr3_gm_000` -> "Acoustic Grand
# Piano"); the data set names an instrument `<soundfont>_<program:03d>`.
_PROGRAM_RE = re.compile(r"^(?P<bank>.+)_(?P<program>\d{3})$")
# NSynth's own instruments are `<family>_<source>_<n:03d>` (guitar_acoustic_010): no program.
_NSYNTH_RE = re.compile(r"^[a-z_]+_(acoustic|electronic|synthetic)_\d{3}$")


def instrument_label(name: str) -> str:
    """A training instrument's name for people: its GM program and soundfont when the name
    says them, else the name as it is."""
    m = _PROGRAM_RE.match(name)
    if m is None or int(m["program"]) > 127 or _NSYNTH_RE.match(name):
        return name
    from pgesam_live.model.soundfont import GM_NAMES  # noqa: PLC0415  (a plain table)

    return f"{GM_NAMES[int(m['program'])]} ({m['bank']})"


def map_data(model_id: str, training_points: Sequence[Mapping[str, Any]],
             points: Mapping[str, Sequence[float]],
             pitch_range: Sequence[int] | None = None) -> dict[str, Any]:
    """The map as data: `{"model", "training_points": [{"name", "family", "x", "y",
    "label"}], "points": {NAME: [x, y]}, "region": {x_min, x_max, y_min, y_max},
    "families": {FAMILY: colour}, "pitch_range": [lo, hi], "playable_range": [lo, hi]}` (the
    contract's three keys, then what the web page draws with: the model renders pitch_range
    and plays playable_range, its edge notes re-pitched)."""
    tps: list[dict[str, Any]] = [
        {"name": str(p.get("name", "")), "family": str(p.get("family", "")),
         "x": round(float(p["x"]), 4), "y": round(float(p["y"]), 4),
         "label": instrument_label(str(p.get("name", "")))} for p in training_points]
    families = sorted({str(p["family"]) for p in tps})
    out: dict[str, Any] = {
        "model": model_id,
        "training_points": tps,
        "points": {str(k): [round(float(v[0]), 4), round(float(v[1]), 4)]
                   for k, v in points.items()},
        "region": region_of(training_points).as_dict(),
        "families": {f: FAMILY_COLOURS.get(f, OTHER_COLOUR) for f in families},
    }
    if pitch_range is not None:
        rendered = (int(pitch_range[0]), int(pitch_range[1]))
        out["pitch_range"] = list(rendered)
        out["playable_range"] = list(playable_range(rendered))
    return out
