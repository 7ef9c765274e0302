"""Stage 2: the frame Transformer. (x, y, pitch) -> a note's codec frames, autoregressively.

The encoder reads three tokens: Linear(1->d)(x), Linear(1->d)(y), Embedding(pitch), plus
learned positions. The decoder regresses the next frame (or the next group of
`frames_per_step` frames) from the previous ones with causal self-attention and
cross-attention to the encoder; the first input is a zero frame; training uses teacher
forcing. The attention is written here (not nn.Transformer) so that generation keeps a KV
cache: one decoder token per step instead of re-running the whole prefix, which is what the
authors' inference did and what a live instrument cannot afford.

Shapes: points [B, 2] (the timbre map, nominally [-1, 1]^2), pitches [B] MIDI numbers in
[pitch_min, pitch_max], frames [B, T, D] normalised codec frames.

Configs: `TransformerConfig.paper` (the authors' sizes, ~118 M params with EnCodec frames),
`.small` (trains on a CPU and renders a note in ~0.3 s on a 2-core CPU), `.tiny` (tests).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from pgesam_live.errors import ConfigError


@dataclass(frozen=True)
class TransformerConfig:
    """Every size of the frame Transformer. Frozen: build a new one to change it."""

    frame_dim: int
    d_model: int = 512
    n_heads: int = 8
    n_enc_layers: int = 8
    n_dec_layers: int = 12
    d_ff: int = 4096
    dropout: float = 0.1
    n_frames: int = 300  # longest sequence (4 s at 75 frames/s); also generate()'s default
    pitch_min: int = 48  # MIDI, inclusive
    pitch_max: int = 72  # MIDI, inclusive
    # Frames per decoder token: the decoder reads and predicts groups of this many frames, so
    # a note takes n_frames / frames_per_step steps. 1 = the authors.
    frames_per_step: int = 1
    # A learned per-pitch bias on every predicted frame (zero at init): an easy path for the
    # pitch-dependent channels (e.g. the harmonic codec's f0) to land on the right value.
    pitch_bias: bool = False
    pre_ln: bool = False  # False = post-LN as torch's nn.Transformer (the authors)
    activation: str = "relu"  # relu (nn.Transformer's default) or gelu
    # Standard deviation of the Gaussian noise put on the points when generate() is given a
    # noise_seed (training conditions on the VAE mean plus 0.01 sigma noise, so small
    # perturbations are in-distribution and give seeded variations of a note).
    point_noise_std: float = 0.01

    def __post_init__(self) -> None:
        for name in ("frame_dim", "d_model", "n_heads", "n_enc_layers", "n_dec_layers", "d_ff",
                     "n_frames", "frames_per_step"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(
                    f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"TransformerConfig.d_model ({self.d_model}) must be a multiple "
                              f"of n_heads ({self.n_heads})")
        if self.pitch_max < self.pitch_min:
            raise ConfigError(f"TransformerConfig.pitch_max ({self.pitch_max}) must be >= "
                              f"pitch_min ({self.pitch_min})")
        if self.activation not in ("relu", "gelu"):
            raise ConfigError(
                f"TransformerConfig.activation must be relu or gelu, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TransformerConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def n_pitches(self) -> int:
        return self.pitch_max - self.pitch_min + 1

    @property
    def n_steps(self) -> int:
        """Decoder positions needed for n_frames frames."""
        return math.ceil(self.n_frames / self.frames_per_step)

    # -- named constructors ----------------------------------------------------------------
    @classmethod
    def paper(cls, frame_dim: int, **overrides: Any) -> TransformerConfig:
        """The authors' final run: d 512, 8 heads, 8 + 12 layers, FFN 4096, 300 frames."""
        return cls(frame_dim=frame_dim, **overrides)

    @classmethod
    def small(cls, frame_dim: int, **overrides: Any) -> TransformerConfig:
        """For CPU training and CPU inference: ~5 M params, pre-LN, ReLU, no dropout.

        One frame per step (measured on the 2-core dev CPU, 300 frames: one note 0.27 s,
        25 notes batched 0.96 s, naive recompute 7.6x slower). frames_per_step=2 halves the
        training cost and the render time (0.13 s, 0.38 s) but, with half as many steps to
        save, the KV cache gains only 5x over recompute.
        """
        base: dict[str, Any] = dict(
            d_model=256, n_heads=4, n_enc_layers=2, n_dec_layers=4, d_ff=768, dropout=0.0,
            frames_per_step=1, pitch_bias=True, pre_ln=True, activation="relu")
        base.update(overrides)
        return cls(frame_dim=frame_dim, **base)

    @classmethod
    def tiny(cls, frame_dim: int, **overrides: Any) -> TransformerConfig:
        """A few thousand params, 24 frames: for tests."""
        base: dict[str, Any] = dict(
            d_model=32, n_heads=4, n_enc_layers=1, n_dec_layers=2, d_ff=64, dropout=0.0,
            n_frames=24, frames_per_step=1, pitch_bias=True, pre_ln=True, activation="gelu")
        base.update(overrides)
        return cls(frame_dim=frame_dim, **base)

    # -- (de)serialisation for checkpoints ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown TransformerConfig keys {unknown}: valid keys are {sorted(names)}")
        return cls(**d)


