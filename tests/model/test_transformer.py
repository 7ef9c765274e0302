"""Stage-2 frame Transformer: shapes, KV cache == recompute, causality, pitch range, overfit."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pgesam_live.errors import ConfigError
from pgesam_live.model.transformer import FrameTransformer, TransformerConfig, count_params

D = 10


def _model(seed: int = 0, **overrides: Any) -> FrameTransformer:
    torch.manual_seed(seed)
    model = FrameTransformer(TransformerConfig.tiny(D, **overrides))
    if model.out_bias is not None:  # zero at init; make it matter in the tests
        torch.nn.init.normal_(model.out_bias.weight, std=0.5)
    return model.eval()


def _batch(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    points = torch.tensor([[0.1, -0.4], [-0.9, 0.7], [0.5, 0.5], [0.0, 0.0]])[:b]
    pitches = torch.tensor([48, 60, 72, 55])[:b]
    return points, pitches


@pytest.mark.parametrize("g", [1, 3])
def test_shapes(g: int) -> None:
    model = _model(frames_per_step=g)
    points, pitches = _batch()
    frames = torch.randn(3, 22, D)  # 22 is not a multiple of 3: the tail group is padded
    assert model(points, pitches, frames).shape == (3, 22, D)
    assert model.generate(points, pitches).shape == (3, 24, D)  # cfg.n_frames
    assert model.generate(points, pitches, n_frames=7).shape == (3, 7, D)
    assert model.generate(points, pitches, n_frames=7, use_cache=False).shape == (3, 7, D)


def test_paper_and_small_sizes() -> None:
    paper = TransformerConfig.paper(128)
    assert (paper.d_model, paper.n_heads, paper.n_enc_layers, paper.n_dec_layers,
            paper.d_ff, paper.n_frames) == (512, 8, 8, 12, 4096, 300)
    assert (paper.pitch_min, paper.pitch_max, paper.n_pitches) == (48, 72, 25)
    assert 110e6 < count_params(FrameTransformer(paper)) < 125e6  # the authors' ~118 M
    small = TransformerConfig.small(98)
    assert small.n_frames == 300 and small.dropout == 0.0
    assert count_params(FrameTransformer(small)) < 10e6
    with pytest.raises(ConfigError, match="n_heads"):
        TransformerConfig.tiny(D, d_model=30, n_heads=4)
    assert TransformerConfig.from_dict(small.to_dict()) == small


@pytest.mark.parametrize("overrides", [
    dict(frames_per_step=1),
    dict(frames_per_step=3),
    dict(frames_per_step=2, pre_ln=False, activation="relu", pitch_bias=False),
])
def test_kv_cache_equals_recompute(overrides: dict[str, Any]) -> None:
    model = _model(**overrides)
    points, pitches = _batch(4)
    cached = model.generate(points, pitches, use_cache=True)
    naive = model.generate(points, pitches, use_cache=False)
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, naive, atol=1e-4, rtol=0)
    # The batch is not mixed up: each row equals its own single-note generation.
    one = model.generate(points[2:3], pitches[2:3])
    torch.testing.assert_close(one[0], cached[2], atol=1e-4, rtol=0)
    # ...and free-running generation is what teacher forcing on its own output predicts.
    torch.testing.assert_close(model(points, pitches, cached), cached, atol=1e-4, rtol=0)


def test_kv_cache_equals_recompute_small_config() -> None:
    """The real width (d 256, 4 decoder layers) on a short note, for accumulated rounding."""
    torch.manual_seed(1)
    model = FrameTransformer(TransformerConfig.small(D)).eval()
    points, pitches = _batch(2)
    cached = model.generate(points, pitches, n_frames=30)
    naive = model.generate(points, pitches, n_frames=30, use_cache=False)
    torch.testing.assert_close(cached, naive, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides", [
    dict(frames_per_step=1),  # pre-LN, gelu, pitch bias
    dict(frames_per_step=3, pre_ln=False, activation="relu", pitch_bias=False),
])
def test_kv_cache_is_exact_algebra_in_float64(overrides: dict[str, Any]) -> None:
    """The cached step packs the weights (transposed, head-major QKV, query scale, biases
    folded into extra rows and into the cross-attention values): in float64 it must agree
    with recompute far below float32 rounding, so a wrong fold cannot hide in the 1e-4."""
    model = _model(**overrides).double()
    points, pitches = _batch(3)
    for n in (24, 7):  # 7: not a multiple of frames_per_step 3
        cached = model.generate(points.double(), pitches, n_frames=n)
        naive = model.generate(points.double(), pitches, n_frames=n, use_cache=False)
        assert cached.dtype == torch.float64 and cached.shape == (3, n, D)
        torch.testing.assert_close(cached, naive, atol=1e-10, rtol=0)


def test_kv_cache_follows_weight_changes_and_leaves_weights_alone() -> None:
    """Packing happens per call from the live parameters: new weights (a loaded checkpoint,
    an optimiser step) are used at once, and generation never writes to the parameters."""
    model = _model(seed=0)
    points, pitches = _batch(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = model.generate(points, pitches, n_frames=8)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.load_state_dict(_model(seed=1).state_dict())
    second = model.generate(points, pitches, n_frames=8)
    assert (second - first).abs().max() > 1e-3
    torch.testing.assert_close(
        second, model.generate(points, pitches, n_frames=8, use_cache=False), atol=1e-4, rtol=0)
    with torch.no_grad():  # an in-place update, as an optimiser makes
        model.in_proj.weight.mul_(1.5)
    third = model.generate(points, pitches, n_frames=8)
    assert (third - second).abs().max() > 1e-3
    torch.testing.assert_close(
        third, model.generate(points, pitches, n_frames=8, use_cache=False), atol=1e-4, rtol=0)


@pytest.mark.parametrize("g", [1, 3])
def test_causality(g: int) -> None:
    model = _model(frames_per_step=g)
    points, pitches = _batch(2)
    frames = torch.randn(2, 24, D)
    t = 10
    changed = frames.clone()
    changed[:, t] += 3.0
    a, b = model(points, pitches, frames), model(points, pitches, changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])  # nothing at or before t moves
    next_group = (t // g + 1) * g
    assert (a[:, next_group:] - b[:, next_group:]).abs().max() > 1e-3  # later ones do


def test_pitch_range_errors() -> None:
    model = _model()
    points, _ = _batch(2)
    for bad in (47, 73):
        with pytest.raises(ConfigError, match="48..72"):
            model.generate(points, torch.tensor([60, bad]))
        with pytest.raises(ConfigError, match="48..72"):
            model(points, torch.tensor([bad, 60]), torch.zeros(2, 4, D))
    narrow = _model(pitch_min=60, pitch_max=64)
    with pytest.raises(ConfigError, match="60..64"):
        narrow.generate(points, torch.tensor([59, 60]))
    with pytest.raises(ConfigError, match="n_frames"):
        model.generate(points, torch.tensor([60, 61]), n_frames=25)


def test_noise_seed_and_mode() -> None:
    model = _model(dropout=0.5)
    model.train()
    points, pitches = _batch(2)
    a = model.generate(points, pitches, n_frames=6)
    assert model.training  # the mode is restored
    torch.testing.assert_close(a, model.generate(points, pitches, n_frames=6))  # no dropout
    s1 = model.generate(points, pitches, n_frames=6, noise_seed=1)
    torch.testing.assert_close(s1, model.generate(points, pitches, n_frames=6, noise_seed=1))
    s2 = model.generate(points, pitches, n_frames=6, noise_seed=2)
    assert (s1 - s2).abs().max() > 0 and (s1 - a).abs().max() > 0


def test_overfit_two_sequences_free_running() -> None:
    """Trained with teacher forcing, the model then reproduces both notes by generate()."""
    torch.manual_seed(0)
    cfg = TransformerConfig.tiny(D, n_frames=16, d_model=48, frames_per_step=2)
    model = FrameTransformer(cfg)
    t = torch.linspace(0, 1, cfg.n_frames)[None, :, None]  # [1, T, 1]
    k = torch.arange(D)[None, None, :].float()
    frames = torch.cat([
        0.5 * torch.sin(3.0 * t + 0.3 * k) * torch.exp(-2 * t),  # a decaying note
        0.3 * torch.cos(6.0 * t * (1 + 0.1 * k)) + 0.2,  # a wobbling one
    ])  # [2, 16, D]
    points = torch.tensor([[0.5, -0.5], [-0.5, 0.5]])
    pitches = torch.tensor([50, 67])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(250):
        loss = torch.nn.functional.mse_loss(model(points, pitches, frames), frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
    generated = model.generate(points, pitches)
    mse = torch.nn.functional.mse_loss(generated, frames).item()
    baseline = frames.var().item()  # what predicting the mean frame would cost
    assert mse < 0.02 * baseline, (mse, baseline)
    # The two notes are told apart by their conditioning (swapped points give the other note).
    swapped = model.generate(points.flip(0), pitches.flip(0))
    assert torch.nn.functional.mse_loss(swapped, frames.flip(0)).item() < 0.02 * baseline
