"""Stage-1 VAE: shapes, every loss term on hand-made inputs, the detached pitch path, overfit."""

from __future__ import annotations

import math

import pytest
import torch

from pgesam_live.errors import ConfigError
from pgesam_live.model.vae import (
    LOSS_KEYS,
    TimbreVAE,
    VAEConfig,
    VAEOutput,
    count_params,
    loss_weights,
    vae_losses,
)

D = 12  # frame dim for tests


def _out(mu: torch.Tensor, *, b: int | None = None, n_frames: int = 16, n_pitches: int = 25,
         n_instruments: int = 4, recon: torch.Tensor | None = None,
         logvar: torch.Tensor | None = None) -> VAEOutput:
    """A VAEOutput built by hand: zero logits, zero recon unless given."""
    b = mu.shape[0] if b is None else b
    return VAEOutput(
        recon=torch.zeros(b, n_frames, D) if recon is None else recon,
        mu=mu, logvar=torch.zeros_like(mu) if logvar is None else logvar, z=mu,
        pitch_logits=torch.zeros(b, n_pitches), family_logits=torch.zeros(b, 11),
        instrument_logits=torch.zeros(b, n_instruments))


def _losses(out: VAEOutput, instrument: list[int], progress: float = 1.0,
            frames: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    cfg = VAEConfig.tiny(D, n_instruments=4)
    b = out.mu.shape[0]
    frames = torch.zeros(b, cfg.n_frames, D) if frames is None else frames
    return vae_losses(out, frames, torch.zeros(b, dtype=torch.long),
                      torch.zeros(b, dtype=torch.long), torch.tensor(instrument), progress, cfg)


def test_shapes_tiny_and_reads_first_frames() -> None:
    cfg = VAEConfig.tiny(D, n_instruments=5)
    vae = TimbreVAE(cfg).eval()
    frames = torch.randn(3, 40, D)  # longer than n_frames: the VAE reads the first 16
    out = vae(frames)
    assert out.recon.shape == (3, cfg.n_frames, D)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, 2)
    assert out.pitch_logits.shape == (3, 25)
    assert out.family_logits.shape == (3, 11)
    assert out.instrument_logits.shape == (3, 5)
    torch.testing.assert_close(out.z, out.mu)  # eval mode decodes the mean
    mu, logvar, pitch_logits = vae.encode(frames[:, : cfg.n_frames])
    torch.testing.assert_close(mu, out.mu)
    assert vae.decode(mu, torch.tensor([0, 3, 24])).shape == (3, cfg.n_frames, D)
    # Frames after n_frames do not matter.
    frames2 = frames.clone()
    frames2[:, cfg.n_frames:] = 7.0
    torch.testing.assert_close(vae(frames2).mu, out.mu)


def test_paper_and_small_sizes() -> None:
    paper = VAEConfig.paper(128, n_instruments=110)
    assert paper.conv_channels == (256, 512, 1024, 1024, 512) and paper.n_frames == 150
    vae = TimbreVAE(paper)
    assert vae.flat_dim == 2560  # 150 frames -> 5 after five stride-2 convs, x 512 channels
    assert 60e6 < count_params(vae) < 72e6  # the authors' ~66 M
    small = count_params(TimbreVAE(VAEConfig.small(98, n_instruments=110)))
    assert 2e5 < small < 2e6
    with pytest.raises(ConfigError, match="time_pool"):
        VAEConfig.tiny(D, 4, n_frames=15)


def test_bad_inputs_raise_config_error() -> None:
    vae = TimbreVAE(VAEConfig.tiny(D, n_instruments=4))
    with pytest.raises(ConfigError, match="frames"):
        vae(torch.zeros(2, 8, D))  # too short
    with pytest.raises(ConfigError, match="dim"):
        vae(torch.zeros(2, 16, D + 1))
    with pytest.raises(ConfigError, match="0..24"):
        vae.decode(torch.zeros(1, 2), torch.tensor([25]))


def test_neighbour_attraction_same_instrument() -> None:
    mu = torch.tensor([[0.0, 0.0], [0.3, 0.0]])
    losses = _losses(_out(mu), instrument=[1, 1])
    assert losses["neighbour"].item() == pytest.approx(0.09, abs=1e-6)


def test_neighbour_repulsion_different_instruments() -> None:
    mu = torch.tensor([[0.0, 0.0], [0.0, 0.1]])
    losses = _losses(_out(mu), instrument=[0, 2])
    assert losses["neighbour"].item() == pytest.approx(0.15 ** 2, abs=1e-6)  # 0.0225
    far = torch.tensor([[0.0, 0.0], [0.0, 0.4]])  # beyond the 0.25 margin: no push
    assert _losses(_out(far), instrument=[0, 2])["neighbour"].item() == pytest.approx(0.0)


def test_neighbour_mixed_batch_means_over_pairs() -> None:
    # Same-instrument pair (0,1) at d = 0.3 -> attraction 0.09. Different-instrument pairs:
    # (0,2) d = 0.2 -> 0.0025, (1,2) d = 0.1 -> 0.0225, (2,3) d = 0.3 and (0,3), (1,3) farther
    # -> 0; repulsion = (0.0025 + 0.0225) / 5 = 0.005.
    mu = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.2, 0.0], [0.2, 0.3]])
    losses = _losses(_out(mu), instrument=[1, 1, 2, 3])
    assert losses["neighbour"].item() == pytest.approx(0.09 + 0.005, abs=1e-6)


