"""The parallel decoder's map grid: learned features over the map, read bilinearly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pgesam_live.errors import ConfigError
from pgesam_live.model.parallel import MAP_GRID_RANGE, MapGrid, ParallelFrameTransformer
from pgesam_live.model.transformer import TransformerConfig

D = 10


def _cfg(**kw: object) -> TransformerConfig:
    return TransformerConfig.tiny(D, decoder="parallel", **kw)  # type: ignore[arg-type]


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[0.1, -0.4], [-0.9, 0.7], [0.5, 0.5]]), torch.tensor([48, 50, 52])


def test_grid_reads_its_tables_bilinearly_and_clamps_at_the_map_edge() -> None:
    g = MapGrid([2, 4], features=3, d=5)
    torch.nn.init.normal_(g.proj.weight)
    lo, hi = MAP_GRID_RANGE
    step = (hi - lo) / 4  # the finer table's cell
    corner = torch.tensor([[lo + 2 * step, lo + 2 * step]])
    # At a corner of the fine table (and so of the coarse one), the features are the entries
    # (row-major, x first: corner (i, j) of a table of side r is entry i * (r + 1) + j).
    feats = torch.cat([g.tables[0][1 * 3 + 1], g.tables[1][2 * 5 + 2]])
    assert torch.allclose(g(corner)[0], g.proj(feats), atol=1e-6)
    # Halfway between two corners: their mean (bilinear), so the map stays continuous.
    a, b = corner, corner + torch.tensor([[step, 0.0]])
    mid = (a + b) / 2
    assert torch.allclose(g(mid), (g(a) + g(b)) / 2, atol=1e-5)
    near = (g(a + 1e-6) - g(a)).detach()
    assert float(near.abs().max()) < 1e-3
    # Beyond the map's square a point reads the edge.
    assert torch.allclose(g(torch.tensor([[hi + 3.0, lo - 1.0]])),
                          g(torch.tensor([[hi, lo]])), atol=1e-6)


def test_a_grown_grid_changes_nothing_until_it_trains_then_only_its_blocks() -> None:
    torch.manual_seed(0)
    base = ParallelFrameTransformer(_cfg()).eval()
    for lin in [*(b.mod for b in base.blocks), base.mod_out]:  # adaLN-Zero starts at zero:
        torch.nn.init.normal_(lin.weight, std=0.1)  # as trained, the condition matters
    grown = ParallelFrameTransformer(dataclasses.replace(
        base.cfg, map_grid=(4, 8), map_grid_from_block=base.cfg.n_dec_layers - 1)).eval()
    missing, unexpected = grown.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("map_grid.") for k in missing)
    pts, pitch = _points()
    assert torch.equal(base.generate(pts, pitch), grown.generate(pts, pitch))
    assert grown.map_grid is not None
    torch.nn.init.normal_(grown.map_grid.proj.weight)
    moved = grown.generate(pts, pitch)
    assert float((moved - base.generate(pts, pitch)).abs().max()) > 1e-3
    # The blocks before map_grid_from_block do not see it: zeroing the last block's and the
    # output layer's modulation (where the grid enters) leaves the two decoders equal again.
    for m in (grown, base):
        for lin in (m.blocks[-1].mod, m.mod_out):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
    assert torch.allclose(base.generate(pts, pitch), grown.generate(pts, pitch), atol=1e-6)


def test_grid_decoder_trains_renders_per_frame_points_and_drops_its_condition() -> None:
    torch.manual_seed(1)
    tr = ParallelFrameTransformer(_cfg(map_grid=(4,), cond_dropout=0.5))
    pts, pitch = _points()
    frames = torch.randn(3, tr.cfg.n_frames, D)
    tr.train()
    loss = (tr(pts, pitch, frames) - frames).pow(2).mean()
    loss.backward()
    assert tr.map_grid is not None and tr.map_grid.proj.weight.grad is not None
    tr.eval()
    fixed = tr.generate(pts, pitch)
    per_frame = tr.generate(pts[:, None, :].expand(-1, tr.cfg.n_frames, -1), pitch)
    assert torch.allclose(fixed, per_frame, atol=1e-5)
    head, _ = tr.generate_head(pts, pitch, 4, context_stride=2)
    assert head.shape == (3, 4, D)


@pytest.mark.parametrize("kw,match", [
    ({"map_grid": (0,)}, "map_grid"),
    ({"map_grid": (4,), "map_grid_features": 0}, "map_grid"),
    ({"map_grid": (4,), "map_grid_from_block": 99}, "map_grid_from_block"),
])
def test_bad_grid_configs_are_refused(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**kw)
    with pytest.raises(ConfigError, match="parallel"):
        TransformerConfig.tiny(D, map_grid=(4,))


def test_grid_model_file_round_trips(tmp_path: Path) -> None:
    from pgesam_live.model.checkpoints import build_transformer
    from pgesam_live.model.configs import config_to_dict

    torch.manual_seed(2)
    tr = ParallelFrameTransformer(_cfg(map_grid=(4, 8), map_grid_from_block=1)).eval()
    assert tr.map_grid is not None
    torch.nn.init.normal_(tr.map_grid.proj.weight)
    back = build_transformer(config_to_dict(tr.cfg), tr.state_dict(), tmp_path / "m.pt")
    assert back.cfg == tr.cfg and back.cfg.map_grid == (4, 8)
    pts, pitch = _points()
    assert torch.equal(back.generate(pts, pitch), tr.generate(pts, pitch))


def test_fill_unread_keeps_what_points_read_and_solves_laplace_between() -> None:
    g = MapGrid([4, 8], features=2, d=3)
    torch.nn.init.normal_(g.proj.weight)
    pts = torch.tensor([[-0.6, -0.6], [0.55, 0.3]])
    before = g(pts).detach()
    read = g.read_entries(pts)
    assert [int(m.sum()) for m in read] == [8, 8]  # 4 corners of each point's cell, per table
    kept = [t.detach().clone() for t in g.tables]
    changed = g.fill_unread(pts)
    assert changed == (25 - 8) + (81 - 8)
    # What the points read is untouched, so the decoder plays them exactly as before.
    assert torch.equal(g(pts).detach(), before)
    for t, k, m in zip(g.tables, kept, read, strict=True):
        assert torch.equal(t[m], k[m]) and not torch.equal(t[~m], k[~m])
    # Every filled entry is the mean of its lattice neighbours (discrete Laplace), so the
    # filled values stay within the read ones (maximum principle).
    for r, t, m in zip(g.sides, g.tables, read, strict=True):
        lat = t.detach().reshape(r + 1, r + 1, -1)
        mm = m.reshape(r + 1, r + 1)
        for i in range(r + 1):
            for j in range(r + 1):
                if mm[i, j]:
                    continue
                nb = [lat[a, b] for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                      if 0 <= a <= r and 0 <= b <= r]
                assert torch.allclose(lat[i, j], torch.stack(nb).mean(0), atol=1e-5)
        assert float(lat.max()) <= float(t.detach()[m].max()) + 1e-6
    # Read entries all equal: the whole table becomes that constant.
    h = MapGrid([4], features=1, d=1)
    with torch.no_grad():
        h.tables[0].fill_(0.25)
        h.tables[0][~h.read_entries(pts)[0]] = 9.0
    h.fill_unread(pts)
    assert torch.allclose(h.tables[0], torch.full_like(h.tables[0], 0.25))


def test_moving_a_decoder_to_another_map_keeps_each_points_condition() -> None:
    """remap.move_decoder_to_map: after the move, each new point gives the condition (point
    MLP, and with the grid's features) its old point gave; nothing but the point MLP and the
    grid changed; misuse is refused."""
    from pgesam_live.model.remap import _conditions, move_decoder_to_map

    torch.manual_seed(0)
    tr = ParallelFrameTransformer(_cfg(map_grid=(4, 8)))
    assert tr.map_grid is not None
    torch.nn.init.normal_(tr.map_grid.proj.weight, std=0.5)
    old = torch.rand(12, 2) * 1.6 - 0.8
    new = old.flip(0) * 0.5 + 0.1  # the same notes elsewhere, in another order
    with torch.no_grad():
        c_old, cg_old = _conditions(tr, old)
        before = _conditions(tr, new)[1]
    blocks = {k: v.clone() for k, v in tr.blocks.state_dict().items()}
    report = move_decoder_to_map(tr, old, new, steps=1500, batch=12)
    with torch.no_grad():
        c_new, cg_new = _conditions(tr, new)
    assert cg_old is not None and cg_new is not None and before is not None
    miss = float(((cg_new - cg_old) ** 2).mean())
    assert miss < 0.05 * float(((before - cg_old) ** 2).mean())
    assert report.points == 12 and report.grid_condition_error is not None
    assert report.grid_condition_error < 0.05 and report.filled_entries > 0
    assert all(torch.equal(v, blocks[k]) for k, v in tr.blocks.state_dict().items())
    assert all(p.requires_grad for p in tr.parameters())  # left trainable, as it was
    with pytest.raises(ConfigError, match="both be"):
        move_decoder_to_map(tr, old, new[:5])
    with pytest.raises(ConfigError, match="no points"):
        move_decoder_to_map(tr, old[:0], new[:0])
    with pytest.raises(ConfigError, match="parallel decoder"):
        move_decoder_to_map(torch.nn.Linear(2, 2), old, new)  # type: ignore[arg-type]
