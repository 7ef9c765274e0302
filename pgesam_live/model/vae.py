"""Stage 1: the timbre VAE. Codec frames -> a 2-D point z (the timbre map) -> frames.

Pitch is kept out of z: a pitch classifier sits on the encoder trunk, and its arg-max one-hot,
detached, joins z at the decoder, so the decoder gets pitch for free and z only has to carry
timbre. A family classifier and an instrument classifier read the latent *mean*; together
with the neighbour and unit-disc losses they arrange the map (one spot per instrument,
instruments apart, families grouped, everything inside the unit disc).

Shapes: frames [B, T, D] (T >= cfg.n_frames; the VAE reads the first cfg.n_frames), z [B, 2],
pitch_idx [B] = MIDI pitch - pitch_min (0 .. n_pitches-1).

Configs: `VAEConfig.paper` (the authors' sizes, ~66 M params with EnCodec frames),
`VAEConfig.small` (about 1 M params, trains on a 2-core CPU), `VAEConfig.tiny` (tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pgesam_live.errors import ConfigError
from pgesam_live.model.configs import config_from_dict

N_FAMILIES = 11  # NSynth's instrument families

LOSS_KEYS = ("recon", "neighbour", "disc", "kl", "pitch", "family", "instrument")


@dataclass(frozen=True)
class VAEConfig:
    """Every size and loss weight of the timbre VAE. Frozen: build a new one to change it."""

    frame_dim: int
    n_instruments: int
    n_pitches: int = 25
    n_families: int = N_FAMILIES
    n_frames: int = 150  # frames the VAE reads (the authors: the first 2 s of EnCodec frames)
    # Average-pool this many frames into one before the encoder; the decoder output is
    # interpolated back to n_frames. 1 = off (the authors). Shortens the conv stack's input,
    # which is most of what makes a small model learn fast on a CPU.
    time_pool: int = 1
    conv_channels: tuple[int, ...] = (256, 512, 1024, 1024, 512)  # strided Conv1d outputs
    kernel_size: int = 5
    mlp_dims: tuple[int, ...] = (4096, 2048, 1024, 512)  # after the flatten; last = trunk
    latent_dim: int = 2
    classifier_hidden: int = 64  # family / instrument MLPs on the latent mean
    dropout: float = 0.1
    leaky_slope: float = 0.2
    # Loss weights and schedules (p = training progress in [0, 1]).
    w_recon: float = 0.8
    w_neighbour: float = 1.0
    neighbour_power: float = 0.5  # weight w_neighbour * p ** neighbour_power
    neighbour_margin: float = 0.25  # different instruments closer than this are pushed apart
    w_disc: float = 0.1
    w_kl: float = 0.0039
    w_pitch: float = 0.12
    w_family: float = 0.07
    family_power: float = 1.5  # weight w_family * (1 - p ** family_power)
    w_instrument: float = 0.007
    instrument_power: float = 0.8  # weight w_instrument * p ** instrument_power

    def __post_init__(self) -> None:
        for name in ("frame_dim", "n_instruments", "n_pitches", "n_families", "n_frames",
                     "time_pool", "kernel_size", "latent_dim", "classifier_hidden"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"VAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_frames % self.time_pool:
            raise ConfigError(
                f"VAEConfig.n_frames ({self.n_frames}) must be a multiple of time_pool "
                f"({self.time_pool})")
        if not self.conv_channels or not self.mlp_dims:
            raise ConfigError("VAEConfig needs at least one conv channel and one MLP size")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"VAEConfig.kernel_size must be odd, got {self.kernel_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"VAEConfig.dropout must be in [0, 1), got {self.dropout}")

    # -- named constructors ----------------------------------------------------------------
    @classmethod
    def paper(cls, frame_dim: int, n_instruments: int, n_pitches: int = 25,
              **overrides: Any) -> VAEConfig:
        """The authors' final run: 5 strided convs, MLP 2560-4096-2048-1024-512, 150 frames."""
        return cls(frame_dim=frame_dim, n_instruments=n_instruments, n_pitches=n_pitches,
                   **overrides)

    @classmethod
    def small(cls, frame_dim: int, n_instruments: int, n_pitches: int = 25,
              **overrides: Any) -> VAEConfig:
        """About 1 M params for a 2-core CPU: 96 frames (1.28 s) pooled 4x to 24 steps."""
        base: dict[str, Any] = dict(
            n_frames=96, time_pool=4, conv_channels=(64, 128, 128), mlp_dims=(512, 256),
            classifier_hidden=64, dropout=0.05)
        base.update(overrides)
        return cls(frame_dim=frame_dim, n_instruments=n_instruments, n_pitches=n_pitches,
                   **base)

    @classmethod
    def tiny(cls, frame_dim: int, n_instruments: int, n_pitches: int = 25,
             **overrides: Any) -> VAEConfig:
        """A few thousand params for tests."""
        base: dict[str, Any] = dict(
            n_frames=16, time_pool=2, conv_channels=(16, 16), mlp_dims=(32,),
            classifier_hidden=16, dropout=0.0)
        base.update(overrides)
        return cls(frame_dim=frame_dim, n_instruments=n_instruments, n_pitches=n_pitches,
                   **base)

    # -- (de)serialisation for checkpoints ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        """Inverse of to_dict (JSON turns tuples into lists; unknown keys are an error)."""

        return config_from_dict(cls, d)  # type: ignore[no-any-return]


