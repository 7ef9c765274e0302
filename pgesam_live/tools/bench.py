"""`pgesam-live bench [--json]`: the performance figures, measured in this run.

Each figure that has a baseline is printed as a ratio against it, measured in the same run
(`kv_speedup`: naive full-recompute generation / KV-cached generation, same weights;
`parallel_speedup_vs_autoregressive`: the autoregressive decoder's KV-cached note / the bundled
parallel decoder's one-pass note).
"""

from __future__ import annotations

import json
import os
import platform
import time
from argparse import Namespace
from collections.abc import Callable
from typing import Any

import numpy as np

from pgesam_live.errors import ConfigError
from pgesam_live.settings import Settings


def _best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of `repeat` calls, seconds (the first call is a warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _render_figures(synth: Any) -> dict[str, float]:
    """KV-cached vs naive generation of one note (same weights, same run), one note end to
    end, and 25 pitches of one point batched, for one Synth."""
    import torch  # noqa: PLC0415

    tr = synth.transformer
    lo, hi = synth.pitch_range
    dev = synth.device
    one_pt = torch.zeros(1, 2, device=dev)
    one_p = torch.tensor([(lo + hi) // 2], device=dev)
    n = tr.cfg.n_frames

    def gen(cache: bool) -> None:
        with torch.inference_mode():
            tr.generate(one_pt, one_p, n_frames=n, use_cache=cache)

    parallel = bool(getattr(tr.cfg, "parallel", False))
    # A parallel decoder has no cache: its one pass is the figure (naive = cached).
    t_kv = _best_of(lambda: gen(True), repeat=3)
    t_naive = t_kv if parallel else _best_of(lambda: gen(False), repeat=1)
    t_note = _best_of(lambda: synth.render(np.zeros((1, 2), np.float32),
                                           np.array([one_p.item()]), seed=0))
    pitches = np.arange(lo, hi + 1)[:25]
    pts = np.zeros((len(pitches), 2), np.float32)
    t_bank = _best_of(lambda: synth.render(pts, pitches, seed=0), repeat=2)
    return {"frames": n, "frames_per_step": int(tr.cfg.frames_per_step),
            "decoder": str(getattr(tr.cfg, "decoder", "autoregressive")),
            "kv_naive_s": round(t_naive, 4), "kv_cached_s": round(t_kv, 4),
            "kv_speedup": round(t_naive / t_kv, 2), "note_render_s": round(t_note, 4),
            "bank_render_s": round(t_bank, 4), "bank_pitches": int(len(pitches))}


def model_figures(model: str = "default", device: str = "auto") -> dict[str, Any]:
    """Issue 2's figures. `kv_speedup` and the `*_default` keys: the default (small) config
    with fresh weights (speed does not depend on the weights); `note_render_s`,
    `bank_render_s` and the `*_bundled` keys: the model the instrument plays (the bundled
    one), when there is one. Codec timings: the bundled model's codec."""
    import torch  # noqa: PLC0415

    from pgesam_live.errors import CheckpointError  # noqa: PLC0415
    from pgesam_live.model.checkpoints import (  # noqa: PLC0415
        DEFAULT_FILE,
        checkpoints_dir,
        resolve_model,
    )
    from pgesam_live.model.synth import Synth, configure_threads, resolve_device  # noqa: PLC0415

    # The instrument renders in its worker process on `Settings.worker_threads` torch threads
    # (1: two OpenMP threads on a 2-core machine shared with the audio thread lose more to
    # waiting than they gain); the bench measures that unless PGESAM_TORCH_THREADS says else.
    os.environ.setdefault("PGESAM_TORCH_THREADS", str(Settings().worker_threads))
    configure_threads()
    dev = resolve_device(device)
    # A model named, or a bundled one that fails to load, is an error (before any measuring),
    # never replaced; only when no bundled model exists does the untrained config stand in.
    bundled_missing = False
    if model == "default":
        folder = checkpoints_dir()
        try:
            resolve_model(model)
        except CheckpointError:
            # Nothing there at all; a DEFAULT naming a missing file is an error (raised).
            if (folder / DEFAULT_FILE).exists() or any(folder.glob("pgesam_*.pt")):
                raise
            bundled_missing = True
    loaded = None if bundled_missing else Synth.load(model, device=dev)
    default = Synth.untrained("small", device=dev)
    out: dict[str, Any] = {"device": str(dev), "cpu": platform.processor() or platform.machine(),
                           "torch_threads": torch.get_num_threads()}
    fig = _render_figures(default)
    out.update({"kv_speedup": fig["kv_speedup"], "kv_naive_s": fig["kv_naive_s"],
                "kv_cached_s": fig["kv_cached_s"], "frames": fig["frames"],
                "note_render_default_s": fig["note_render_s"],
                "bank_render_default_s": fig["bank_render_s"]})
    synth = default
    if loaded is not None:
        synth = loaded
        bundled = _render_figures(synth)
        out["model"] = synth.model_id
        out.update({"note_render_s": bundled["note_render_s"],
                    "bank_render_s": bundled["bank_render_s"],
                    "bank_pitches": bundled["bank_pitches"],
                    "decoder_bundled": bundled["decoder"],
                    "generate_bundled_s": bundled["kv_cached_s"],
                    "frames_per_step_bundled": bundled["frames_per_step"]})
        if bundled["decoder"] == "parallel":
            # One pass for the whole note against the autoregressive decoder's KV-cached
            # steps (the default small config), same run, same threads.
            out["parallel_speedup_vs_autoregressive"] = round(
                fig["kv_cached_s"] / bundled["kv_cached_s"], 2)
        else:
            out["kv_speedup_bundled"] = bundled["kv_speedup"]
    else:
        out["model"] = "untrained default config (no bundled model found)"
        out.update({"note_render_s": fig["note_render_s"], "bank_render_s": fig["bank_render_s"],
                    "bank_pitches": fig["bank_pitches"]})
    codec = synth.codec
    lo, hi = synth.pitch_range
    pitch = 60 if lo <= 60 <= hi else lo
    wave = torch.as_tensor(synth.render(np.zeros((1, 2), np.float32), np.array([pitch]), seed=0))
    hint = 440.0 * 2 ** ((pitch - 69) / 12)
    kw = {"f0_hint_hz": hint} if codec.name in ("harmonic", "partials") else {}
    frames = codec.encode(wave, **kw)
    out.update({"codec": codec.name,
                "codec_encode_s": round(_best_of(lambda: codec.encode(wave, **kw)), 4),
                "codec_decode_s": round(_best_of(lambda: codec.decode(frames)), 4)})
    return out


# Every key model_figures can print (the check of --only runs before any measuring).
MODEL_KEYS = ("device", "cpu", "torch_threads", "kv_speedup", "kv_naive_s", "kv_cached_s",
              "frames", "note_render_default_s", "bank_render_default_s", "model",
              "note_render_s", "bank_render_s", "bank_pitches", "kv_speedup_bundled",
              "frames_per_step_bundled", "decoder_bundled", "generate_bundled_s",
              "parallel_speedup_vs_autoregressive", "codec", "codec_encode_s",
              "codec_decode_s")


def run_bench(ns: Namespace) -> int:
    """Print the figures (one JSON object with --json)."""
    only = {k.strip() for k in ns.only.split(",") if k.strip()} if ns.only else None
    out: dict[str, Any] = {}
    from pgesam_live.app.common import settings_from_args  # noqa: PLC0415

    s = settings_from_args(ns)
    from pgesam_live.tools.engine_bench import ENGINE_KEYS, engine_figures  # noqa: PLC0415
    from pgesam_live.tools.hold_bench import HOLD_KEYS, hold_figures  # noqa: PLC0415

    every = set(MODEL_KEYS) | set(ENGINE_KEYS) | set(HOLD_KEYS)
    if only is not None:
        unknown = sorted(only - every)
        if unknown or not only:
            raise ConfigError(f"--only {','.join(unknown)}: no such figure; the figures are "
                              f"{', '.join(sorted(every))}")
    # --only skips the work behind keys not asked for (engine keys are measured by group).
    if only is None or only - set(ENGINE_KEYS) - set(HOLD_KEYS):
        out.update(model_figures(s.model, s.device))
    if only is None or only & set(ENGINE_KEYS):
        out.update(engine_figures(s.model, s.device, only=only))
    if only is None or only & set(HOLD_KEYS):
        out.update(hold_figures(s.model, "cpu" if s.device == "auto" else s.device))
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
