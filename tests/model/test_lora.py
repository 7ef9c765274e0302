"""Low-rank fine-tuning: the deltas start at zero, train only what they should, stay rank r,
survive a resume, and pack into float16 factors."""

from __future__ import annotations

import torch

from pgesam_live.model import lora
from pgesam_live.model.train import build_models


def _tiny_transformer() -> torch.nn.Module:
    torch.manual_seed(0)
    _, tr = build_models("tiny", 98, 1, (48, 51))
    return tr.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(3, 2, generator=g) - 0.5, torch.tensor([48, 50, 51]),
            torch.rand(3, 24, 98, generator=g))


def test_attach_starts_from_the_model_and_trains_only_deltas_and_small_tensors() -> None:
    tr = _tiny_transformer()
    pts, pitches, x = _inputs()
    before = tr(pts, pitches, x).detach()
    big = {f"{n}.weight" for n, _ in lora.lora_targets(tr)}
    assert "decoder.0.ff.fc1.weight" in big and "x_embed.weight" not in big
    params = lora.attach(tr, rank=2)
    assert torch.equal(tr(pts, pitches, x).detach(), before)  # A starts at zero
    frozen = {id(m.parametrizations["weight"].original) for _, m in lora.lora_targets(tr)}
    assert all(id(p) not in frozen for p in params)
    assert all(not m.parametrizations["weight"].original.requires_grad
               for _, m in lora.lora_targets(tr))
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        ((tr(pts, pitches, x) - x) ** 2).mean().backward()
        opt.step()
    assert not torch.allclose(tr(pts, pitches, x), before)
    start = _tiny_transformer().state_dict()
    merged = lora.merged_state(tr)
    assert set(merged) == set(start)  # the usual names
    for key in big:
        delta = (merged[key] - start[key]).double()
        s = torch.linalg.svdvals(delta)
        assert float(s[0]) > 0 and float(s[2:].max()) < 1e-3 * float(s[0]), key  # rank 2
    assert any(not torch.equal(merged[k], start[k]) for k in start if k not in big)


def test_factors_restore_a_run_and_merge_folds_them_in() -> None:
    tr = _tiny_transformer()
    params = lora.attach(tr, rank=3, seed=4)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    pts, pitches, x = _inputs()
    out = tr(pts, pitches, x).detach()
    factors, merged = lora.factors_of(tr), lora.merged_state(tr)
    again = _tiny_transformer()
    again.load_state_dict(merged)
    lora.attach(again, rank=3, factors=factors)
    assert torch.allclose(again(pts, pitches, x), out, atol=1e-5)
    assert all(torch.allclose(a, b) for a, b in
               zip(lora.factors_of(again)["decoder.1.ff.fc2"], factors["decoder.1.ff.fc2"],
                   strict=True))
    lora.merge(again)
    assert lora.factors_of(again) == {}
    assert torch.allclose(again(pts, pitches, x), out, atol=1e-5)
    assert set(again.state_dict()) == set(merged)
