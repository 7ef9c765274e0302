"""Audio metrics against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pgesam_live.errors import CodecError
from pgesam_live.model.metrics import (
    cents,
    half_peak_time_s,
    mrstft_distance,
    track_pitch,
    track_pitch_pesto,
)

SR = 24000


def harmonic_tone(f0_hz: float, duration_s: float = 1.0, sr: int = SR,
                  n_partials: int = 10) -> np.ndarray:
    t = np.arange(int(duration_s * sr)) / sr
    x = np.zeros_like(t)
    for k in range(1, n_partials + 1):
        if k * f0_hz < sr / 2:
            x += np.sin(2 * np.pi * k * f0_hz * t) / k
    return (0.3 * x).astype(np.float32)


def test_mrstft_identical_is_zero_and_gain_invariant() -> None:
    rng = np.random.default_rng(0)
    x = harmonic_tone(220.0) + 0.01 * rng.standard_normal(SR).astype(np.float32)
    y = harmonic_tone(230.0)
    assert mrstft_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    d = mrstft_distance(x, y)
    assert d > 0.3  # a different pitch is far
    # The reference is scaled to peak 0.9 and the estimate by the same gain: a common gain
    # changes nothing.
    assert mrstft_distance(7.0 * x, 7.0 * y) == pytest.approx(d, rel=1e-5)
    # Torch input gives the same figure as numpy.
    assert mrstft_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(d)


def test_mrstft_level_error_on_noise_is_ln2() -> None:
    # White noise puts every bin far above the 1e-5 floor, so halving the estimate costs
    # |ln(0.5)| in every bin (the zero-padded edge frames pull it down a little).
    rng = np.random.default_rng(1)
    x = rng.standard_normal(2 * SR)
    assert mrstft_distance(x, 0.5 * x) == pytest.approx(math.log(2.0), rel=0.02)


def test_mrstft_rejects_silent_reference() -> None:
    with pytest.raises(CodecError, match="silent"):
        mrstft_distance(np.zeros(SR), np.ones(SR))


def test_cents() -> None:
    assert cents(880.0, 440.0) == pytest.approx(1200.0)
    assert cents(440.0, 880.0) == pytest.approx(-1200.0)
    assert cents(440.0 * 2 ** (5 / 1200), 440.0) == pytest.approx(5.0)
    with pytest.raises(CodecError):
        cents(0.0, 440.0)


@pytest.mark.parametrize("f0_hz", [41.2, 65.4, 110.3, 261.63, 440.0, 1046.5, 1760.0])
def test_track_pitch_known_tones(f0_hz: float) -> None:
    x = harmonic_tone(f0_hz)
    est = track_pitch(x, SR, 30.0, 2000.0)
    assert abs(cents(est, f0_hz)) < 3.0  # YIN's normalisation leaves ~2 cents at 41 Hz


def test_track_pitch_resolves_five_cents() -> None:
    a = track_pitch(harmonic_tone(329.63), SR, 30.0, 2000.0)
    b = track_pitch(harmonic_tone(329.63 * 2 ** (5 / 1200)), SR, 30.0, 2000.0)
    assert cents(b, a) == pytest.approx(5.0, abs=1.0)


def test_track_pitch_ignores_quiet_tail_and_attack() -> None:
    # A loud 300 Hz note followed by a quiet 500 Hz tail (30 dB down): the tail is not the note.
    loud = harmonic_tone(300.0, 1.0)
    tail = 0.03 * harmonic_tone(500.0, 1.0)
    assert abs(cents(track_pitch(np.concatenate([loud, tail]), SR, 50.0, 2000.0), 300.0)) < 2


@pytest.mark.parametrize("f0_hz", [65.4, 220.0, 523.25, 1046.5])
def test_track_pitch_pesto_known_tones(f0_hz: float) -> None:
    assert abs(cents(track_pitch_pesto(harmonic_tone(f0_hz), SR), f0_hz)) < 25.0


@pytest.mark.parametrize("root_hz", [220.0, 440.0, 660.0])
def test_track_pitch_pesto_reads_a_fifths_dyad_at_its_root(root_hz: float) -> None:
    # Root and fifth together (GM "Lead 7 (fifths)"): the waveform repeats at root / 2, where
    # YIN reads it; a listener, and PESTO, name the root.
    t = np.arange(2 * SR) / SR
    x = sum(np.sin(2 * np.pi * root_hz * k * t) / k + 0.8 * np.sin(3 * np.pi * root_hz * k * t) / k
            for k in range(1, 6)) * np.exp(-t)
    assert abs(cents(track_pitch(x, SR, root_hz / 2.3, root_hz * 2.3), root_hz) + 1200) < 50
    assert abs(cents(track_pitch_pesto(x, SR), root_hz)) < 50


def test_track_pitch_pesto_ignores_quiet_tail_and_rejects_blips() -> None:
    loud = harmonic_tone(300.0, 1.0)
    tail = 0.03 * harmonic_tone(500.0, 1.0)
    assert abs(cents(track_pitch_pesto(np.concatenate([loud, tail]), SR), 300.0)) < 25
    with pytest.raises(CodecError, match="too short"):
        track_pitch_pesto(loud[:1000], SR)


def test_half_peak_time_known_onsets() -> None:
    tone = harmonic_tone(200.0, 0.5)
    x = np.concatenate([np.zeros(int(0.25 * SR), np.float32), tone])
    assert half_peak_time_s(x, SR) == pytest.approx(0.25, abs=0.0015)
    delayed = np.concatenate([np.zeros(int(0.010 * SR), np.float32), x])
    assert half_peak_time_s(delayed, SR) - half_peak_time_s(x, SR) == pytest.approx(
        0.010, abs=1 / SR)
    # A 20 ms linear fade-in reaches half amplitude about 10 ms in.
    ramp = tone.copy()
    n = int(0.02 * SR)
    ramp[:n] *= np.linspace(0, 1, n, dtype=np.float32)
    assert half_peak_time_s(ramp, SR) == pytest.approx(0.010, abs=0.003)
    with pytest.raises(CodecError):
        half_peak_time_s(np.zeros(100), SR)


# -- the map's sound figures -------------------------------------------------------------------
from pgesam_live.model import metrics as M  # noqa: E402


def _note(f0_hz: float, decay_per_s: float, tilt: float, duration_s: float = 4.0) -> np.ndarray:
    t = np.arange(int(duration_s * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * f0_hz * t) / k ** tilt for k in range(1, 12)
            if k * f0_hz < SR / 2)
    return (0.3 * x * np.exp(-decay_per_s * t) * np.minimum(1.0, t / 0.005)).astype(np.float64)


def test_identical_audio_scores_envelope_zero_and_identity_one() -> None:
    a = _note(220.0, 2.0, 1.0)
    assert M.envelope_error_db(a, a, SR) == pytest.approx(0.0, abs=1e-9)
    assert M.envelope_error_db(a, 0.1 * a, SR) == pytest.approx(0.0, abs=1e-6)  # gain-free
    spec = M.log_band_spectrogram(a, SR)
    assert M.spectrogram_distance(spec, M.log_band_spectrogram(0.2 * a, SR)) < 1e-9
    cands = [("gm000", spec), ("gm001", M.log_band_spectrogram(_note(220.0, 0.0, 2.5), SR))]
    assert M.nearest_is_own(spec, "gm000", cands)
    assert not M.nearest_is_own(spec, "gm001", cands)


def test_envelope_error_is_the_level_difference_in_db() -> None:
    """A note decaying at d/s is 20 log10(e) d dB per second down; a steady one holds."""
    decaying, steady = _note(220.0, 1.0, 1.0), _note(220.0, 0.0, 1.0)
    lv = M.levels_db(decaying, SR)
    per_s = 20 * np.log10(np.e)
    want = [-per_s * (t - 0.025) for t in M.ENVELOPE_TIMES_S]  # the peak window starts at 0
    assert np.allclose(lv, want, atol=0.6)
    assert np.allclose(M.levels_db(steady, SR), 0.0, atol=0.2)
    assert M.envelope_error_db(steady, decaying, SR) == pytest.approx(-np.mean(want), abs=0.6)
    # Floored at -60 dB re peak: a note that dies at once is 60 dB down, not -inf.
    silent_tail = _note(220.0, 40.0, 1.0)
    assert M.levels_db(silent_tail, SR)[-1] == M.ENVELOPE_FLOOR_DB


def test_release_error_compares_the_levels_after_the_note_off() -> None:
    """Identical releases at any gain score 0; a tone that keeps sounding against one that
    stops at the note-off scores the floor's 60 dB; a release decaying 20 dB per 100 ms
    against a held tone scores the 300 ms window's last level (about 60 dB less the first
    window's 10 ms); notes too short for the window give None."""
    t = np.arange(int(4.0 * SR)) / SR
    tone = np.sin(2 * np.pi * 220.0 * t)
    off_s = 3.0
    stop = tone * (t < off_s)
    fall = tone * np.where(t < off_s, 1.0, 10 ** (-(t - off_s) / 0.1))  # 20 dB / 100 ms
    assert M.release_error_db(fall, fall, SR, off_s) == pytest.approx(0.0, abs=1e-9)
    assert M.release_error_db(fall, 0.05 * fall, SR, off_s) == pytest.approx(0.0, abs=1e-6)
    assert M.release_error_db(stop, tone, SR, off_s) == pytest.approx(-M.RELEASE_FLOOR_DB)
    env = M.release_envelope_db(fall, int(off_s * SR), SR)
    assert env[0] > -3.0 and env[10] == pytest.approx(-20.0 - 2.0, abs=1.5)
    assert 50.0 < M.release_error_db(fall, tone, SR, off_s) < 60.0
    assert M.release_error_db(fall[: int(3.2 * SR)], tone, SR, off_s) is None


def test_spectral_centroid_and_identity_keys() -> None:
    t = np.arange(SR) / SR
    assert M.spectral_centroid_hz(np.sin(2 * np.pi * 1000 * t), SR) == pytest.approx(1000, rel=0.01)
    assert M.spectral_centroid_hz(_note(220, 0, 0.5), SR) > M.spectral_centroid_hz(
        _note(220, 0, 3.0), SR)
    # One GM program from two banks is one instrument; other names are themselves.
    assert M.identity_key("fluidr3_gm_004") == M.identity_key("musescore_general_004") == "gm004"
    assert M.identity_key("syn_bass_0") == "syn_bass_0"


def test_brighter_and_darker_notes_are_told_apart_by_the_band_spectrogram() -> None:
    bright, dark = _note(220, 1.0, 0.5), _note(220, 1.0, 3.0)
    q = M.log_band_spectrogram(_note(220, 1.2, 0.6), SR)
    cands = [("bright", M.log_band_spectrogram(bright, SR)),
             ("dark", M.log_band_spectrogram(dark, SR))]
    assert M.nearest_is_own(q, "bright", cands)
