"""`pgesam-live export X Y|NAME --out DIR [--pitches LO-HI]`: a point as a multisample (24-bit
WAVs at the model's rate and an SFZ file: key ranges, root keys, velocity tracking, loops and
release), rendered by render/sfz.py with a progress bar."""

from __future__ import annotations

import math
from argparse import Namespace
from pathlib import Path
from typing import Any

from pgesam_live.app.common import settings_from_args
from pgesam_live.errors import ConfigError, PgesamError
from pgesam_live.render.sfz import coords_label, parse_pitch_range
from pgesam_live.vocab.instruments import find_instrument


def export_usage_problem(where: list[str], pitches: str | None = None) -> str | None:
    """What is wrong with the point's words or `--pitches` before any model is loaded (a
    usage error, exit 2), or None: `X Y` must be two numbers on the map, NAME one word,
    the pitches a span of MIDI notes (whether the model renders them is checked once it is
    loaded)."""
    if pitches is not None:
        if not pitches.strip():
            return "export: --pitches is empty: give a span like C3-C5 or 48-72 (or leave " \
                   "it out: the model's range)"
        try:
            parse_pitch_range(pitches, (0, 127))
        except ConfigError as exc:
            return f"export: {exc}"
    if len(where) not in (1, 2):
        return (f"export: {' '.join(where)!r}: give X Y or one point NAME, e.g. "
                "`export 0.2 -0.1 --out DIR` or `export glass --out DIR`")
    if len(where) == 2:
        try:
            x, y = float(where[0]), float(where[1])
        except ValueError:
            return (f"export: {' '.join(where)!r}: give X Y (numbers) or one point name "
                    "(a name is one word)")
        if not (math.isfinite(x) and math.isfinite(y)) or abs(x) > 1.5 or abs(y) > 1.5:
            return f"export: ({x}, {y}) is outside the map: use -1.5..1.5"
    return None


def resolve_export_point(where: list[str], named: dict[str, tuple[float, float]],
                         training_points: list[dict[str, Any]]) -> tuple[float, float, str]:
    """`X Y` (map coordinates) or one NAME (a named point of the demo patches, or a training
    instrument of the model: its name or a word of its program, vocab/instruments.py) -> x,
    y, a name for the files."""
    problem = export_usage_problem(where)
    if problem is not None:
        raise PgesamError(problem)
    if len(where) == 2:
        x, y = float(where[0]), float(where[1])
        return x, y, coords_label(x, y)  # as the instrument's `export` names it
    if len(where) == 1:
        name = where[0]
        try:
            float(name)
        except ValueError:
            pass
        else:
            raise PgesamError(f"export: {name} alone is not a point: give X Y or one point "
                              "NAME, e.g. `export 0.2 -0.1 --out DIR`")
        if name in named:
            return float(named[name][0]), float(named[name][1]), name
        inst = find_instrument(name, training_points)
        if inst is not None:  # its own name, or a word of its program (`export violin`)
            return inst.x, inst.y, name
        close = sorted(n for n in [*named, *(str(p["name"]) for p in training_points)]
                       if name.lower() in n.lower())[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else \
            f" (named points: {', '.join(sorted(named)) or 'none'}; `pgesam-live map --json` " \
            "lists the model's)"
    raise PgesamError(f"export: no point named {name!r} in the model{hint}")


def run_export(ns: Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415

    from pgesam_live.app.build import named_points  # noqa: PLC0415
    from pgesam_live.model.synth import Synth, resolve_device  # noqa: PLC0415
    from pgesam_live.render.sfz import export_point  # noqa: PLC0415

    s = settings_from_args(ns)
    synth = Synth.load(s.model, device=resolve_device(s.device))
    if ns.sample_rate is not None and int(ns.sample_rate) != int(synth.sample_rate):
        raise PgesamError(f"export: --sample-rate {ns.sample_rate}: an export's samples are "
                          f"written at the model's rate ({synth.sample_rate} Hz), which any "
                          "SFZ sampler converts on load; drop --sample-rate")
    x, y, label = resolve_export_point(list(ns.where), named_points(s.patch_dir),
                                    synth.training_points)
    pr = (int(synth.pitch_range[0]), int(synth.pitch_range[1]))
    pitches = parse_pitch_range(ns.pitches, pr) if ns.pitches is not None else None
    out_dir = Path(ns.out)
    name = ns.name or label
    n = len(pitches) if pitches is not None else pr[1] - pr[0] + 1
    with tqdm(total=n, desc=f"export {name}", unit="note", dynamic_ncols=True) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        result = export_point(synth, x, y, out_dir, pitches=pitches, name=name,
                              seed=ns.seed, progress=progress)
    print(f"{result.sfz}: {len(result.samples)} samples at ({x:+.2f}, {y:+.2f}), "
          f"{result.sample_rate} Hz 24-bit, model {synth.model_id}")
    return 0
