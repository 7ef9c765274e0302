"""Sample processing shared by every render path and the voice pool: a note's playing level,
re-pitching (a late or out-of-range note from a cached neighbour) and resampling to the
output rate. float32 in, float32 out."""

from __future__ import annotations

from fractions import Fraction
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from pgesam_live.errors import ConfigError

NOTE_PEAK = 0.5  # every rendered note is played at this peak (-6 dBFS), as the authors' demo


def normalise_peak(audio: np.ndarray, peak: float = NOTE_PEAK) -> np.ndarray:
    """Scale each note to `peak`: float32 [B, N] -> [B, N]. The model renders notes at the
    data set's recorded levels (peaks 0.02-0.26); a performer wants every point and pitch
    at a playing level, and velocity then shapes it. Silent rows stay silent."""
    a = np.asarray(audio, dtype=np.float32)
    peaks = np.abs(a).max(axis=-1, keepdims=True)
    return np.where(peaks > 1e-6, a * (peak / np.maximum(peaks, 1e-6)), a).astype(np.float32)


def repitch(audio: np.ndarray, semitones: float, max_denominator: int = 1000) -> np.ndarray:
    """Play a note `semitones` higher by resampling (higher is shorter), float32 [N] -> [M].

    The speed ratio 2**(semitones/12) is approximated by a fraction (denominator <= 1000:
    within 0.03 cent for whole semitones up to +-24; 64 would be off by up to 3.8 cents) and
    applied with a polyphase filter, so shifting up does not alias (about 2 ms for a 4 s note).
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ConfigError(f"repitch takes mono [N] audio, got shape {x.shape}: pass one channel")
    if semitones == 0:
        return x.copy()
    ratio = Fraction(2.0 ** (float(semitones) / 12.0)).limit_denominator(max_denominator)
    # ratio = speed: `down` input samples become `up` output samples.
    return resample_poly(x, ratio.denominator, ratio.numerator).astype(np.float32)


def resample(samples: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    """Polyphase resampling of a mono signal, float32 [N] -> float32 [M ~ N * to_sr / from_sr]."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ConfigError(f"resample takes mono [N] audio, got shape {x.shape}: pass one channel")
    if from_sr <= 0 or to_sr <= 0:
        raise ConfigError(f"sample rates must be positive, got {from_sr} -> {to_sr}")
    if from_sr == to_sr:
        return x.copy()
    g = gcd(int(from_sr), int(to_sr))
    return resample_poly(x, int(to_sr) // g, int(from_sr) // g).astype(np.float32)
