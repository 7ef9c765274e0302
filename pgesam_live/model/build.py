"""Fresh networks of a named config: the one place that turns (config name, codec dim, pitch
range, decoder) into the VAE and Transformer configs and modules. Training and
`Synth.untrained` both build through it (no import circle between them)."""

from __future__ import annotations

from pgesam_live.errors import ConfigError
from pgesam_live.model.parallel import Decoder, make_transformer
from pgesam_live.model.transformer import TransformerConfig
from pgesam_live.model.vae import TimbreVAE, VAEConfig

CONFIG_NAMES = ("tiny", "small", "paper")


DEFAULT_DECODER = "autoregressive"


def make_configs(config: str, frame_dim: int, n_instruments: int,
                 pitch_range: tuple[int, int], decoder: str = DEFAULT_DECODER
                 ) -> tuple[VAEConfig, TransformerConfig]:
    """The named config's VAE and Transformer configs for this codec and pitch range."""
    if config not in CONFIG_NAMES:
        raise ConfigError(f"unknown config {config!r}: choose {', '.join(CONFIG_NAMES)}")
    lo, hi = pitch_range
    vae_cfg = getattr(VAEConfig, config)(frame_dim, max(1, n_instruments), n_pitches=hi - lo + 1)
    tr_cfg = getattr(TransformerConfig, config)(frame_dim, pitch_min=lo, pitch_max=hi,
                                                decoder=decoder)
    if vae_cfg.n_frames > tr_cfg.n_frames:
        raise ConfigError(f"config {config}: the VAE reads {vae_cfg.n_frames} frames but the "
                          f"Transformer models only {tr_cfg.n_frames}")
    return vae_cfg, tr_cfg


def build_models(config: str, frame_dim: int, n_instruments: int,
                 pitch_range: tuple[int, int], decoder: str = DEFAULT_DECODER
                 ) -> tuple[TimbreVAE, Decoder]:
    """Fresh (randomly initialised, eval-mode) networks of a named config."""
    vae_cfg, tr_cfg = make_configs(config, frame_dim, n_instruments, pitch_range, decoder)
    return TimbreVAE(vae_cfg).eval(), make_transformer(tr_cfg).eval()


__all__ = ["CONFIG_NAMES", "DEFAULT_DECODER", "build_models", "make_configs"]