class VAEOutput(NamedTuple):
    recon: torch.Tensor  # [B, n_frames, D]
    mu: torch.Tensor  # [B, 2]
    logvar: torch.Tensor  # [B, 2]
    z: torch.Tensor  # [B, 2] (sampled in training, = mu in eval)
    pitch_logits: torch.Tensor  # [B, n_pitches]
    family_logits: torch.Tensor  # [B, n_families]
    instrument_logits: torch.Tensor  # [B, n_instruments]


def _conv_lengths(cfg: VAEConfig) -> list[int]:
    """Time lengths through the strided conv stack: [L0, L1, ..., Ln] (L0 = pooled input)."""
    lengths = [cfg.n_frames // cfg.time_pool]
    for _ in cfg.conv_channels:
        lengths.append((lengths[-1] - 1) // 2 + 1)  # stride 2, padding k//2, odd k
    return lengths


class _ChannelNorm(nn.Module):
    """LayerNorm over channels of a [B, C, L] tensor (per time step)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def _mlp_block(d_in: int, d_out: int, cfg: VAEConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out),
                         nn.LeakyReLU(cfg.leaky_slope), nn.Dropout(cfg.dropout))


def _classifier(d_in: int, n_out: int, cfg: VAEConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, cfg.classifier_hidden), nn.LeakyReLU(cfg.leaky_slope),
                         nn.Linear(cfg.classifier_hidden, cfg.classifier_hidden),
                         nn.LeakyReLU(cfg.leaky_slope),
                         nn.Linear(cfg.classifier_hidden, n_out))


class TimbreVAE(nn.Module):
    """The stage-1 VAE. See the module docstring for the idea and the shapes."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, pad = cfg.kernel_size, cfg.kernel_size // 2
        lengths = _conv_lengths(cfg)
        self._lengths = lengths
        flat = cfg.conv_channels[-1] * lengths[-1]
        self.flat_dim = flat

        # Encoder: strided convs, flatten, MLP trunk, then mean/logvar and pitch heads.
        convs: list[nn.Module] = []
        c_in = cfg.frame_dim
        for c_out in cfg.conv_channels:
            convs += [nn.Conv1d(c_in, c_out, k, stride=2, padding=pad), _ChannelNorm(c_out),
                      nn.LeakyReLU(cfg.leaky_slope), nn.Dropout(cfg.dropout)]
            c_in = c_out
        self.enc_conv = nn.Sequential(*convs)
        mlp: list[nn.Module] = []
        d_in = flat
        for d_out in cfg.mlp_dims:
            mlp.append(_mlp_block(d_in, d_out, cfg))
            d_in = d_out
        self.enc_mlp = nn.Sequential(*mlp)
        trunk = cfg.mlp_dims[-1]
        self.to_mu = nn.Linear(trunk, cfg.latent_dim)
        self.to_logvar = nn.Linear(trunk, cfg.latent_dim)
        self.pitch_head = nn.Linear(trunk, cfg.n_pitches)

        # Classifiers on the latent mean (they shape the map, they are not used to decode).
        self.family_head = _classifier(cfg.latent_dim, cfg.n_families, cfg)
        self.instrument_head = _classifier(cfg.latent_dim, cfg.n_instruments, cfg)

        # Decoder mirrors the encoder from [z, pitch one-hot].
        dmlp: list[nn.Module] = []
        d_in = cfg.latent_dim + cfg.n_pitches
        for d_out in (*reversed(cfg.mlp_dims), flat):
            dmlp.append(_mlp_block(d_in, d_out, cfg))
            d_in = d_out
        self.dec_mlp = nn.Sequential(*dmlp)
        dconvs: list[nn.Module] = []
        chans = list(reversed(cfg.conv_channels))
        outs = chans[1:] + [cfg.frame_dim]
        n_conv = len(chans)
        for i, (c_in, c_out) in enumerate(zip(chans, outs, strict=True)):
            l_in, l_target = lengths[n_conv - i], lengths[n_conv - i - 1]
            # ConvTranspose1d(k, s=2, p=k//2) gives 2*l_in - 1 + output_padding.
            out_pad = l_target - (2 * l_in - 1)
            dconvs.append(nn.ConvTranspose1d(c_in, c_out, k, stride=2, padding=pad,
                                             output_padding=out_pad))
            if i < n_conv - 1:  # the last layer is linear: frames are real-valued
                dconvs += [_ChannelNorm(c_out), nn.LeakyReLU(cfg.leaky_slope),
                           nn.Dropout(cfg.dropout)]
        self.dec_conv = nn.Sequential(*dconvs)

    # -- pieces ------------------------------------------------------------------------------
    def _check_frames(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if frames.dim() != 3 or frames.shape[2] != cfg.frame_dim:
            raise ConfigError(
                f"VAE expects frames [B, T, {cfg.frame_dim}], got {list(frames.shape)}: "
                "use a codec whose dim matches the VAE config")
        if frames.shape[1] < cfg.n_frames:
            raise ConfigError(
                f"VAE reads {cfg.n_frames} frames but got {frames.shape[1]}: pass longer notes "
                "or build the config with a smaller n_frames")
        return frames[:, : cfg.n_frames]

    def encode(self, frames: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """frames [B, T>=n_frames, D] -> (mu [B, 2], logvar [B, 2], pitch_logits [B, P])."""
        x = self._check_frames(frames).transpose(1, 2)  # [B, D, n_frames]
        if self.cfg.time_pool > 1:
            x = F.avg_pool1d(x, self.cfg.time_pool)  # [B, D, n_frames / pool]
        h = self.enc_conv(x).flatten(1)  # [B, C_last * L_last]
        h = self.enc_mlp(h)  # [B, trunk]
        return self.to_mu(h), self.to_logvar(h), self.pitch_head(h)

    def decode(self, z: torch.Tensor, pitch_idx: torch.Tensor) -> torch.Tensor:
        """z [B, 2], pitch_idx [B] (0 .. n_pitches-1) -> frames [B, n_frames, D]."""
        cfg = self.cfg
        if pitch_idx.numel() and (int(pitch_idx.min()) < 0
                                  or int(pitch_idx.max()) >= cfg.n_pitches):
            raise ConfigError(
                f"pitch_idx must be in 0..{cfg.n_pitches - 1} (MIDI pitch - pitch_min), got "
                f"{int(pitch_idx.min())}..{int(pitch_idx.max())}")
        onehot = F.one_hot(pitch_idx.long(), cfg.n_pitches).to(z.dtype)
        return self._decode_onehot(z, onehot)

    def _decode_onehot(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        h = self.dec_mlp(torch.cat([z, onehot], dim=1))  # [B, flat]
        h = h.view(h.shape[0], cfg.conv_channels[-1], self._lengths[-1])
        x = self.dec_conv(h)  # [B, D, n_frames / pool]
        if cfg.time_pool > 1:
            x = F.interpolate(x, size=cfg.n_frames, mode="linear", align_corners=False)
        return x.transpose(1, 2)  # [B, n_frames, D]

    def forward(self, frames: torch.Tensor) -> VAEOutput:
        """frames [B, T>=n_frames, D] -> VAEOutput. z is sampled in train mode, mu in eval."""
        mu, logvar, pitch_logits = self.encode(frames)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        # Detached arg-max: the decoder's pitch input carries no gradient back to the pitch
        # head, so the pitch head is trained by its own cross-entropy only.
        onehot = F.one_hot(pitch_logits.detach().argmax(dim=1), self.cfg.n_pitches).to(z.dtype)
        recon = self._decode_onehot(z, onehot)
        return VAEOutput(recon=recon, mu=mu, logvar=logvar, z=z, pitch_logits=pitch_logits,
                         family_logits=self.family_head(mu),
                         instrument_logits=self.instrument_head(mu))


# -- losses ----------------------------------------------------------------------------------
def loss_weights(progress: float, cfg: VAEConfig) -> dict[str, float]:
    """The weight of each loss term at training progress p (clamped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    return {
        "recon": cfg.w_recon,
        "neighbour": cfg.w_neighbour * p ** cfg.neighbour_power,
        "disc": cfg.w_disc,
        "kl": cfg.w_kl,
        "pitch": cfg.w_pitch,
        "family": cfg.w_family * (1.0 - p ** cfg.family_power),
        "instrument": cfg.w_instrument * p ** cfg.instrument_power,
    }


def neighbour_terms(mu: torch.Tensor, instrument: torch.Tensor, margin: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(attraction, repulsion) over all pairs i < j of a batch of means mu [B, 2].

    attraction = mean squared distance over same-instrument pairs; repulsion = mean of
    max(0, margin - d)^2 over different-instrument pairs. A term with no pairs is 0.
    """
    b = mu.shape[0]
    diff = mu.unsqueeze(1) - mu.unsqueeze(0)  # [B, B, 2]
    d2 = (diff * diff).sum(-1)  # [B, B]
    # Clamp before sqrt: identical points would otherwise give a NaN gradient.
    dist = torch.sqrt(d2.clamp_min(1e-12))
    upper = torch.triu(torch.ones(b, b, dtype=torch.bool, device=mu.device), diagonal=1)
    same = (instrument.unsqueeze(1) == instrument.unsqueeze(0)) & upper
    other = (~(instrument.unsqueeze(1) == instrument.unsqueeze(0))) & upper
    zero = mu.sum() * 0.0  # keeps the graph and dtype when a term has no pairs
    attraction = d2[same].mean() if bool(same.any()) else zero
    repulsion = (F.relu(margin - dist[other]) ** 2).mean() if bool(other.any()) else zero
    return attraction, repulsion


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)), summed over latent dims, mean over the batch."""
    return (-0.5 * (1.0 + logvar - mu * mu - logvar.exp()).sum(dim=1)).mean()


def disc_loss(mu: torch.Tensor) -> torch.Tensor:
    """mean(max(|mu| - 1, 0)): keeps the map inside the unit disc. mu [B, 2] -> scalar."""
    return F.relu(torch.linalg.vector_norm(mu, dim=1) - 1.0).mean()


def vae_losses(out: VAEOutput, frames: torch.Tensor, pitch_idx: torch.Tensor,
               family: torch.Tensor, instrument: torch.Tensor, progress: float,
               cfg: VAEConfig) -> dict[str, torch.Tensor]:
    """All seven terms (unweighted, scalars) and `total` = their weighted sum.

    frames [B, T>=n_frames, D]; pitch_idx, family, instrument [B] int class indices;
    progress p in [0, 1] sets the schedules (see `loss_weights`).
    """
    target = frames[:, : cfg.n_frames]
    attraction, repulsion = neighbour_terms(out.mu, instrument, cfg.neighbour_margin)
    terms = {
        "recon": F.mse_loss(out.recon, target),
        "neighbour": attraction + repulsion,
        "disc": disc_loss(out.mu),
        "kl": kl_divergence(out.mu, out.logvar),
        "pitch": F.cross_entropy(out.pitch_logits, pitch_idx.long()),
        "family": F.cross_entropy(out.family_logits, family.long()),
        "instrument": F.cross_entropy(out.instrument_logits, instrument.long()),
    }
    weights = loss_weights(progress, cfg)
    total = sum((weights[k] * terms[k] for k in LOSS_KEYS), start=out.mu.new_zeros(()))
    terms["total"] = total
    return terms


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["LOSS_KEYS", "N_FAMILIES", "TimbreVAE", "VAEConfig", "VAEOutput", "count_params",
           "disc_loss", "kl_divergence", "loss_weights", "neighbour_terms", "vae_losses"]
