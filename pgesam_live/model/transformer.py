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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from pgesam_live.errors import ConfigError
from pgesam_live.model.configs import config_from_dict

DECODERS = ("autoregressive", "parallel")


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
    # Which decoder: "autoregressive" (the authors' recipe: next frame from the previous ones,
    # this module) or "parallel" (model/parallel.py: every frame at once from the condition
    # and its position, the condition in every layer; no next-frame shortcut).
    decoder: str = "autoregressive"
    # Parallel decoder only. cond_dropout: share of training notes whose point is replaced by
    # a learned "no point" condition (the pitch stays), so the model also learns the average
    # note of a pitch; guidance: render-time scale w of the point's effect,
    # out = uncond + w (cond - uncond) (1 = off; > 1 exaggerates what the point changes).
    cond_dropout: float = 0.0
    guidance: float = 1.0
    # Render time, a codec with f0 in its frames (harmonic): shift each generated note's f0
    # track so that its median over the audible frames lands on the key, the octave the model
    # chose kept (an organ's 16-foot stop stays an octave down); vibrato and pitch envelopes
    # keep their shape. A sampler's tuning, for a decoder whose notes come out a few tens of
    # cents off (the parallel one: see the model card).
    tune_f0: bool = False
    # Render time, a codec with a loudness channel (harmonic): smooth each generated note's
    # loudness over neighbouring frames ([1, 2, 1] / 4 in dB), onsets (a rise of more than
    # the codec's DEBUZZ_ONSET_DB to a frame) kept as they are. Why: the parallel decoder's
    # loudness zig-zags frame to frame (0.73 dB, the sign alternating at 77 % of frames: an
    # amplitude buzz at half the frame rate, 37.5 Hz; the originals' frames: 0.35 dB, 34 %).
    debuzz: bool = False
    # Parallel decoder only: a learned feature grid over the map (Instant-NGP's multiresolution
    # encoding, dense): one table of map_grid_features per side length in map_grid, over
    # MAP_GRID_RANGE, read bilinearly at the point and projected into the condition of blocks
    # map_grid_from_block.. and of the output layer. Why: through an MLP of Fourier features
    # the decoder learns the map's fine detail slowly (spectral bias), and the training
    # instruments lie 0.005-0.02 apart (median nearest 0.014). () = no grid.
    map_grid: tuple[int, ...] = ()
    map_grid_features: int = 8
    map_grid_from_block: int = 0

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
        if self.decoder not in DECODERS:
            raise ConfigError(f"TransformerConfig.decoder must be one of {', '.join(DECODERS)},"
                              f" got {self.decoder!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError("TransformerConfig.cond_dropout must be in [0, 1), got "
                              f"{self.cond_dropout}")
        if any(int(r) < 1 for r in self.map_grid) or self.map_grid_features < 1:
            raise ConfigError("TransformerConfig.map_grid sides and map_grid_features must be "
                              f">= 1, got {self.map_grid} and {self.map_grid_features}")
        if self.map_grid and not 0 <= self.map_grid_from_block < self.n_dec_layers:
            raise ConfigError(f"TransformerConfig.map_grid_from_block must be in 0.."
                              f"{self.n_dec_layers - 1}, got {self.map_grid_from_block}")
        if self.map_grid and self.decoder != "parallel":
            raise ConfigError("TransformerConfig.map_grid is for the parallel decoder")
        if not 0.0 <= self.guidance <= 10.0:
            raise ConfigError(f"TransformerConfig.guidance must be in [0, 10], got {self.guidance}")

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

        One frame per step (measured on the 2-core dev CPU, 300 frames, 2 threads, quiet:
        one note 0.27 s, 25 notes batched 0.96 s, naive recompute 7.6x slower; with the
        packed cached step (_LayerStep), 1 thread beside a training job: one note 0.21-0.26
        s, naive recompute 11.5-12.9x slower, against 8.7-9.9x before in the same runs).
        frames_per_step=2 halves the training cost and the render time but, with half as
        many steps to save, the KV cache gains less over recompute.
        """
        base: dict[str, Any] = dict(
            d_model=256, n_heads=4, n_enc_layers=2, n_dec_layers=4, d_ff=768, dropout=0.0,
            frames_per_step=1, pitch_bias=True, pre_ln=True, activation="relu")
        if overrides.get("decoder") == "parallel":
            # One frame per token (no group seam to zig-zag at), six conditioned blocks.
            base.update(n_enc_layers=1, n_dec_layers=6, d_ff=1024, activation="gelu",
                        cond_dropout=0.1)
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

    @property
    def parallel(self) -> bool:
        return self.decoder == "parallel"

    # -- (de)serialisation for checkpoints ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        """Inverse of to_dict; unknown keys are an error."""

        return config_from_dict(cls, d)  # type: ignore[no-any-return]


def pitch_indices(cfg: TransformerConfig, pitches: torch.Tensor,
                  device: torch.device) -> torch.Tensor:
    """MIDI pitches [B] -> class indices [B] on `device` (either decoder's pitch tables);
    out-of-range pitches raise ConfigError."""
    if pitches.dim() != 1:
        raise ConfigError(f"pitches must be [B] MIDI numbers, got shape {list(pitches.shape)}")
    if pitches.numel():
        lo, hi = int(pitches.min()), int(pitches.max())
        if lo < cfg.pitch_min or hi > cfg.pitch_max:
            bad = lo if lo < cfg.pitch_min else hi
            raise ConfigError(f"pitch {bad} is outside this model's range "
                              f"{cfg.pitch_min}..{cfg.pitch_max} (MIDI): choose a pitch "
                              "in that range")
    return (pitches.long() - cfg.pitch_min).to(device)


def noisy_points(points: torch.Tensor, noise_seed: int | Sequence[int] | None,
                 std: float) -> torch.Tensor:
    """points [B, 2] (or [B, T, 2], one per frame) plus seeded Gaussian noise of `std`.

    None: the points as given; an int: one generator for the batch; B ints: each note its
    own noise (the same for all its frames), so a note does not depend on its batch.
    """
    if noise_seed is None or std <= 0:
        return points
    dev, dtype = points.device, points.dtype
    if isinstance(noise_seed, int):
        gen = torch.Generator(device=dev).manual_seed(int(noise_seed))
        noise = torch.randn((points.shape[0], 2), generator=gen, device=dev, dtype=dtype)
    else:
        seeds = [int(s) for s in noise_seed]
        if len(seeds) != points.shape[0]:
            raise ConfigError(f"noise_seed: {len(seeds)} seeds for {points.shape[0]} notes")
        noise = torch.stack([torch.randn(2, device=dev, dtype=dtype,
                                         generator=torch.Generator(device=dev).manual_seed(s))
                             for s in seeds]) if seeds else points.new_zeros(0, 2)
    if points.dim() == 3:
        noise = noise[:, None, :]
    return points + std * noise


# -- attention ---------------------------------------------------------------------------------
class KVCache:
    """Self-attention projections of one decoder layer for steps 0..max_steps-1.

    qkv: [max_steps, B, H, 3, hd] (query, key, value per head), preallocated; step t's
    projection is written straight into qkv[t] by the matmul (no copy), and the head-major
    order makes keys[:, :, :t+1] and values[:, :, :t+1] plain strided views that the
    attention kernel reads in place. queries/keys/values: [B, H, max_steps, hd] views of it.
    """

    def __init__(self, batch: int, n_heads: int, max_steps: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.qkv = torch.empty(max_steps, batch, n_heads, 3, head_dim, device=device,
                               dtype=dtype)
        per_head = self.qkv.permute(1, 2, 0, 3, 4)  # [B, H, S, 3, hd]
        self.queries, self.keys, self.values = per_head.unbind(3)
        self.rows = list(self.qkv.view(max_steps, batch, -1).unbind(0))  # S x [B, 3d]


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

    def forward(self, x: torch.Tensor, causal: bool,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, d] -> [B, N, d] over the whole sequence (training, naive generation).
        key_bias [N]: added to every query's attention logits for each key (log weights)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        p = self.dropout if self.training else 0.0
        mask = None if key_bias is None else key_bias.to(q.dtype).expand(1, 1, n, n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


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


# -- cached generation ---------------------------------------------------------------------
# Bias folding for the feed-forward step: fc1 gets one extra output unit with zero weights and
# bias _ONE_UNIT, which relu and gelu both map to itself (exactly in float32: gelu(8) rounds
# to 8; within 1e-15 in float64), and fc2 gets one extra input row fc2.bias / _ONE_UNIT
# (exact: a power of two). Then x + fc2(act(fc1(a))) is one addmm_ into x: no separate bias
# add, no residual add.
_ONE_UNIT = 8.0


class _LayerStep:
    """One decoder layer packed for the one-token step (inference; built per generate() call
    from the live parameters, so it can never be stale).

    Weights are transposed to contiguous [in, out] so every projection is one addmm that
    writes into the KV cache or into the residual stream in place; the 1/sqrt(hd) query
    scale and the biases are folded in wherever that saves an op. At one token per step the
    step costs weight reads (~2.6 M floats for the small config) plus per-op overhead, and
    only the overhead can go: fewer ops, no per-step allocation beyond the small outputs.
    """

    def __init__(self, layer: DecoderLayer, memory: torch.Tensor) -> None:
        sa, ff = layer.self_attn, layer.ff
        h, hd = sa.n_heads, sa.head_dim
        d = h * hd
        # qkv rows reordered (q|k|v, head, e) -> (head, q|k|v, e) to match KVCache.qkv.
        scale = torch.tensor([hd ** -0.5, 1.0, 1.0], dtype=memory.dtype,
                             device=memory.device).view(3, 1, 1, 1)
        w_qkv = (sa.qkv.weight.view(3, h, hd, d) * scale).transpose(0, 1).reshape(3 * d, d)
        b_qkv = (sa.qkv.bias.view(3, h, hd, 1) * scale).transpose(0, 1).reshape(3 * d)
        self.w_qkv, self.b_qkv = w_qkv.t().contiguous(), b_qkv.contiguous()
        self.w_o, self.b_o = sa.out.weight.t().contiguous(), sa.out.bias
        one = sa.out.bias.new_full((1,), _ONE_UNIT)
        self.w_1 = torch.cat([ff.fc1.weight.t(), ff.fc1.weight.new_zeros(d, 1)], 1)
        self.b_1 = torch.cat([ff.fc1.bias, one])
        self.w_2 = torch.cat([ff.fc2.weight.t(), (ff.fc2.bias / _ONE_UNIT)[None]], 0)
        self.gelu = ff.gelu
        # Cross-attention folded into the memory (CrossAttention.fold); its output bias joins
        # the values: each head's softmax weights sum to 1, so adding out.bias / H to every
        # value row adds out.bias once to the output.
        self.score_w, self.score_b, values = layer.cross_attn.fold(memory)
        self.values = values + layer.cross_attn.out.bias / h
        self.n_heads = h
        self.lns = [(ln.weight, ln.bias) for ln in (layer.ln1, layer.ln2, layer.ln3)]
        self.shape = (d,)
        self.pre_ln = layer.pre_ln

    def __call__(self, x: torch.Tensor, step: int, cache: KVCache) -> torch.Tensor:
        """x [B, d] (the residual stream, updated in place where possible) -> [B, d]."""
        b = x.shape[0]
        (w1, b1), (w2, b2), (w3, b3) = self.lns
        shape, pre = self.shape, self.pre_ln
        # Self-attention: the projection lands in the cache; one fused attention call.
        a = F.layer_norm(x, shape, w1, b1) if pre else x
        torch.addmm(self.b_qkv, a, self.w_qkv, out=cache.rows[step])
        # Measured: SDPA's CPU kernel on these strided views is as fast as bmm/softmax/bmm
        # for one note and faster for a batch of 25.
        y = F.scaled_dot_product_attention(
            cache.queries.narrow(2, step, 1), cache.keys.narrow(2, 0, step + 1),
            cache.values.narrow(2, 0, step + 1), scale=1.0)  # [B, H, 1, hd]
        x = x.addmm_(y.reshape(b, -1), self.w_o).add_(self.b_o)
        if not pre:
            x = F.layer_norm(x, shape, w1, b1)
        # Cross-attention over the folded memory.
        a = F.layer_norm(x, shape, w2, b2) if pre else x
        scores = torch.baddbmm(self.score_b, a.unsqueeze(1), self.score_w)  # [B, 1, H*M]
        w = torch.softmax(scores.view(b, self.n_heads, -1), dim=2).view(b, 1, -1)
        x.unsqueeze(1).baddbmm_(w, self.values)
        if not pre:
            x = F.layer_norm(x, shape, w2, b2)
        # Feed-forward, biases folded (see _ONE_UNIT).
        a = F.layer_norm(x, shape, w3, b3) if pre else x
        hid = torch.addmm(self.b_1, a, self.w_1)
        hid = F.gelu(hid) if self.gelu else hid.relu_()
        x = x.addmm_(hid, self.w_2)
        return x if pre else F.layer_norm(x, shape, w3, b3)


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
        return pitch_indices(self.cfg, pitches, self.pitch_embed.weight.device)

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
                 use_cache: bool = True,
                 noise_seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """Free-running generation, batched: points [B, 2], pitches [B] MIDI -> [B, T, D].

        use_cache=True keeps each decoder layer's keys and values (one token per step);
        use_cache=False re-runs the decoder over the whole prefix at every step (the authors'
        inference; kept as the reference and the benchmark baseline). Both give the same
        frames. noise_seed=None conditions on the points as given; an int adds seeded
        Gaussian noise (cfg.point_noise_std) to them, for reproducible variations; a sequence
        of B ints seeds each note's noise on its own, so a note does not depend on the batch
        it is rendered in. Dropout is
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
                  noise_seed: int | Sequence[int] | None) -> torch.Tensor:
        cfg = self.cfg
        dev = self.pitch_embed.weight.device
        dtype = self.pitch_embed.weight.dtype
        pitch_idx = self.pitch_index(pitches)
        points = noisy_points(points.to(device=dev, dtype=dtype), noise_seed,
                              cfg.point_noise_std)
        b, g, dim = points.shape[0], cfg.frames_per_step, cfg.frame_dim
        s_total = math.ceil(n / g)
        memory = self.encode(points, pitch_idx)
        if use_cache:
            return self._generate_cached(memory, pitch_idx, s_total, n)
        start = torch.zeros(b, 1, g * dim, device=dev, dtype=dtype)
        outs: list[torch.Tensor] = []
        for _step in range(s_total):
            # Naive: the cross-attention K/V and every prefix token are recomputed too, as a
            # stock nn.Transformer decoder call does.
            groups_in = torch.cat([start, *outs], dim=1)
            pred = self._decode_full(groups_in, self._memory_kvs(memory), pitch_idx)
            outs.append(pred[:, -1:])
        frames = torch.cat(outs, dim=1).reshape(b, s_total * g, dim)
        return frames[:, :n].clone()

    def _generate_cached(self, memory: torch.Tensor, pitch_idx: torch.Tensor, s_total: int,
                         n: int) -> torch.Tensor:
        """One decoder token per step with KV caches: memory [B, 3, d] -> frames [B, n, D].

        At one token per step the cost is per-op overhead and weight reads, not arithmetic:
        the loop is flat, every op writes in place or into a preallocated buffer where it
        can, and the weights are packed once per call (_LayerStep; ~ms, against ~100 ms of
        steps for a 300-frame note).
        """
        cfg = self.cfg
        b, g, dim = memory.shape[0], cfg.frames_per_step, cfg.frame_dim
        dev, dtype = memory.device, memory.dtype
        layers = [_LayerStep(layer, memory) for layer in self._dec_layers()]
        caches = [KVCache(b, cfg.n_heads, s_total, cfg.d_model // cfg.n_heads, dev, dtype)
                  for _ in layers]
        pos_rows = (self.dec_pos[:s_total] + self.in_proj.bias).unbind(0)  # S x [d]
        w_in = self.in_proj.weight.t().contiguous()  # [G*D, d]
        w_out = self.out_proj.weight.t().contiguous()  # [d, G*D]
        b_out = self.out_proj.bias.expand(b, g * dim)
        if self.out_bias is not None:  # the pitch bias is fixed for the note: fold it in
            b_out = b_out + self.out_bias(pitch_idx).repeat(1, g)
        norm_w, norm_b, shape = self.dec_norm.weight, self.dec_norm.bias, (cfg.d_model,)
        out = torch.empty(s_total, b, g * dim, device=dev, dtype=dtype)  # step-major
        out_rows = out.unbind(0)
        prev = torch.zeros(b, g * dim, device=dev, dtype=dtype)  # the zero start frame
        for step in range(s_total):
            x = torch.addmm(pos_rows[step], prev, w_in)  # [B, d]
            for layer, cache in zip(layers, caches, strict=True):
                x = layer(x, step, cache)
            prev = torch.addmm(b_out, F.layer_norm(x, shape, norm_w, norm_b), w_out,
                               out=out_rows[step])  # [B, G*D]
        frames = out.transpose(0, 1).reshape(b, s_total * g, dim)
        return frames[:, :n].clone()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["FrameTransformer", "KVCache", "TransformerConfig", "count_params"]
