"""The synthesiser: (x, y, pitch) -> a note, batched. The one call the live layer makes.

`Synth.load("default")` reads the bundled model (see checkpoints.py); `Synth.render(points
[B, 2], pitches [B], seed)` runs the Transformer's batched, KV-cached generation for all B notes
at once and decodes the frames with the model's codec. The same seed gives the same samples on
the same device: all sampling noise (the Transformer's and the codec's) is drawn inside a forked
RNG seeded from `seed`, so rendering never disturbs or depends on the caller's RNG state.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgesam_live.errors import ConfigError
from pgesam_live.model.checkpoints import ModelBundle, ModelMeta, load_model
from pgesam_live.model.device import configure_threads, resolve_device


class Synth:
    """A loaded model ready to render notes. Not thread-safe: one Synth per worker."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "auto") -> None:
        configure_threads()
        self.device = resolve_device(device)
        self.bundle = bundle
        bundle.vae.to(self.device).eval()
        bundle.transformer.to(self.device).eval()
        self.codec = bundle.codec.to(self.device)
        if bundle.memory is not None:
            bundle.memory = bundle.memory.to(self.device)
        self.meta = bundle.meta
        self.model_id: str = bundle.id
        self.codec_name: str = bundle.meta.codec_name
        self.sample_rate: int = int(self.codec.sample_rate)
        lo, hi = bundle.meta.pitch_range
        self.pitch_range: tuple[int, int] = (int(lo), int(hi))
        self.n_frames: int = int(bundle.transformer.cfg.n_frames)
        self.duration_s: float = self.n_frames / float(self.codec.frame_rate_hz)
        try:
            self._decode_takes_seed = "seed" in inspect.signature(self.codec.decode).parameters
        except (TypeError, ValueError):
            self._decode_takes_seed = False
        self.training_points: list[dict[str, Any]] = bundle.meta.training_points
        self.vae = bundle.vae
        self.transformer = bundle.transformer

    @classmethod
    def untrained(cls, config: str = "small", codec: str = "harmonic",
                  pitch_range: tuple[int, int] = (48, 72),
                  device: str | torch.device = "auto", seed: int = 0,
                  decoder: str | None = None) -> Synth:
        """A randomly initialised model of a named config (and decoder: `autoregressive`,
        `parallel`; None = the build's default): for benchmarks and tests only."""
        from pgesam_live.model.build import DEFAULT_DECODER, build_models
        from pgesam_live.model.codec import get_codec

        c = get_codec(codec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae, tr = build_models(config, c.dim, n_instruments=1, pitch_range=pitch_range,
                                   decoder=decoder or DEFAULT_DECODER)
        meta = ModelMeta(config_name=config, codec_name=codec, codec_config={},
                         normalisation={}, pitch_range=pitch_range, instrument_names=[],
                         family_names=[])
        bundle = ModelBundle(vae=vae, transformer=tr, codec=c, meta=meta,
                             id=f"untrained_{config}_{codec}", path=None)
        return cls(bundle, device)

    @classmethod
    def load(cls, model: str | Path = "default", device: str | torch.device = "auto",
             directory: Path | None = None) -> Synth:
        """Load `model` (`default`, a name in checkpoints/, or a path) onto `device`."""
        dev = resolve_device(device)
        return cls(load_model(model, dev, directory=directory), dev)

    def check_pitches(self, pitches: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """pitches [B] (MIDI ints in the model's range) -> int64 tensor on the device."""
        p = torch.as_tensor(np.asarray(pitches)).reshape(-1)
        if p.is_floating_point():
            if not torch.equal(p, p.round()):
                raise ConfigError(f"pitches must be whole MIDI numbers, got {p.tolist()}")
        p = p.long()
        lo, hi = self.pitch_range
        bad = [int(v) for v in p.tolist() if not lo <= int(v) <= hi]
        if bad:
            raise ConfigError(f"pitch {bad[0]} is outside model {self.model_id}'s range "
                              f"{lo}..{hi}: choose a pitch in {lo}..{hi}")
        return p.to(self.device)

    def _check_points(self, points: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(points, dtype=np.float32))
        if x.dim() == 1 and x.numel() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != 2:
            raise ConfigError(f"points must be [B, 2] (x, y pairs), got shape {list(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ConfigError("points must be finite numbers")
        return x.to(self.device)

    @torch.inference_mode()
    def render_frames(self, points: Any, pitches: Any, seed: int = 0) -> torch.Tensor:
        """points [B, 2], pitches [B] -> generated frames [B, T, D] (normalised, on device)."""
        pts = self._check_points(points)
        p = self.check_pitches(pitches)
        if pts.shape[0] != p.shape[0]:
            raise ConfigError(f"{pts.shape[0]} points but {p.shape[0]} pitches: give one "
                              f"pitch per point")
        with self._seeded(seed):
            frames = self.bundle.transformer.generate(pts, p,
                                                      noise_seed=note_seeds(seed, pts, p))
        return self.finish_frames(frames, p, pts)

    def finish_frames(self, frames: torch.Tensor, pitches: torch.Tensor,
                      points: torch.Tensor | None = None) -> torch.Tensor:
        """Generated frames [B, T, D] -> what is decoded: tuned to the keys `pitches` [B] and
        their loudness de-buzzed when the model asks for it (TransformerConfig.tune_f0,
        .debuzz) and the codec can (harmonic), then corrected by the model's spectral memory
        at `points` [B, 2] (or [B, T, 2]) when it has one (model/memory.py; last, as its
        build measured the decoder's finished frames: de-buzzing after it would smooth an
        attack it put back)."""
        cfg = self.bundle.transformer.cfg
        tune = getattr(self.codec, "tune", None)
        if getattr(cfg, "tune_f0", False) and callable(tune):
            frames = tune(frames, pitches)
        debuzz = getattr(self.codec, "debuzz", None)
        if getattr(cfg, "debuzz", False) and callable(debuzz):
            frames = debuzz(frames)
        memory = self.bundle.memory
        if memory is not None and points is not None:
            frames = memory.apply(frames, points, pitches)
        return frames

    @torch.inference_mode()
    def render(self, points: Any, pitches: Any, seed: int = 0) -> np.ndarray:
        """points [B, 2], pitches [B] -> float32 audio [B, N] at `sample_rate` (N ~ duration).

        All B notes are generated in one batched call, then decoded in one codec call.
        Deterministic for a seed on a given device.
        """
        return self.render_notes(points, pitches, seed)[1]

    @torch.inference_mode()
    def render_notes(self, points: Any, pitches: Any, seed: int = 0
                     ) -> tuple[torch.Tensor, np.ndarray]:
        """As `render`, with the frames decoded: (frames [B, T, D], audio float32 [B, N])."""
        pts = self._check_points(points)
        if pts.shape[0] == 0:
            n = int(round(self.duration_s * self.sample_rate))
            return (torch.zeros(0, self.n_frames, self.codec.dim),
                    np.zeros((0, n), dtype=np.float32))
        frames = self.render_frames(pts, pitches, seed)
        return frames, self.decode_notes(frames, pts, pitches, seed)

    @torch.inference_mode()
    def decode_notes(self, frames: torch.Tensor, points: Any, pitches: Any,
                     seed: int = 0) -> np.ndarray:
        """frames [B, T, D] of the notes (points [B, 2], pitches [B], seed) -> float32 audio
        [B, N], with each note's own codec noise (as `render` decodes it)."""
        pts = self._check_points(points)
        return self.decode_frames(frames, seed, note_seeds(seed, pts, self.check_pitches(pitches)))

    @torch.inference_mode()
    def render_heads(self, points: Any, pitches: Any, seed: int = 0, n_frames: int = 32,
                     context_stride: int = 16
                     ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The first `n_frames` of each note, for streaming: points [B, 2], pitches [B] ->
        (frames [B, n, D] as `render_frames` finishes them, audio float32 [B, n * hop],
        later_db float [B]: how much louder than its head the note gets later, dB >= 0, as
        far as the decoder tells; 0 when it cannot).

        The same point noise and codec seeds as `render`, so a head is that note's start: the
        autoregressive decoder's first frames are exactly the whole note's; the parallel one
        attends to the rest of the note at every `context_stride`-th frame only, which moves
        its frames very little (on the bundled model, 32 frames, stride 16: mean |difference|
        0.0002 of the normalised frame, the loudest frame within 0.3 dB; ~8 ms against ~50
        for the whole pass on one thread) and shows where the note peaks (its context
        frames' loudness); `stitch_frames` joins a head to its whole note.
        """
        pts = self._check_points(points)
        p = self.check_pitches(pitches)
        n = max(1, min(int(n_frames), self.n_frames))
        seeds = note_seeds(seed, pts, p)
        tr = self.bundle.transformer
        later = np.zeros(len(p), dtype=np.float64)
        context = None
        with self._seeded(seed):
            generate_head = getattr(tr, "generate_head", None)  # the parallel decoder's
            if generate_head is not None:
                frames, context = generate_head(pts, p, n, context_stride, noise_seed=seeds)
            else:
                frames = tr.generate(pts, p, n_frames=n, noise_seed=seeds)
        scale = getattr(self.codec, "LOUD_SCALE_DB", None)
        if context is not None and scale is not None and context.shape[1]:
            # head and context as generated (neither tuned nor de-buzzed), each moved by the
            # memory's level where it has one: as the finished note will sound
            head_loud, ctx_loud = frames[..., 1].float(), context[..., 1].float()
            memory = self.bundle.memory
            if memory is not None and memory.dynamics is not None:
                idx = getattr(tr, "context_frame_indices")(n, context_stride)  # noqa: B009
                level = memory.level_db(pts, p, max(int(idx.max()) + 1, n))
                level = level.to(ctx_loud.device) / memory.loud_scale_db       # [B, T]
                head_loud = head_loud + level[:, :n]
                ctx_loud = ctx_loud + level[:, idx]
            gap = ctx_loud.amax(1) - head_loud.amax(1)                          # [B], normalised
            later = np.maximum(0.0, gap.double().cpu().numpy() * float(scale))
        frames = self.finish_frames(frames, p, pts)
        return frames, self.decode_frames(frames, seed, seeds), later

    @staticmethod
    def stitch_frames(head: torch.Tensor, full: torch.Tensor, join_frame: int,
                      xfade_frames: int) -> torch.Tensor:
        """A streamed note's frames: head [B, n, D] before `join_frame`, a linear crossfade
        into full [B, T, D] over the next `xfade_frames`, full after (join_frame +
        xfade_frames <= n). Decoded, its samples before (join_frame - 1) * hop are the head's
        own (the codec's synthesis is causal: frame t shapes samples from (t - 1) * hop)."""
        n = head.shape[1]
        a, x = int(join_frame), max(0, int(xfade_frames))
        if not 1 <= a or a + x > n or full.shape[1] < n:
            raise ConfigError(f"stitch: join frame {a} + crossfade {x} must lie inside the "
                              f"head ({n} frames) and the note ({full.shape[1]})")
        out = full.clone()
        out[:, :a] = head[:, :a]
        if x:
            w = torch.arange(1, x + 1, dtype=full.dtype, device=full.device) / (x + 1)
            w = w[None, :, None]
            out[:, a:a + x] = head[:, a:a + x] * (1 - w) + full[:, a:a + x] * w
        return out

    @torch.inference_mode()
    def decode_frames(self, frames: torch.Tensor, seed: int = 0,
                      row_seeds: list[int] | None = None) -> np.ndarray:
        """frames [B, T, D] (normalised) -> float32 audio [B, N]; the codec's noise is seeded
        (per note with `row_seeds`, B ints: see note_seeds)."""
        with self._seeded(int(seed) + 1):  # its own stream, so it differs from generation's
            if self._decode_takes_seed:
                codec_seed: int | list[int] = int(seed) if row_seeds is None else \
                    [s ^ _CODEC_SEED_SALT for s in row_seeds]
                wave = self.codec.decode(frames.to(self.device), seed=codec_seed)  # type: ignore[call-arg]
            else:
                wave = self.codec.decode(frames.to(self.device))
        return wave.detach().float().cpu().numpy().astype(np.float32, copy=False)

    @contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """Fork torch's RNG (CPU and this CUDA device) and seed it: reproducible noise that
        leaves the caller's RNG state untouched."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            yield


_CODEC_SEED_SALT = 0x5EED_C0DEC  # the codec's noise differs from the point noise's


def note_seeds(seed: int, points: torch.Tensor, pitches: torch.Tensor) -> list[int]:
    """One seed per note from (seed, x, y, pitch), points [B, 2], pitches [B]: a note sounds
    the same whichever batch renders it (live, a bounce, a replay), so a cache key (point,
    pitch, seed) names one sound."""
    out = []
    for (x, y), p in zip(points.detach().cpu().tolist(), pitches.detach().cpu().tolist(),
                         strict=True):
        h = hashlib.blake2b(f"{int(seed)}:{x:.6f}:{y:.6f}:{int(p)}".encode(), digest_size=8)
        out.append(int.from_bytes(h.digest(), "little") & (2**63 - 1))
    return out


__all__ = ["Synth", "configure_threads", "note_seeds", "resolve_device"]
