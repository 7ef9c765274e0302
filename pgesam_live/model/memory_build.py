"""Building a model's spectral memory (model/memory.py) from the training set it was trained
on, and `pgesam-live memory`. Apart from memory.py so that the checkpoint code, which reads
memories, never imports what builds them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from pgesam_live.errors import CheckpointError
from pgesam_live.model.memory import (
    BAND_EDGES,
    LEVEL_EDGES,
    SPECTRUM_EDGES,
    Dynamics,
    SpectralMemory,
    floored,
    level_db_re_peak,
    segment_log_profiles,
    segment_means,
    static_log_profile,
)


def scaled_edges(edges: tuple[int, ...], n: int) -> tuple[int, ...]:
    """Segment edges laid out for edges[-1] frames (or harmonics), stretched to n (a model
    of other note lengths: tiny test models), still rising from 0."""
    out = sorted({min(n, round(e * n / edges[-1])) for e in edges} | {0, n})
    return tuple(out)


class _Stats:
    """A note's (or a batch's) profiles as the memory compares them: note-long log profile
    [B, H], level per `level_edges` segment [B, S_l] (dB re peak), log profile per
    `spectrum_edges` segment [B, S_s, H] and which of those hold sound [B, S_s]."""

    def __init__(self, frames: torch.Tensor, codec: Any, level_edges: tuple[int, ...],
                 spectrum_edges: tuple[int, ...]) -> None:
        frames = frames.float().cpu()
        scale, offset = float(codec.LOUD_SCALE_DB), float(codec.LOUD_OFFSET_DB)
        h = int(codec.n_harmonics)
        self.static = static_log_profile(frames, scale, offset, h)
        self.level = segment_means(level_db_re_peak(frames, scale, offset), level_edges)
        self.spec, self.spec_ok = segment_log_profiles(frames, scale, offset, h,
                                                       spectrum_edges)


def _band_means(x: torch.Tensor, band_edges: tuple[int, ...]) -> torch.Tensor:
    """[..., H] -> the mean over each band of `band_edges` [..., NB]."""
    pairs = zip(band_edges, band_edges[1:], strict=False)
    return torch.stack([x[..., a:b].mean(-1) for a, b in pairs], -1)


def build_memory(bundle: Any, data_dir: str, split: str = "train", batch: int = 64,
                 progress: bool = True, reach: float | None = None,
                 dynamics: bool = True) -> SpectralMemory:
    """The memory of `bundle` (a ModelBundle, harmonic codec) from the `split` of the
    NSynth-format set it was trained on: each instrument's profile at each pitch (the mean
    over its notes there, e.g. velocities) minus the decoder's own profile at that
    instrument's map point and pitch (rendered as the instrument plays it, seed 0), both
    floored FLOOR_DB below their strongest harmonic (`floored`). With `dynamics` (the
    harmonic codec's 300-frame notes), the same per segment of the note, level and spectrum
    (memory.Dynamics)."""
    from pgesam_live.errors import DataError  # noqa: PLC0415
    from pgesam_live.model.data import load_frames, notes_duration_s  # noqa: PLC0415
    from pgesam_live.model.synth import Synth  # noqa: PLC0415

    codec = bundle.codec
    h = getattr(codec, "n_harmonics", None)
    if h is None:
        raise DataError(f"codec {bundle.meta.codec_name!r} has no harmonic shares: the "
                        "spectral memory is for the harmonic and partials codecs")
    scale = float(codec.LOUD_SCALE_DB)
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
    # the segments are laid out for the harmonic codec's 4 s notes (300 frames, 64
    # harmonics); other models get them stretched
    l_edges = scaled_edges(LEVEL_EDGES, n_frames)
    s_edges = scaled_edges(SPECTRUM_EDGES, n_frames)
    b_edges = tuple(e for e in BAND_EDGES if e < h) + (h,)
    count = torch.zeros(n_i, n_p)
    total = torch.zeros(n_i, n_p, h)
    n_l, n_s = len(l_edges) - 1, len(s_edges) - 1
    level = torch.zeros(n_i, n_p, n_l)
    spec = torch.zeros(n_i, n_p, n_s, h)
    spec_n = torch.zeros(n_i, n_p, n_s)
    inst, pitch = fs.instrument.long(), fs.pitch.long() - lo
    for s in range(0, len(inst), 256):
        idx = (inst[s:s + 256], pitch[s:s + 256])
        st = _Stats(fs.frames[s:s + 256, :n_frames], codec, l_edges, s_edges)
        total.index_put_(idx, st.static, accumulate=True)
        count.index_put_(idx, torch.ones(len(st.static)), accumulate=True)
        if dynamics:
            level.index_put_(idx, st.level, accumulate=True)
            spec.index_put_(idx, st.spec * st.spec_ok[..., None], accumulate=True)
            spec_n.index_put_(idx, st.spec_ok.float(), accumulate=True)
    has = count > 0
    own = total / count.clamp(min=1)[..., None]
    own_level = level / count.clamp(min=1)[..., None]
    own_spec = spec / spec_n.clamp(min=1)[..., None]
    plain = Synth(dataclasses.replace(bundle, memory=None),
                  device=next(bundle.transformer.parameters()).device)
    ii, mm = torch.nonzero(has, as_tuple=True)
    residual = torch.zeros(n_i, n_p, h)
    level_db = torch.zeros(n_i, n_p, n_l)
    band_log = torch.zeros(n_i, n_p, n_s, len(b_edges) - 1)
    for s in range(0, len(ii), batch):
        i_b, m_b = ii[s:s + batch], mm[s:s + batch]
        frames = plain.render_frames(xy[i_b].numpy(), (m_b + lo).numpy(), seed=0)
        st = _Stats(frames, codec, l_edges, s_edges)
        residual[i_b, m_b] = floored(own[i_b, m_b]) - floored(st.static)
        if dynamics:
            level_db[i_b, m_b] = own_level[i_b, m_b] - st.level
            # each segment's departure from the note-long correction, where both sound
            dev = (floored(own_spec[i_b, m_b]) - floored(st.spec)
                   - residual[i_b, m_b][:, None, :])
            both = (spec_n[i_b, m_b] > 0) & st.spec_ok
            band_log[i_b, m_b] = _band_means(dev, b_edges) * both[..., None]
    dyn = Dynamics(level_db, band_log, l_edges, s_edges, b_edges) if dynamics else None
    return SpectralMemory(xy, residual, has, lo, source=f"{data_dir} ({split})", reach=reach,
                          dynamics=dyn, loud_scale_db=scale,
                          noise_scale_db=float(codec.NOISE_SCALE_DB),
                          n_noise_bands=int(codec.n_noise_bands),
                          n_partials=int(getattr(codec, "n_partials", 0)))


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
    memory = build_memory(bundle, ns.data, ns.split, reach=reach,
                          dynamics=not getattr(ns, "note_long", False))
    path = save_with_memory(model, memory, out_dir)
    n_i, n_p, _ = memory.residual.shape
    kind = "note-long" if memory.dynamics is None else "with its dynamics"
    print(f"model with a spectral memory ({kind}): {path} "
          f"({path.stat().st_size / 1e6:.2f} MB; "
          f"{n_i} instruments x {n_p} pitches, {int(memory.has.sum())} notes, "
          f"{time.monotonic() - t0:.0f} s); measure it with `pgesam-live eval --model {path}`")
    return 0


__all__ = ["build_memory", "run_memory"]
