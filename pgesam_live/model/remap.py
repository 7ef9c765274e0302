"""Move a trained parallel decoder onto another VAE's map without retraining its blocks.

The decoder reads a point only through its condition: `point_mlp(fourier_points(p))` in every
block, plus the map grid's features in the blocks from `map_grid_from_block` (parallel.py).
A new VAE (say one that reads the whole note, `train vae --vae-frames 300`) puts the same
training notes at other points. For each training note, the condition the decoder already
plays it from is known: the old condition at the note's old point. `move_decoder_to_map` fits
the point MLP and the grid so that the *new* point of every note gives that same condition,
at each note's own point and at its instrument's point; the blocks, the pitch path and the
output layer are untouched. The training instruments then sound as before where the new map
puts them, and a point between them reads a blend of their conditions, now arranged by the
new map's neighbourhoods.

It is a regression of a few hundred thousand parameters on a few thousand vectors: about a
minute on two CPU cores, against hours to retrain the decoder on the new map.

Shapes: points [N, 2] (latent map points), conditions [N, d].
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from pgesam_live.errors import ConfigError
from pgesam_live.model.parallel import ParallelFrameTransformer, fourier_points

MOVE_STEPS = 3000
MOVE_BATCH = 1024
MLP_LR = 1e-3
GRID_LR = 1e-2


@dataclass
class MoveReport:
    """How well the moved decoder's condition at the new points matches the old one at the
    old points: mean squared error over the condition's variance (0 exact, 1 knows nothing),
    without the grid (the condition of the first blocks) and with it (the later blocks')."""

    points: int
    steps: int
    condition_error: float
    grid_condition_error: float | None
    filled_entries: int
    time_s: float

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _conditions(tr: ParallelFrameTransformer, points: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """points [N, 2] -> (point condition [N, d], with the grid's features added [N, d] or
    None without a grid); pitch excluded (it does not depend on the point)."""
    c = tr.point_mlp(fourier_points(points))
    return c, (c + tr.map_grid(points) if tr.map_grid is not None else None)


def move_decoder_to_map(tr: ParallelFrameTransformer, old_points: torch.Tensor,
                        new_points: torch.Tensor, steps: int = MOVE_STEPS,
                        batch: int = MOVE_BATCH, seed: int = 0) -> MoveReport:
    """Refit tr's point MLP and map grid, in place, so that new_points [N, 2] give the
    conditions old_points [N, 2] gave (row i: the same note on the old and the new map).

    The grid starts empty on the new map (its tables zero, the projection kept), learns at
    the new points, and its unread entries are then filled harmonically (MapGrid.fill_unread)
    so points between instruments blend their neighbours. Every other weight is left as is.
    """
    if not isinstance(tr, ParallelFrameTransformer):
        raise ConfigError("moving a decoder to another map needs the parallel decoder; "
                          "train the autoregressive one on the new VAE instead")
    if old_points.shape != new_points.shape or old_points.dim() != 2 or old_points.shape[1] != 2:
        raise ConfigError(f"old and new points must both be [N, 2], got "
                          f"{list(old_points.shape)} and {list(new_points.shape)}")
    if old_points.shape[0] == 0:
        raise ConfigError("no points to move the decoder with: the data set has no notes of "
                          "the model's instruments")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    t0 = time.time()
    dev = next(tr.parameters()).device
    old_points = old_points.detach().to(dev, torch.float32)
    new_points = new_points.detach().to(dev, torch.float32)
    was = [p.requires_grad for p in tr.parameters()]
    with torch.no_grad():
        c_old, cg_old = _conditions(tr, old_points)
        if tr.map_grid is not None:
            for name, p in tr.map_grid.named_parameters():
                if not name.startswith("proj"):
                    p.zero_()
    var_c = c_old.var().clamp_min(1e-12)
    var_cg = cg_old.var().clamp_min(1e-12) if cg_old is not None else None
    mlp = list(tr.point_mlp.parameters())
    grid = list(tr.map_grid.parameters()) if tr.map_grid is not None else []
    for p in tr.parameters():
        p.requires_grad_(False)
    for p in mlp + grid:
        p.requires_grad_(True)
    groups = [{"params": mlp, "lr": MLP_LR}]
    if grid:
        groups.append({"params": grid, "lr": GRID_LR})
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(seed)
    n = old_points.shape[0]

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        c, cg = _conditions(tr, new_points[idx])
        loss = ((c - c_old[idx]) ** 2).mean() / var_c
        if cg is not None and cg_old is not None and var_cg is not None:
            loss = loss + ((cg - cg_old[idx]) ** 2).mean() / var_cg
        return loss

    try:
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch, n),), generator=gen).to(dev)
            loss = loss_of(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, w in zip(tr.parameters(), was, strict=True):
            p.requires_grad_(w)
    filled = tr.map_grid.fill_unread(new_points) if tr.map_grid is not None else 0
    with torch.no_grad():
        c, cg = _conditions(tr, new_points)
        err_c = float(((c - c_old) ** 2).mean() / var_c)
        err_cg = (float(((cg - cg_old) ** 2).mean() / var_cg)
                  if cg is not None and cg_old is not None and var_cg is not None else None)
    return MoveReport(points=n, steps=steps, condition_error=round(err_c, 5),
                      grid_condition_error=None if err_cg is None else round(err_cg, 5),
                      filled_entries=filled, time_s=round(time.time() - t0, 2))
