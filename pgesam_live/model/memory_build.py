"""Building a model's spectral memory (model/memory.py) from the training set it was trained
on, and `pgesam-live memory`. Apart from memory.py so that the checkpoint code, which reads
memories, never imports what builds them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from pgesam_live.errors import CheckpointError
from pgesam_live.model.memory import SpectralMemory, floored, static_log_profile


def build_memory(bundle: Any, data_dir: str, split: str = "train", batch: int = 64,
                 progress: bool = True, reach: float | None = None) -> SpectralMemory:
    """The memory of `bundle` (a ModelBundle, harmonic codec) from the `split` of the
    NSynth-format set it was trained on: each instrument's profile at each pitch (the mean
    over its notes there, e.g. velocities) minus the decoder's own profile at that
    instrument's map point and pitch (rendered as the instrument plays it, seed 0), both
    floored FLOOR_DB below their strongest harmonic (`floored`)."""
    from pgesam_live.errors import DataError  # noqa: PLC0415
    from pgesam_live.model.data import load_frames, notes_duration_s  # noqa: PLC0415
    from pgesam_live.model.synth import Synth  # noqa: PLC0415

    codec = bundle.codec
    h = getattr(codec, "n_harmonics", None)
    if h is None:
        raise DataError(f"codec {bundle.meta.codec_name!r} has no harmonic shares: the "
                        "spectral memory is for the harmonic and partials codecs")
    scale, offset = float(codec.LOUD_SCALE_DB), float(codec.LOUD_OFFSET_DB)
    tr = bundle.transformer
    n_frames = tr.cfg.n_frames
    fs = load_frames(data_dir, split, codec, pitch_range=bundle.meta.pitch_range,
                     velocities=None, n_frames=n_frames, cache=True, progress=progress,
                     duration_s=notes_duration_s(n_frames, codec.frame_rate_hz))
    points = {str(p["name"]): (float(p["x"]), float(p["y"])) for p in bundle.training_points}
    names = list(fs.instrument_names)
    missing = [n for n in names if n not in points]
    if not names or missing:
        raise DataError(f"{data_dir} ({split}): instruments {', '.join(missing[:5]) or 'none'} "
                        "are not this model's training instruments; give the data set it was "
                        "trained on")
    xy = torch.tensor([points[n] for n in names], dtype=torch.float32)
    lo, hi = bundle.meta.pitch_range
    n_i, n_p = len(names), hi - lo + 1
    total = torch.zeros(n_i, n_p, h)
    count = torch.zeros(n_i, n_p)
    inst, pitch = fs.instrument.long(), fs.pitch.long() - lo
    for s in range(0, len(inst), 256):
        prof = static_log_profile(fs.frames[s:s + 256, :n_frames], scale, offset, h)
        total.index_put_((inst[s:s + 256], pitch[s:s + 256]), prof, accumulate=True)
        count.index_put_((inst[s:s + 256], pitch[s:s + 256]),
                         torch.ones(len(prof)), accumulate=True)
    has = count > 0
    own = total / count.clamp(min=1)[..., None]
    plain = Synth(dataclasses.replace(bundle, memory=None),
                  device=next(bundle.transformer.parameters()).device)
    ii, mm = torch.nonzero(has, as_tuple=True)
    residual = torch.zeros(n_i, n_p, h)
    for s in range(0, len(ii), batch):
        i_b, m_b = ii[s:s + batch], mm[s:s + batch]
        frames = plain.render_frames(xy[i_b].numpy(), (m_b + lo).numpy(), seed=0)
        model_prof = static_log_profile(frames.float().cpu(), scale, offset, h)
        residual[i_b, m_b] = floored(own[i_b, m_b]) - floored(model_prof)
    return SpectralMemory(xy, residual, has, lo, source=f"{data_dir} ({split})", reach=reach)


def run_memory(ns: Any) -> int:
    """`pgesam-live memory MODEL --data DIR [--split S] [--out DIR] [--device D]`."""
    import time  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from pgesam_live.model.checkpoints import (  # noqa: PLC0415
        load_model,
        read_stored_payload,
        save_with_memory,
    )

    model = Path(ns.model)
    if not model.is_file():
        raise CheckpointError(f"MODEL {ns.model}: no such model file")
    out_dir = Path(ns.out) if ns.out else model.parent
    base = (read_stored_payload(model)[0].get("base") or {}).get("file")
    if base is not None and not (out_dir / str(base)).is_file():
        raise CheckpointError(f"{model.name} is packed against {base}, which is not in "
                              f"{out_dir}: the new file loads only next to it; copy {base} "
                              "there first (or leave --out out)")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    bundle = load_model(model, device=ns.device)
    if bundle.memory is not None:
        print(f"{model.name} has a spectral memory already ({bundle.memory.source}); "
              "building a new one from the decoder alone")
    reach = getattr(ns, "reach", None)
    if reach is not None and not (math.isfinite(reach) and reach > 0):
        raise CheckpointError(f"--reach {reach}: give a positive distance in map units (the "
                              "instruments lie ~0.015 apart; 0.03 fades out between them)")
    memory = build_memory(bundle, ns.data, ns.split, reach=reach)
    path = save_with_memory(model, memory, out_dir)
    n_i, n_p, _ = memory.residual.shape
    print(f"model with a spectral memory: {path} ({path.stat().st_size / 1e6:.2f} MB; "
          f"{n_i} instruments x {n_p} pitches, {int(memory.has.sum())} notes, "
          f"{time.monotonic() - t0:.0f} s); measure it with `pgesam-live eval --model {path}`")
    return 0


__all__ = ["build_memory", "run_memory"]
