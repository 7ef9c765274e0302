"""Stage 2, parallel: (x, y, pitch) per frame -> all of a note's codec frames in one pass.

The autoregressive decoder (transformer.py) predicts each frame from the previous ones; with
that shortcut it learns to copy the last frames and, free-running, falls into one average
sustained tone wherever the point is (no decay, one spectrum). This decoder has no input
frames at all: token t is its learned position plus the condition, and every block reads the
condition again through adaptive LayerNorm (scale, shift and a zero-initialised gate per
sub-layer, as in DiT, Peebles and Xie 2023). Attention is bidirectional over the whole note, so
the attack can see the release. The condition comes per frame: a note can follow a moving
point while it sounds. Training drops the point for a share of the notes (the pitch stays),
so render time can apply guidance: uncond + w (cond - uncond).

Shapes: points [B, 2] or [B, T, 2] (one per frame), pitches [B] MIDI numbers, frames
[B, T, D] normalised codec frames. The config is TransformerConfig with decoder="parallel"
(n_dec_layers blocks of d_model; n_enc_layers is the depth of the condition MLP).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pgesam_live.errors import ConfigError
from pgesam_live.model.transformer import (
    FeedForward,
    FrameTransformer,
    SelfAttention,
    TransformerConfig,
    noisy_points,
    pitch_indices,
)

N_FOURIER = 8  # sin/cos of x and y at 8 octaves of frequency: the map's fine detail


def fourier_points(points: torch.Tensor) -> torch.Tensor:
    """points [..., 2] -> [..., 2 + 4 * N_FOURIER]: the coordinates and their sines/cosines."""
    freqs = (2.0 ** torch.arange(N_FOURIER, device=points.device, dtype=points.dtype)) * math.pi
    ang = points[..., None] * freqs  # [..., 2, F]
    return torch.cat([points, ang.sin().flatten(-2), ang.cos().flatten(-2)], dim=-1)


MAP_GRID_RANGE = (-1.0, 1.0)  # the latent plane's nominal square; points beyond read its edge


class MapGrid(nn.Module):
    """Learned features on the map at several resolutions, read bilinearly: points
    [..., 2] -> [..., d]. The tables start random and the projection at zero, so a grid added
    to a trained decoder changes nothing until it trains; bilinear reading keeps the map
    continuous (piecewise linear between the finest cells' corners)."""

    def __init__(self, sides: Sequence[int], features: int, d: int) -> None:
        super().__init__()
        self.sides = [int(r) for r in sides]
        gen = torch.Generator().manual_seed(0)
        self.tables = nn.ParameterList(
            nn.Parameter(torch.randn((r + 1) * (r + 1), features, generator=gen) * 0.1)
            for r in self.sides)
        self.proj = nn.Linear(features * len(self.sides), d)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        lo, hi = MAP_GRID_RANGE
        unit = ((points - lo) / (hi - lo)).clamp(0.0, 1.0)  # [..., 2] in [0, 1]
        feats = []
        for r, table in zip(self.sides, self.tables, strict=True):
            u = unit * r
            i0 = u.floor().clamp(max=r - 1)
            f = u - i0  # [..., 2] position inside the cell
            ix, iy = i0[..., 0].long(), i0[..., 1].long()
            fx, fy = f[..., :1], f[..., 1:]
            row = r + 1

            def at(dx: int, dy: int, ix: torch.Tensor = ix, iy: torch.Tensor = iy,
                   row: int = row, table: torch.Tensor = table) -> torch.Tensor:
                return table[(ix + dx) * row + iy + dy]

            feats.append(at(0, 0) * (1 - fx) * (1 - fy) + at(1, 0) * fx * (1 - fy)
                         + at(0, 1) * (1 - fx) * fy + at(1, 1) * fx * fy)
        return self.proj(torch.cat(feats, dim=-1))

    def read_entries(self, points: torch.Tensor) -> list[torch.Tensor]:
        """Per table, a bool mask [(r + 1)^2] of the entries that `points` [N, 2] read (the
        corners of the cells they fall in): the entries training at those points moves."""
        lo, hi = MAP_GRID_RANGE
        unit = ((points.detach().float().cpu() - lo) / (hi - lo)).clamp(0.0, 1.0)
        masks = []
        for r in self.sides:
            i0 = (unit * r).floor().clamp(max=r - 1).long()
            mask = torch.zeros((r + 1) * (r + 1), dtype=torch.bool)
            for dx in (0, 1):
                for dy in (0, 1):
                    mask[(i0[:, 0] + dx) * (r + 1) + i0[:, 1] + dy] = True
            masks.append(mask)
        return masks

    @torch.no_grad()
    def fill_unread(self, points: torch.Tensor) -> int:
        """Replace every table entry that no point of `points` [N, 2] reads (still its random
        start, since training never moved it) by the harmonic interpolation of the entries
        that are read: per table, Laplace's equation on its (r + 1) x (r + 1) lattice with the
        read entries fixed. Between and around the trained points the grid then blends their
        features smoothly instead of adding random ones. Returns how many entries changed."""
        import numpy as np  # noqa: PLC0415
        from scipy.sparse import coo_matrix, diags  # noqa: PLC0415
        from scipy.sparse.linalg import spsolve  # noqa: PLC0415

        changed = 0
        for r, table, known in zip(self.sides, self.tables, self.read_entries(points),
                                   strict=True):
            n_side = r + 1
            if not bool(known.any()) or bool(known.all()):
                continue
            idx = np.arange(n_side * n_side).reshape(n_side, n_side)
            rows = np.concatenate([idx[1:, :].ravel(), idx[:-1, :].ravel(),
                                   idx[:, 1:].ravel(), idx[:, :-1].ravel()])
            cols = np.concatenate([idx[:-1, :].ravel(), idx[1:, :].ravel(),
                                   idx[:, :-1].ravel(), idx[:, 1:].ravel()])
            adj = coo_matrix((np.ones(len(rows)), (rows, cols)),
                             shape=(n_side * n_side,) * 2).tocsr()
            lap = diags(np.asarray(adj.sum(axis=1)).ravel()) - adj
            k = known.numpy()
            u = ~k
            values = table.detach().cpu().double().numpy()
            rhs = adj[u][:, k] @ values[k]  # [U, F]
            solved = spsolve(lap[u][:, u].tocsc(), rhs)
            solved = solved.reshape(int(u.sum()), -1)
            filled = values.copy()
            filled[u] = solved
            table.copy_(torch.from_numpy(filled).to(table))
            changed += int(u.sum())
        return changed


class AdaBlock(nn.Module):
    """Pre-norm Transformer block whose norms are modulated by the condition (adaLN-Zero)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.attn = SelfAttention(d, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg)
        self.ln1 = nn.LayerNorm(d, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(d, elementwise_affine=False)
        self.mod = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """h [B, S, d], c [B, S, d] (SiLU applied) -> [B, S, d]; key_bias [S] as
        SelfAttention's."""
        sh1, sc1, g1, sh2, sc2, g2 = self.mod(c).chunk(6, dim=-1)
        h = h + g1 * self.attn(self.ln1(h) * (1 + sc1) + sh1, causal=False, key_bias=key_bias)
        return h + g2 * self.ff(self.ln2(h) * (1 + sc2) + sh2)


class ParallelFrameTransformer(nn.Module):
    """Non-autoregressive frame decoder conditioned on (x, y, pitch) in every block."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if not cfg.parallel:
            raise ConfigError("ParallelFrameTransformer needs a config with decoder='parallel'")
        self.cfg = cfg
        d, g = cfg.d_model, cfg.frames_per_step
        layers: list[nn.Module] = [nn.Linear(2 + 4 * N_FOURIER, d)]
        for _ in range(max(1, cfg.n_enc_layers)):
            layers += [nn.SiLU(), nn.Linear(d, d)]
        self.point_mlp = nn.Sequential(*layers)
        self.null_point = nn.Parameter(torch.zeros(d))  # the dropped condition
        self.map_grid = (MapGrid(cfg.map_grid, cfg.map_grid_features, d) if cfg.map_grid
                         else None)
        self.pitch_embed = nn.Embedding(cfg.n_pitches, d)
        self.pitch_lin = nn.Linear(1, d)  # a smooth pitch axis beside the per-pitch table
        self.pos = nn.Parameter(torch.randn(cfg.n_steps, d) * 0.02)
        self.blocks = nn.ModuleList(AdaBlock(cfg) for _ in range(cfg.n_dec_layers))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.mod_out = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.mod_out.weight)
        nn.init.zeros_(self.mod_out.bias)
        self.out_proj = nn.Linear(d, g * cfg.frame_dim)
        self.out_bias: nn.Embedding | None = None
        if cfg.pitch_bias:
            self.out_bias = nn.Embedding(cfg.n_pitches, cfg.frame_dim)
            nn.init.zeros_(self.out_bias.weight)

    # -- helpers -----------------------------------------------------------------------------
    def pitch_index(self, pitches: torch.Tensor) -> torch.Tensor:
        """MIDI pitches [B] -> class indices [B]; out-of-range pitches raise ConfigError."""
        return pitch_indices(self.cfg, pitches, self.pos.device)

    def _token_points(self, points: torch.Tensor, s: int) -> torch.Tensor:
        """points [B, 2] or [B, T, 2] -> one point per token [B, S, 2] (a token's frames
        averaged; a per-frame path shorter than the note holds its last point), or [B, 1, 2]
        for a fixed point (then the condition and its modulations are computed once)."""
        if points.dim() == 2:
            if points.shape[1] != 2:
                raise ConfigError(f"points must be [B, 2] or [B, T, 2], got {list(points.shape)}")
            return points[:, None, :]  # [B, 1, 2]: one point for the note, broadcast
        if points.dim() != 3 or points.shape[2] != 2:
            raise ConfigError(f"points must be [B, 2] or [B, T, 2], got {list(points.shape)}")
        g = self.cfg.frames_per_step
        need = s * g
        t = points.shape[1]
        if t < need:
            points = torch.cat([points, points[:, -1:].expand(-1, need - t, -1)], dim=1)
        return points[:, :need].reshape(points.shape[0], s, g, 2).mean(2)

    def condition(self, points: torch.Tensor, pitch_idx: torch.Tensor, s: int,
                  drop: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token condition from points, pitch indices [B]: [B, S, d] (or [B, 1, d] for
        fixed points), or with a map grid [B, S, 2, d]: the condition without and with the
        grid's features (blocks before / from cfg.map_grid_from_block). `drop` [B] bool
        replaces those notes' point (grid included) by the null condition."""
        pts = self._token_points(points, s)
        c_pt = self.point_mlp(fourier_points(pts))  # [B, S, d]
        p_norm = ((pitch_idx.to(pts.dtype) + self.cfg.pitch_min - 60.0) / 12.0)[:, None]
        c_pitch = self.pitch_embed(pitch_idx) + self.pitch_lin(p_norm)  # [B, d]
        if self.map_grid is not None:
            c_pt = torch.stack([c_pt, c_pt + self.map_grid(pts)], dim=2)  # [B, S, 2, d]
        if drop is not None:
            null = self.null_point.to(c_pt.dtype)
            c_pt = torch.where(drop.view(-1, *([1] * (c_pt.dim() - 1))), null, c_pt)
        c_pitch = c_pitch[:, None, None, :] if self.map_grid is not None else c_pitch[:, None]
        return c_pt + c_pitch

    def _run(self, c: torch.Tensor, pitch_idx: torch.Tensor, s: int,
             context_stride: int | None = None) -> torch.Tensor:
        """Condition [B, S or 1, d] (S: every step of the note with a context_stride; with a
        map grid [B, S or 1, 2, d], see `condition`) ->
        frames [B, s * G, D] of the first s steps, then, with a context_stride, those of the
        context tokens (steps s + stride // 2, s + stride // 2 + stride, ...).

        context_stride: the first s tokens attend to one another and to every
        context_stride-th token after them (each of those weighted context_stride times in
        the attention, standing for its neighbours), not to all the note's tokens: the
        first frames of a note nearly as the whole pass gives them (on the bundled model,
        32 of 300 frames with a stride of 16: mean |difference| 0.0002 of the normalised
        frame, against 0.024 with the first frames alone), for a fraction of the cost."""
        bias = None
        if context_stride is None or s >= self.cfg.n_steps:
            idx = torch.arange(s, device=c.device)
        else:
            first = min(s + context_stride // 2, self.cfg.n_steps)
            far = torch.arange(first, self.cfg.n_steps, context_stride, device=c.device)
            idx = torch.cat([torch.arange(s, device=c.device), far])
            bias = torch.cat([torch.zeros(s, device=c.device),
                              torch.full((len(far),), math.log(context_stride),
                                         device=c.device)])
        if c.shape[1] > 1:
            c = c[:, idx]
        if c.dim() == 4:  # with a map grid: the blocks from map_grid_from_block read it
            c, c_grid = c[:, :, 0], c[:, :, 1]
        else:
            c_grid = c
        h = self.pos[idx] + (c_grid if self._grid_start() == 0 else c)
        h = self._blocks(h, F.silu(c), F.silu(c_grid), 0, len(self.blocks), bias)
        return self._head(h, F.silu(c_grid), pitch_idx)

    def _grid_start(self) -> int:
        """The first block that reads the map grid (the number of blocks: none does)."""
        return self.cfg.map_grid_from_block if self.map_grid is not None else len(self.blocks)

    def _blocks(self, h: torch.Tensor, cs: torch.Tensor, cs_grid: torch.Tensor, first: int,
                stop: int, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks first..stop-1 on h [B, N, d]; cs / cs_grid [B, N or 1, d]: the SiLU'd
        condition without / with the map grid's features (the same without a grid)."""
        start = self._grid_start()
        for i in range(first, stop):
            h = self.blocks[i](h, cs_grid if i >= start else cs, bias)
        return h

    def _head(self, h: torch.Tensor, cs_grid: torch.Tensor, pitch_idx: torch.Tensor
              ) -> torch.Tensor:
        """The output layer: h [B, N, d] -> frames [B, N * G, D]."""
        shift, scale = self.mod_out(cs_grid).chunk(2, dim=-1)
        out = self.out_proj(self.norm_out(h) * (1 + scale) + shift)  # [B, N, G*D]
        out = out.reshape(h.shape[0], h.shape[1] * self.cfg.frames_per_step,
                          self.cfg.frame_dim)
        if self.out_bias is not None:
            out = out + self.out_bias(pitch_idx)[:, None, :]
        return out

    # -- training the last blocks on a cached trunk ------------------------------------------
    @torch.no_grad()
    def trunk(self, points: torch.Tensor, pitches: torch.Tensor, first_trained: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed points [B, 2], pitches [B] -> (the hidden state entering block
        `first_trained` [B, S, d] for the whole note, the condition without the map grid
        [B, d]): what `top` continues from. The blocks before `first_trained` must not read
        the map grid."""
        if self.map_grid is not None and self._grid_start() == 0:
            raise ConfigError("a map grid read from block 0 leaves no trunk to cache")
        if self.map_grid is not None and first_trained > self._grid_start():
            raise ConfigError(f"blocks from {self._grid_start()} read the map grid: the trunk "
                              f"can end there at the latest, not at {first_trained}")
        s = self.cfg.n_steps
        c = self.condition(points.to(self.pos.dtype), self.pitch_index(pitches), s)
        c = c[:, :, 0] if c.dim() == 4 else c  # [B, 1, d]
        h = self._blocks(self.pos[:s] + c, F.silu(c), F.silu(c), 0, first_trained)
        return h, c[:, 0]

    def top(self, h: torch.Tensor, c: torch.Tensor, points: torch.Tensor,
            pitches: torch.Tensor, first_trained: int) -> torch.Tensor:
        """The rest of the pass from `trunk`'s output: h [B, S, d], c [B, d], the same points
        [B, 2] (read by the map grid) and pitches [B] -> frames [B, S * G, D], as `forward`
        gives them without condition dropout."""
        if self.map_grid is not None and self._grid_start() == 0:
            raise ConfigError("a map grid read from block 0 leaves no trunk to cache")
        c_grid = c + self.map_grid(points.to(c.dtype)) if self.map_grid is not None else c
        cs, cs_grid = F.silu(c)[:, None], F.silu(c_grid)[:, None]
        h = self._blocks(h, cs, cs_grid, first_trained, len(self.blocks))
        return self._head(h, cs_grid, self.pitch_index(pitches))

    # -- training ----------------------------------------------------------------------------
    def forward(self, points: torch.Tensor, pitches: torch.Tensor, frames: torch.Tensor
                ) -> torch.Tensor:
        """points [B, 2] (or [B, T, 2]), pitches [B], frames [B, T, D] -> pred [B, T, D].

        The frames give only the length and are checked against the config: no frame is an
        input (nothing to copy). In training mode a share cfg.cond_dropout of the notes get
        the null point.
        """
        cfg = self.cfg
        b, t, dim = frames.shape
        if dim != cfg.frame_dim:
            raise ConfigError(f"frames have dim {dim} but the model expects {cfg.frame_dim}: "
                              "use the codec the model was trained with")
        if t > cfg.n_frames:
            raise ConfigError(f"{t} frames is more than this model's n_frames ({cfg.n_frames})"
                              ": crop the notes or build the config with a larger n_frames")
        if points.shape[0] != b or pitches.shape[0] != b:
            raise ConfigError("points, pitches and frames must have the same batch size")
        pitch_idx = self.pitch_index(pitches)
        s = math.ceil(t / cfg.frames_per_step)
        drop = None
        if self.training and cfg.cond_dropout > 0:
            drop = torch.rand(b, device=points.device) < cfg.cond_dropout
        c = self.condition(points.to(self.pos.dtype), pitch_idx, s, drop)
        return self._run(c, pitch_idx, s)[:, :t]

    # -- generation --------------------------------------------------------------------------
    def generate(self, points: torch.Tensor, pitches: torch.Tensor, n_frames: int | None = None,
                 use_cache: bool = True,
                 noise_seed: int | Sequence[int] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """All frames in one pass: points [B, 2] or [B, T, 2], pitches [B] -> [B, n, D].

        use_cache is accepted for the autoregressive decoder's signature (nothing to cache
        here). noise_seed as FrameTransformer.generate. guidance (default cfg.guidance): the
        scale w of out = uncond + w (cond - uncond); 1 renders the conditional pass alone.
        Dropout is off; the result is an inference-mode tensor.
        """
        del use_cache
        n = self.cfg.n_frames if n_frames is None else int(n_frames)
        return self._generate(points, pitches, n, noise_seed, guidance, None)[:, :n].clone()

    def generate_head(self, points: torch.Tensor, pitches: torch.Tensor, n_frames: int,
                      context_stride: int = 16,
                      noise_seed: int | Sequence[int] | None = None,
                      guidance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A note's first n frames (a streamed note's head), attending to the rest of the
        note at every context_stride-th step only (see _run), as `generate` gives them to
        within a little: -> (head [B, n, D], context [B, M, D]: the frames of the context
        steps, a coarse view of the whole note, e.g. of where it peaks)."""
        n = int(n_frames)
        out = self._generate(points, pitches, n, noise_seed, guidance, int(context_stride))
        s = math.ceil(n / self.cfg.frames_per_step)
        return out[:, :n].clone(), out[:, s * self.cfg.frames_per_step:].clone()

    def context_frame_indices(self, n_frames: int, context_stride: int = 16) -> torch.Tensor:
        """Which frames of the note `generate_head`'s context [B, M, D] holds: [M] indices
        (the frames of steps s + stride // 2, + stride, ..., s the head's steps; see _run)."""
        g, n_steps = self.cfg.frames_per_step, self.cfg.n_steps
        s = math.ceil(int(n_frames) / g)
        if s >= n_steps:
            return torch.zeros(0, dtype=torch.long)
        far = torch.arange(min(s + context_stride // 2, n_steps), n_steps, context_stride)
        return (far[:, None] * g + torch.arange(g)[None]).reshape(-1)

    def _generate(self, points: torch.Tensor, pitches: torch.Tensor, n: int,
                  noise_seed: int | Sequence[int] | None, guidance: float | None,
                  context_stride: int | None) -> torch.Tensor:
        cfg = self.cfg
        if not 1 <= n <= cfg.n_frames:
            raise ConfigError(f"n_frames must be in 1..{cfg.n_frames} for this model, got {n}")
        if context_stride is not None and context_stride < 1:
            raise ConfigError(f"context_stride must be >= 1, got {context_stride}")
        if pitches.shape[0] != points.shape[0]:
            raise ConfigError(f"points ({points.shape[0]}) and pitches ({pitches.shape[0]}) "
                              "must have the same batch size")
        w = cfg.guidance if guidance is None else float(guidance)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                dev, dtype = self.pos.device, self.pos.dtype
                pitch_idx = self.pitch_index(pitches)
                pts = noisy_points(points.to(device=dev, dtype=dtype), noise_seed,
                                   cfg.point_noise_std)
                s = math.ceil(n / cfg.frames_per_step)
                sc = s if context_stride is None else cfg.n_steps  # steps conditioned
                b = pts.shape[0]
                if w == 1.0 or b == 0:
                    return self._run(self.condition(pts, pitch_idx, sc), pitch_idx, s,
                                     context_stride)
                both = torch.cat([pts, pts])
                idx2 = torch.cat([pitch_idx, pitch_idx])
                drop = torch.arange(2 * b, device=dev) >= b
                out = self._run(self.condition(both, idx2, sc, drop), idx2, s, context_stride)
                cond, uncond = out[:b], out[b:]
                return uncond + w * (cond - uncond)
        finally:
            self.train(was_training)


def grow_map_grid(tr: ParallelFrameTransformer, sides: Sequence[int], from_block: int
                  ) -> ParallelFrameTransformer:
    """A copy of a decoder without a map grid, with one of `sides` read from block
    `from_block` on; it renders exactly as `tr` until the grid trains (its projection starts
    at zero)."""
    if tr.map_grid is not None:
        raise ConfigError(f"this decoder has a map grid already ({list(tr.cfg.map_grid)})")
    cfg = dataclasses.replace(tr.cfg, map_grid=tuple(int(r) for r in sides),
                              map_grid_from_block=int(from_block))
    grown = ParallelFrameTransformer(cfg).to(device=tr.pos.device, dtype=tr.pos.dtype)
    missing, unexpected = grown.load_state_dict(tr.state_dict(), strict=False)
    if unexpected or any(not k.startswith("map_grid.") for k in missing):
        raise ConfigError(f"cannot grow a map grid into this decoder: {unexpected or missing}")
    grown.train(tr.training)
    return grown


Decoder = FrameTransformer | ParallelFrameTransformer


def make_transformer(cfg: TransformerConfig) -> Decoder:
    """The decoder a config names: FrameTransformer or ParallelFrameTransformer."""
    return ParallelFrameTransformer(cfg) if cfg.parallel else FrameTransformer(cfg)


__all__ = ["Decoder", "MapGrid", "ParallelFrameTransformer", "fourier_points", "grow_map_grid",
           "make_transformer"]