# -- attention ---------------------------------------------------------------------------------
class KVCache:
    """Keys and values of one self-attention layer for steps 0..length-1.

    kv: [2, B, H, max_steps, head_dim] (keys, values), preallocated so a step writes one slot.
    """

    def __init__(self, batch: int, n_heads: int, max_steps: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.kv = torch.empty(2, batch, n_heads, max_steps, head_dim, device=device,
                              dtype=dtype)
        self.length = 0


class SelfAttention(nn.Module):
    """Multi-head self-attention: a whole sequence (causal or not), or one cached step."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # [B, N, d] -> [B, H, N, hd]
        return x.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """x [B, N, d] -> [B, N, d] over the whole sequence (training, naive generation)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, n, d))

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token x [B, d] -> [B, d], attending to the cache and itself (inference).

        Plain functional ops on 2-D tensors: at one token per step the cost is per-op
        overhead, not arithmetic, so every avoided call counts.
        """
        b, d = x.shape
        t = cache.length
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(b, 3, self.n_heads,
                                                               self.head_dim)
        cache.kv.select(3, t).copy_(qkv[:, 1:].transpose(0, 1))
        cache.length = t + 1
        kv = cache.kv[:, :, :, : t + 1]
        # One query: a matmul, a softmax and a matmul are fewer calls than the fused kernel.
        q = qkv[:, 0].unsqueeze(2) * (self.head_dim ** -0.5)  # [B, H, 1, hd]
        w = torch.softmax(torch.matmul(q, kv[0].transpose(2, 3)), dim=3)  # [B, H, 1, t+1]
        y = torch.matmul(w, kv[1])  # [B, H, 1, hd]
        return F.linear(y.view(b, d), self.out.weight, self.out.bias)


class CrossAttention(nn.Module):
    """Decoder queries attend to the encoder's tokens; their K, V can be computed once."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory [B, M, d] -> (k, v) each [B, H, M, hd]."""
        b, m, d = memory.shape
        k, v = self.kv(memory).split(d, dim=2)
        return (k.view(b, m, self.n_heads, self.head_dim).transpose(1, 2),
                v.view(b, m, self.n_heads, self.head_dim).transpose(1, 2))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, N, d], kv from memory_kv -> [B, N, d]."""
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, n, d))

    def fold(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fold the query and output projections into the fixed memory, for generation.

        The memory is a handful of tokens that never change during a note, so per head h and
        memory token j the score q_h . k_hj / sqrt(hd) is linear in x and the output
        sum_j w_hj W_o[:, h] v_hj is linear in the weights w: two small batched matmuls per
        step replace two d x d projections and an attention call.
        memory [B, M, d] -> (score_w [B, d, H*M], score_b [B, 1, H*M], values [B, H*M, d]).
        """
        k, v = self.memory_kv(memory)  # [B, H, M, hd]
        b, h, m, hd = k.shape
        d = h * hd
        scale = hd ** -0.5
        wq = self.q.weight.view(h, hd, d)
        score_w = torch.einsum("hed,bhme->bdhm", wq, k).reshape(b, d, h * m) * scale
        score_b = torch.einsum("he,bhme->bhm", self.q.bias.view(h, hd), k
                               ).reshape(b, 1, h * m) * scale
        wo = self.out.weight.view(d, h, hd)
        values = torch.einsum("dhe,bhme->bhmd", wo, v).reshape(b, h * m, d)
        return score_w, score_b, values

    def step(self, x: torch.Tensor, folded: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
             ) -> torch.Tensor:
        """One token x [B, d] -> [B, d] with the folded memory from `fold` (inference)."""
        score_w, score_b, values = folded
        b = x.shape[0]
        scores = torch.baddbmm(score_b, x.unsqueeze(1), score_w)  # [B, 1, H*M]
        w = torch.softmax(scores.view(b, self.n_heads, -1), dim=2).view(b, 1, -1)
        return torch.baddbmm(self.out.bias, w, values).view(b, -1)  # [B, d]


