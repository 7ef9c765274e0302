"""The views every front end shows, in one place: the state snapshot's forms (the status line,
`status`, /pgesam/state's flat list, the web page's JSON), the map (as text, as data, and its
region), and the answers to the front-end words (status, help, map, points, seqs). REPL, OSC,
MIDI and the web page read the engine through the same seam, `EngineView`, and format only
what they answer with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pgesam_live.vocab.commands import Command, help_text
from pgesam_live.vocab.mapview import MapRegion, map_data, region_of
from pgesam_live.vocab.termmap import map_text

Snapshot = dict[str, Any]
Listener = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Reply:
    """What the engine answers a submission with: ok, one line of text, optional data."""

    ok: bool
    text: str
    data: dict[str, Any] | None = None


class ModelView(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def pitch_range(self) -> tuple[int, int]: ...

    # (and `training_points`, [{"name", "family", "x", "y"}], where the model has them)


class EngineView(Protocol):
    """The seam between the engine and every front end: the one door (`submit`), read-only
    views (snapshots built off the audio thread), names for completion, and events pushed to
    listeners ({"kind": "command" | "rejected" | "state" | "message" | "ready", ...})."""

    @property
    def patch_dir(self) -> Path: ...

    @property
    def model_points(self) -> list[tuple[float, float, str]]: ...

    @property
    def model(self) -> ModelView: ...

    def submit(self, cmd: Command | str, src: str = "repl", at_s: float | None = None,
               tag: Hashable | None = None) -> Reply: ...

    def snapshot(self) -> Snapshot: ...

    def settle(self) -> None: ...

    def time_s(self) -> float: ...

    def message(self, text: str) -> None: ...

    def add_listener(self, fn: Listener) -> None: ...

    def remove_listener(self, fn: Listener) -> None: ...

    def point_names(self) -> list[str]: ...

    def sequence_names(self) -> list[str]: ...

    def resolve_point(self, name: str) -> tuple[float, float]: ...


# -- the snapshot's forms --------------------------------------------------------------------

def fmt_point(snap: Snapshot) -> str:
    """The point as the status line shows it: `glass (-0.37, +0.21)` or `(-0.37, +0.21)`."""
    point = snap.get("point") or [0.0, 0.0]
    name = snap.get("point_name")
    xy = f"({float(point[0]):+.2f}, {float(point[1]):+.2f})"
    return f"{name} {xy}" if name else xy


def status_line(snap: Snapshot, width: int | None = None) -> str:
    """The one status line (the REPL's toolbar, `status`' first line, a web page's #status):
    tempo, point, voices, cache fill, renders pending, late notes, look-ahead, running
    sequences. Fitted to `width` columns when given: the contract's six figures are kept (in
    short forms if need be); look-ahead, sequences and the point's name go first."""
    tempo = f"{float(snap.get('tempo_bpm', 0)):g}"
    voices = f"{snap.get('voices_in_use', 0)}/{snap.get('voices_total', 0)}"
    if snap.get("voices_stolen"):
        voices += f" stolen {snap['voices_stolen']}"
    cache = f"{100 * float(snap.get('cache_fill', 0.0)):.0f}%"
    renders, late = snap.get("renders_pending", 0), snap.get("late_notes", 0)
    point = snap.get("point") or [0.0, 0.0]
    xy = f"({float(point[0]):+.2f}, {float(point[1]):+.2f})"
    seqs = snap.get("sequences") or []
    extra = [f"look-ahead {1000 * float(snap.get('lookahead_s', 0.0)):.0f} ms"]
    if snap.get("streamed_notes"):  # notes started from their head (render/stream.py)
        extra.insert(1, f"streamed {snap['streamed_notes']}")
    if float(snap.get("gain", 1.0)) != 1.0:
        extra.append(f"gain {float(snap['gain']):g}")
    if seqs:
        extra.append("seq " + ",".join(str(s) for s in seqs))
    if snap.get("osc_skewed"):  # OSC bundles timed too far ahead, played at once
        extra.append(f"osc skewed {snap['osc_skewed']}")
    full = [f"tempo {tempo}", f"at {fmt_point(snap)}", f"voices {voices}", f"cache {cache}",
            f"renders {renders}", f"late {late}"]
    candidates = [
        " | ".join(full + extra),
        " | ".join(full + extra[1:]),
        " | ".join(full),
        " | ".join([f"tempo {tempo}", f"at {xy}", *full[2:]]),
        f"{tempo} bpm | {xy} | voices {voices} | cache {cache} | renders {renders} | late {late}",
        f"{tempo}bpm {xy} v{voices} c{cache} r{renders} late{late}",
    ]
    if width is None:
        return candidates[0]
    return next((c for c in candidates if len(c) <= width), candidates[-1][:max(width, 1)])


def status_text(snap: Snapshot) -> str:
    """`status`: the status line, then the snapshot one key per line."""
    lines = [status_line(snap)]
    for key in sorted(snap):
        lines.append(f"  {key}: {snap[key]}")
    return "\n".join(lines)


def flatten_state(snap: Snapshot) -> list[Any]:
    """A snapshot as /pgesam/state's flat key/value argument list (see frontends/osc.py)."""
    out: list[Any] = []
    for key in sorted(snap):
        value = snap[key]
        if key == "kind":
            continue
        if key == "point" and isinstance(value, list | tuple) and len(value) == 2:
            out += ["x", float(value[0]), "y", float(value[1])]
            continue
        if isinstance(value, bool):
            value = int(value)
        elif value is None:
            value = ""
        elif isinstance(value, int):
            value = value if -2**31 <= value < 2**31 else float(value)
        elif isinstance(value, float):
            value = value if math.isfinite(value) else str(value)
        elif isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        else:
            value = str(value)
        out += [key, value]
    return out


