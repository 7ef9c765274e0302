"""Codecs: waveform <-> sequences of continuous, normalised frames.

One interface, two codecs:
- `harmonic`: weight-free harmonic-plus-noise analysis/synthesis (f0 lives in the frames).
- `encodec`: EnCodec 24 kHz's quantized continuous latent at 24 kbps (the authors' frames).

Shapes: wave [B, N] float32 at `sample_rate`; frames [B, T, D] float32, normalised.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from pgesam_live.errors import CodecError


class Codec(ABC):
    """Waveform <-> normalised frames. Subclasses set the four class attributes."""

    name: str
    sample_rate: int
    frame_rate_hz: float
    dim: int

    @abstractmethod
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [B, N] -> frames [B, T, D], normalised."""

    @abstractmethod
    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, D] -> wave [B, N]."""

    def to(self, device: torch.device | str) -> Codec:
        """Move any weights to `device`; weight-free codecs keep no state."""
        return self

    def frames_for(self, duration_s: float) -> int:
        """Number of frames in `duration_s` seconds of audio."""
        return int(round(duration_s * self.frame_rate_hz))


CODEC_NAMES = ("harmonic", "encodec")


def get_codec(name: str, **kwargs: object) -> Codec:
    """Build a codec by name (`harmonic` or `encodec`)."""
    raise CodecError(f"unknown codec {name!r}: choose one of {', '.join(CODEC_NAMES)}")