class FeedForward(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU()
        self.drop = nn.Dropout(cfg.dropout)
        self.gelu = cfg.activation == "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d] -> [B, d] without dropout (inference)."""
        h = F.linear(x, self.fc1.weight, self.fc1.bias)
        h = F.gelu(h) if self.gelu else F.relu(h)
        return F.linear(h, self.fc2.weight, self.fc2.bias)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg)
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, d] -> [B, 3, d] (no mask: all three tokens see each other)."""
        if self.pre_ln:
            x = x + self.drop(self.attn(self.ln1(x), causal=False))
            return x + self.drop(self.ff(self.ln2(x)))
        x = self.ln1(x + self.drop(self.attn(x, causal=False)))
        return self.ln2(x + self.drop(self.ff(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.self_attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.cross_attn = CrossAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg)
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mem_kv: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        """x [B, N, d] -> [B, N, d]; causal self-attention over the whole sequence."""
        if self.pre_ln:
            x = x + self.drop(self.self_attn(self.ln1(x), causal=True))
            x = x + self.drop(self.cross_attn(self.ln2(x), mem_kv))
            return x + self.drop(self.ff(self.ln3(x)))
        x = self.ln1(x + self.drop(self.self_attn(x, causal=True)))
        x = self.ln2(x + self.drop(self.cross_attn(x, mem_kv)))
        return self.ln3(x + self.drop(self.ff(x)))

    def step(self, x: torch.Tensor, mem_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             cache: KVCache) -> torch.Tensor:
        """The next token only: x [B, d] -> [B, d], with this layer's KV cache and the
        folded memory (CrossAttention.fold) (inference)."""
        ln1, ln2, ln3 = self.ln1, self.ln2, self.ln3
        shape = ln1.normalized_shape
        if self.pre_ln:
            x = x + self.self_attn.step(F.layer_norm(x, shape, ln1.weight, ln1.bias), cache)
            x = x + self.cross_attn.step(F.layer_norm(x, shape, ln2.weight, ln2.bias), mem_kv)
            return x + self.ff.step(F.layer_norm(x, shape, ln3.weight, ln3.bias))
        x = F.layer_norm(x + self.self_attn.step(x, cache), shape, ln1.weight, ln1.bias)
        x = F.layer_norm(x + self.cross_attn.step(x, mem_kv), shape, ln2.weight, ln2.bias)
        return F.layer_norm(x + self.ff.step(x), shape, ln3.weight, ln3.bias)


# -- the model ---------------------------------------------------------------------------------
class FrameTransformer(nn.Module):
    """Encoder over (x, y, pitch), autoregressive frame decoder. See the module docstring."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, g = cfg.d_model, cfg.frames_per_step
        self.x_embed = nn.Linear(1, d)
        self.y_embed = nn.Linear(1, d)
        self.pitch_embed = nn.Embedding(cfg.n_pitches, d)
        self.enc_pos = nn.Parameter(torch.randn(3, d) * 0.02)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_enc_layers))
        self.enc_norm = nn.LayerNorm(d)

        self.in_proj = nn.Linear(g * cfg.frame_dim, d)
        self.dec_pos = nn.Parameter(torch.randn(cfg.n_steps, d) * 0.02)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_dec_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, g * cfg.frame_dim)
        self.out_bias: nn.Embedding | None = None
        if cfg.pitch_bias:
            self.out_bias = nn.Embedding(cfg.n_pitches, cfg.frame_dim)
            nn.init.zeros_(self.out_bias.weight)

    # -- helpers -----------------------------------------------------------------------------
    def pitch_index(self, pitches: torch.Tensor) -> torch.Tensor:
        """MIDI pitches [B] -> class indices [B]; out-of-range pitches raise ConfigError."""
        cfg = self.cfg
        if pitches.dim() != 1:
            raise ConfigError(f"pitches must be [B] MIDI numbers, got shape {list(pitches.shape)}")
        if pitches.numel():
            lo, hi = int(pitches.min()), int(pitches.max())
            if lo < cfg.pitch_min or hi > cfg.pitch_max:
                bad = lo if lo < cfg.pitch_min else hi
                raise ConfigError(f"pitch {bad} is outside this model's range "
                                  f"{cfg.pitch_min}..{cfg.pitch_max} (MIDI): choose a pitch "
                                  "in that range")
        return (pitches.long() - cfg.pitch_min).to(self.pitch_embed.weight.device)

    def _check_points(self, points: torch.Tensor, pitches: torch.Tensor) -> None:
        if points.dim() != 2 or points.shape[1] != 2:
            raise ConfigError(f"points must be [B, 2], got shape {list(points.shape)}")
        if pitches.shape[0] != points.shape[0]:
            raise ConfigError(f"points ({points.shape[0]}) and pitches ({pitches.shape[0]}) "
                              "must have the same batch size")

    def encode(self, points: torch.Tensor, pitch_idx: torch.Tensor) -> torch.Tensor:
        """points [B, 2], pitch_idx [B] -> memory [B, 3, d]."""
        tokens = torch.stack([self.x_embed(points[:, 0:1]), self.y_embed(points[:, 1:2]),
                              self.pitch_embed(pitch_idx)], dim=1) + self.enc_pos
        for layer in self.encoder:
            tokens = layer(tokens)
        return self.enc_norm(tokens)

    def _head(self, h: torch.Tensor, pitch_idx: torch.Tensor) -> torch.Tensor:
        """Decoder states [B, S, d] -> frame groups [B, S, G*D]."""
        out = self.out_proj(self.dec_norm(h))
        if self.out_bias is not None:
            b, s, _ = out.shape
            bias = self.out_bias(pitch_idx)  # [B, D]
            out = (out.view(b, s, self.cfg.frames_per_step, -1) + bias[:, None, None, :]
                   ).view(b, s, -1)
        return out

    def _decode_full(self, groups_in: torch.Tensor, mem_kvs: list[tuple[torch.Tensor,
                     torch.Tensor]], pitch_idx: torch.Tensor) -> torch.Tensor:
        """Decoder inputs [B, S, G*D] (zero start first) -> predictions [B, S, G*D]."""
        s = groups_in.shape[1]
        h = self.in_proj(groups_in) + self.dec_pos[:s]
        for layer, kv in zip(self.decoder, mem_kvs, strict=True):
            h = layer(h, kv)
        return self._head(h, pitch_idx)

    def _dec_layers(self) -> list[DecoderLayer]:
        return [cast(DecoderLayer, layer) for layer in self.decoder]

    def _memory_kvs(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [layer.cross_attn.memory_kv(memory) for layer in self._dec_layers()]

    # -- training ----------------------------------------------------------------------------
    def forward(self, points: torch.Tensor, pitches: torch.Tensor, frames: torch.Tensor
                ) -> torch.Tensor:
        """Teacher forcing: points [B, 2], pitches [B] MIDI, frames [B, T, D] -> pred [B, T, D].

        pred[:, t] is the model's prediction of frames[:, t] from frames before t's group
        (with frames_per_step G, frames of one group are predicted together from the
        previous groups). Train with MSE(pred, frames).
        """
        cfg = self.cfg
        self._check_points(points, pitches)
        b, t, dim = frames.shape
        if dim != cfg.frame_dim:
            raise ConfigError(f"frames have dim {dim} but the model expects {cfg.frame_dim}: "
                              "use the codec the model was trained with")
        if t > cfg.n_frames:
            raise ConfigError(f"{t} frames is more than this model's n_frames ({cfg.n_frames})"
                              ": crop the notes or build the config with a larger n_frames")
        pitch_idx = self.pitch_index(pitches)
        g = cfg.frames_per_step
        s = math.ceil(t / g)
        if s * g != t:  # pad the tail; causality means the padding never reaches real frames
            frames = F.pad(frames, (0, 0, 0, s * g - t))
        groups = frames.reshape(b, s, g * dim)
        groups_in = torch.cat([groups.new_zeros(b, 1, g * dim), groups[:, :-1]], dim=1)
        memory = self.encode(points, pitch_idx)
        pred = self._decode_full(groups_in, self._memory_kvs(memory), pitch_idx)
        return pred.reshape(b, s * g, dim)[:, :t]

    # -- generation --------------------------------------------------------------------------
    def generate(self, points: torch.Tensor, pitches: torch.Tensor, n_frames: int | None = None,
                 use_cache: bool = True, noise_seed: int | None = None) -> torch.Tensor:
        """Free-running generation, batched: points [B, 2], pitches [B] MIDI -> [B, T, D].

        use_cache=True keeps each decoder layer's keys and values (one token per step);
        use_cache=False re-runs the decoder over the whole prefix at every step (the authors'
        inference; kept as the reference and the benchmark baseline). Both give the same
        frames. noise_seed=None conditions on the points as given; an int adds seeded
        Gaussian noise (cfg.point_noise_std) to them, for reproducible variations. Dropout is
        off during generation whatever the module's mode; the result is an inference-mode
        tensor (no autograd).
        """
        cfg = self.cfg
        n = cfg.n_frames if n_frames is None else int(n_frames)
        if not 1 <= n <= cfg.n_frames:
            raise ConfigError(f"n_frames must be in 1..{cfg.n_frames} for this model, got {n}")
        self._check_points(points, pitches)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return self._generate(points, pitches, n, use_cache, noise_seed)
        finally:
            self.train(was_training)

    def _generate(self, points: torch.Tensor, pitches: torch.Tensor, n: int, use_cache: bool,
                  noise_seed: int | None) -> torch.Tensor:
        cfg = self.cfg
        dev = self.pitch_embed.weight.device
        dtype = self.pitch_embed.weight.dtype
        pitch_idx = self.pitch_index(pitches)
        points = points.to(device=dev, dtype=dtype)
        if noise_seed is not None and cfg.point_noise_std > 0:
            gen = torch.Generator(device=dev).manual_seed(int(noise_seed))
            points = points + cfg.point_noise_std * torch.randn(
                points.shape, generator=gen, device=dev, dtype=dtype)
        b, g, dim = points.shape[0], cfg.frames_per_step, cfg.frame_dim
        s_total = math.ceil(n / g)
        memory = self.encode(points, pitch_idx)
        start = torch.zeros(b, 1, g * dim, device=dev, dtype=dtype)
        outs: list[torch.Tensor] = []
        if use_cache:
            folded = [layer.cross_attn.fold(memory) for layer in self._dec_layers()]
            caches = [KVCache(b, cfg.n_heads, s_total, cfg.d_model // cfg.n_heads, dev, dtype)
                      for _ in self.decoder]
            layers = self._dec_layers()
            pos_bias = self.dec_pos + self.in_proj.bias  # [S, d], folded once
            w_in = self.in_proj.weight.t()
            prev2 = start[:, 0]  # [B, G*D]
            for step in range(s_total):
                h = torch.addmm(pos_bias[step], prev2, w_in)  # [B, d]
                for layer, fold, cache in zip(layers, folded, caches, strict=True):
                    h = layer.step(h, fold, cache)
                prev = self._head(h.unsqueeze(1), pitch_idx)  # [B, 1, G*D]
                outs.append(prev)
                prev2 = prev[:, 0]
        else:
            for _step in range(s_total):
                # Naive: the cross-attention K/V and every prefix token are recomputed too,
                # as a stock nn.Transformer decoder call does.
                groups_in = torch.cat([start, *outs], dim=1)
                pred = self._decode_full(groups_in, self._memory_kvs(memory), pitch_idx)
                outs.append(pred[:, -1:])
        frames = torch.cat(outs, dim=1).reshape(b, s_total * g, dim)
        return frames[:, :n].clone()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["FrameTransformer", "KVCache", "TransformerConfig", "count_params"]