def test_disc_loss() -> None:
    mu = torch.tensor([[1.5, 0.0], [0.0, -0.5]])  # |mu| = 1.5 -> 0.5; inside -> 0
    assert _losses(_out(mu), instrument=[0, 1])["disc"].item() == pytest.approx(0.25)
    mu1 = torch.tensor([[0.9, 1.2]])  # |mu| = 1.5
    assert _losses(_out(mu1), instrument=[0])["disc"].item() == pytest.approx(0.5)


def test_kl() -> None:
    assert _losses(_out(torch.zeros(3, 2)), instrument=[0, 1, 2])["kl"].item() == 0.0
    # mu = (1, 0), logvar = 0: 0.5 * mu^2 = 0.5. logvar = (ln 2, ln 2), mu = 0:
    # 2 dims x 0.5 * (2 - 1 - ln 2).
    kl1 = _losses(_out(torch.tensor([[1.0, 0.0]])), instrument=[0])["kl"].item()
    assert kl1 == pytest.approx(0.5)
    lv = torch.full((1, 2), math.log(2.0))
    kl2 = _losses(_out(torch.zeros(1, 2), logvar=lv), instrument=[0])["kl"].item()
    assert kl2 == pytest.approx(1.0 - math.log(2.0), abs=1e-6)


def test_recon_and_cross_entropies() -> None:
    frames = torch.zeros(2, 16, D)
    recon = torch.full((2, 16, D), 0.5)
    losses = _losses(_out(torch.zeros(2, 2), recon=recon), instrument=[0, 1], frames=frames)
    assert losses["recon"].item() == pytest.approx(0.25)
    # Uniform (zero) logits: CE = ln(classes).
    assert losses["pitch"].item() == pytest.approx(math.log(25))
    assert losses["family"].item() == pytest.approx(math.log(11))
    assert losses["instrument"].item() == pytest.approx(math.log(4))


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_weights_schedule_and_total(p: float) -> None:
    cfg = VAEConfig.tiny(D, n_instruments=4)
    w = loss_weights(p, cfg)
    assert w["recon"] == 0.8 and w["disc"] == 0.1 and w["kl"] == 0.0039
    assert w["pitch"] == 0.12
    assert w["neighbour"] == pytest.approx(p ** 0.5)
    assert w["family"] == pytest.approx(0.07 * (1 - p ** 1.5))
    assert w["instrument"] == pytest.approx(0.007 * p ** 0.8)
    expected = {0.0: (0.0, 0.07, 0.0), 0.25: (0.5, 0.06125, 0.0023097),
                1.0: (1.0, 0.0, 0.007)}[p]
    assert (w["neighbour"], w["family"], w["instrument"]) == pytest.approx(expected, abs=1e-6)
    mu = torch.tensor([[1.5, 0.0], [1.5, 0.3]])
    losses = _losses(_out(mu), instrument=[1, 1], progress=p)
    total = sum(w[k] * losses[k].item() for k in LOSS_KEYS)
    assert set(losses) == {*LOSS_KEYS, "total"}
    assert losses["total"].item() == pytest.approx(total, rel=1e-5)


def test_pitch_one_hot_is_detached() -> None:
    """The reconstruction loss sends no gradient to the pitch head through the decoder."""
    torch.manual_seed(0)
    vae = TimbreVAE(VAEConfig.tiny(D, n_instruments=4)).train()
    frames = torch.randn(4, 16, D)
    out = vae(frames)
    torch.nn.functional.mse_loss(out.recon, frames).backward()
    assert vae.pitch_head.weight.grad is None or vae.pitch_head.weight.grad.abs().max() == 0
    assert vae.to_mu.weight.grad is not None and vae.to_mu.weight.grad.abs().max() > 0
    # ...while the pitch cross-entropy does reach it.
    vae.zero_grad()
    out = vae(frames)
    torch.nn.functional.cross_entropy(out.pitch_logits, torch.tensor([0, 1, 2, 3])).backward()
    assert vae.pitch_head.weight.grad is not None and vae.pitch_head.weight.grad.abs().max() > 0


def test_decoder_uses_pitch() -> None:
    vae = TimbreVAE(VAEConfig.tiny(D, n_instruments=4)).eval()
    z = torch.zeros(2, 2)
    a = vae.decode(z, torch.tensor([0, 0]))
    b = vae.decode(z, torch.tensor([0, 5]))
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs().max() > 1e-4


def test_overfit_tiny_set() -> None:
    """All seven losses on; reconstruction of 8 synthetic notes falls >= 10x."""
    torch.manual_seed(0)
    cfg = VAEConfig.tiny(D, n_instruments=4)
    t = torch.linspace(0, 1, cfg.n_frames)
    n = 8
    instrument = torch.arange(n) % 4
    pitch_idx = torch.arange(n) * 3
    family = instrument % 2
    # Each note: an instrument-specific spectrum shape times a pitch-dependent decay.
    shapes = torch.randn(4, D)
    decay = torch.exp(-t[None, :] * (1 + pitch_idx[:, None] / 8))  # [n, T]
    frames = decay[:, :, None] * shapes[instrument][:, None, :] + 0.3  # [n, T, D]
    vae = TimbreVAE(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    steps = 150
    first = None
    for step in range(steps):
        out = vae(frames)
        losses = vae_losses(out, frames, pitch_idx, family, instrument, step / steps, cfg)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        if first is None:
            first = losses["recon"].item()
    vae.eval()
    with torch.no_grad():
        out = vae(frames)
        final = vae_losses(out, frames, pitch_idx, family, instrument, 1.0, cfg)["recon"].item()
    assert first is not None
    assert final * 10 <= first, (first, final)
    assert (out.pitch_logits.argmax(1) == pitch_idx).float().mean() >= 0.75
