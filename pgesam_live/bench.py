"""`pgesam-live bench [--json]`: the performance figures, measured in this run.

Each figure that has a baseline is printed as a ratio against it, measured in the same run
(`kv_speedup`: naive full-recompute generation / KV-cached generation, same weights).
"""

from __future__ import annotations

import json
import platform
import time
from argparse import Namespace
from collections.abc import Callable
from typing import Any

import numpy as np


def _best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of `repeat` calls, seconds (the first call is a warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def model_figures(model: str = "default", device: str = "auto") -> dict[str, Any]:
    """Issue 2's figures: kv_speedup, note_render_s, bank_render_s, codec_encode_s,
    codec_decode_s, device. Uses the bundled model, else a fresh default-config model."""
    import torch  # noqa: PLC0415

    from pgesam_live.errors import CheckpointError  # noqa: PLC0415
    from pgesam_live.model.synth import Synth, resolve_device  # noqa: PLC0415

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dev = resolve_device(device)
    try:
        synth = Synth.load(model, device=dev)
        source = synth.model_id
    except CheckpointError:
        synth = Synth.untrained(device=dev)
        source = "untrained default config (no bundled model found)"
    tr = synth.transformer
    lo, hi = synth.pitch_range
    one_pt = torch.zeros(1, 2, device=dev)
    one_p = torch.tensor([(lo + hi) // 2], device=dev)
    n = tr.cfg.n_frames

    def gen(cache: bool) -> None:
        with torch.inference_mode():
            tr.generate(one_pt, one_p, n_frames=n, use_cache=cache)

    t_naive = _best_of(lambda: gen(False), repeat=1)
    t_kv = _best_of(lambda: gen(True), repeat=3)
    t_note = _best_of(lambda: synth.render(np.zeros((1, 2), np.float32), np.array([one_p.item()]),
                                           seed=0))
    pitches = np.arange(lo, hi + 1)[:25]
    pts = np.zeros((len(pitches), 2), np.float32)
    t_bank = _best_of(lambda: synth.render(pts, pitches, seed=0), repeat=2)
    codec = synth.codec
    wave = torch.as_tensor(synth.render(np.zeros((1, 2), np.float32), np.array([60 if lo <= 60 <= hi
                                                                              else lo]), seed=0))
    frames = codec.encode(wave)
    t_enc = _best_of(lambda: codec.encode(wave))
    t_dec = _best_of(lambda: codec.decode(frames))
    return {
        "model": source,
        "device": str(dev),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "frames": n,
        "kv_naive_s": round(t_naive, 4),
        "kv_cached_s": round(t_kv, 4),
        "kv_speedup": round(t_naive / t_kv, 2),
        "note_render_s": round(t_note, 4),
        "bank_render_s": round(t_bank, 4),
        "bank_pitches": int(len(pitches)),
        "codec": codec.name,
        "codec_encode_s": round(t_enc, 4),
        "codec_decode_s": round(t_dec, 4),
    }


def run_bench(ns: Namespace) -> int:
    """Print the figures (one JSON object with --json)."""
    only = set(ns.only.split(",")) if ns.only else None
    out: dict[str, Any] = {}
    from pgesam_live.engine_bench import ENGINE_KEYS, engine_figures  # noqa: PLC0415

    # --only skips the work behind keys not asked for (engine keys are measured by group).
    if only is None or only - set(ENGINE_KEYS):
        out.update(model_figures(ns.model, ns.device))
    if only is None or only & set(ENGINE_KEYS):
        out.update(engine_figures(ns.model, ns.device, only=only))
    if only:
        out = {k: v for k, v in out.items()
               if k in only or k in ("device", "model", "engine_model", "engine_device")}
    if ns.json:
        print(json.dumps(out))
    else:
        width = max(len(k) for k in out)
        for k, v in out.items():
            print(f"{k:<{width}}  {v}")
    return 0