def json_state(snap: Snapshot) -> dict[str, Any]:
    """A snapshot as native JSON (the web page's `{"state": ...}`): the same keys and values
    as /pgesam/state, with lists and dicts as they are; a value JSON cannot carry (NaN, inf,
    an object) as a string."""
    return {str(k): _json_value(v) for k, v in snap.items() if k != "kind"}


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    try:  # numpy scalars and the like
        return _json_value(value.item())
    except (AttributeError, TypeError, ValueError):
        return str(value)


def view_region(view: EngineView) -> MapRegion:
    """The map's region for a live engine (vocab/mapview.py): the training points' square."""
    return region_of(getattr(view, "model_points", None) or [])


def engine_map(view: EngineView, width: int = 61, height: int = 21,
               columns: int | None = None) -> str:
    """The map of a live engine: its training points, named points (*), bookmarks (their
    digits) and current point."""
    snap = view.snapshot()
    marks = snap.get("bookmarks") or {}
    named: dict[str, tuple[float, float]] = {}
    for name in view.point_names():
        if name in marks:
            continue
        try:
            named[name] = view.resolve_point(name)
        except Exception:  # a name gone between the two calls (a patch swapped): left out
            continue
    return map_text(view.model_points, snap, width, height, columns, named=named)


def engine_map_data(view: EngineView) -> dict[str, Any]:
    """The map of a live engine as data (`/map.json`, the same form as `pgesam-live map
    --json`): training points, and every point name `at NAME` reaches now (the patch's,
    bookmarks, the demo patches') with its coordinates."""
    model = view.model
    training = getattr(model, "training_points", None)
    if training is None:  # a model view without names: the engine's (x, y, family)
        training = [{"name": "", "family": f, "x": x, "y": y} for x, y, f in view.model_points]
    points: dict[str, tuple[float, float]] = {}
    for name in view.point_names():
        try:
            points[name] = view.resolve_point(name)
        except Exception:  # a name gone between the two calls (a patch swapped): left out
            continue
    return map_data(model.model_id, training, points, model.pitch_range)


# -- the front-end words ----------------------------------------------------------------------

FRONT_END_WORDS = ("status", "help", "map", "points", "seqs", "export")


@dataclass(frozen=True)
class Answer:
    """A front-end word's answer: `text` for a terminal, `data` for a wire (OSC, a web page):
    status -> the snapshot; points -> names; seqs -> (names, running); help, map -> None."""

    word: str
    text: str
    data: Any = None


def answer(view: EngineView, cmd: Command, columns: int | None = None,
           src: str = "repl") -> Answer:
    """The answer to a front-end word (`cmd.journal` is False), once the commands accepted
    before it are applied (a view shows what the lines before it did). `export` starts the
    export in the background; its `data` is whether it started (False: `text` says why)."""
    name = cmd.name
    if name == "export":
        start = getattr(view, "start_export", None)
        if start is None:
            return Answer(name, "export: this instrument has no exporter", False)
        reply = start(out_dir=cmd.args.get("dir"), src=src)
        return Answer(name, str(reply.text), bool(reply.ok))
    if name == "help":
        return Answer(name, help_text(cmd.args.get("command")))
    if name == "status":
        snap = view.snapshot()
        return Answer(name, status_text(snap), snap)
    if name == "map":
        return Answer(name, engine_map(view, columns=columns))
    if name == "points":
        view.settle()
        snap = view.snapshot()
        marks = snap.get("bookmarks") or {}
        names = view.point_names()
        n_inst = len(getattr(view.model, "training_points", None) or [])
        also = (f"and the model's {n_inst} training instruments: `at piano`, `at violin` (a "
                "word of a General MIDI program; `pgesam-live map --json` lists them)"
                if n_inst else "")
        if not names and not marks:
            return Answer(name, "no named points (load a patch, or `mark NAME` the current "
                                "point)" + (f"; {also}" if also else ""), [])
        # Each name with the place `at NAME` goes to (a patch's point hides a bookmark of
        # its name: said, with the bookmark's digit, which still reaches it).
        digits = {m: i + 1 for i, m in enumerate(marks) if i < 9}
        lines = []
        for n in sorted(set(names) | set(marks)):
            xy: Any
            try:
                xy = view.resolve_point(n)
            except Exception:  # a name gone between the two calls (a patch swapped)
                xy = marks.get(n)
            text = f"{n}  ({xy[0]:+.2f}, {xy[1]:+.2f})" if xy else n
            mark = marks.get(n)
            if n in digits:
                # (the snapshot's bookmarks are rounded to 4 places: compare as rounded)
                if mark is not None and xy is not None and \
                        (round(float(xy[0]), 4), round(float(xy[1]), 4)) != \
                        (float(mark[0]), float(mark[1])):
                    text += (f"  (the patch's point; bookmark {digits[n]} {n} at "
                             f"({mark[0]:+.2f}, {mark[1]:+.2f}) is `at {digits[n]}`)")
                else:
                    text += f"  bookmark {digits[n]}"
            lines.append(text)
        if also:
            lines.append(also)
        return Answer(name, "\n".join(lines), [str(n) for n in names])
    if name == "seqs":
        running = sorted(str(n) for n in view.snapshot().get("sequences") or [])
        names = sorted(set(view.sequence_names()) | set(running))
        if not names:
            return Answer(name, 'no sequences (load a patch, or `seq NAME "NOTES" STEP`)',
                          ([], []))
        lines = [("* " if n in running else "  ") + n for n in names]
        return Answer(name, "\n".join(lines), (names, running))
    raise ValueError(f"{name!r} is not a view word")  # `quit` is each front end's own
