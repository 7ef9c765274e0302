"""The `partials` codec on synthesised tones with known answers: a stiff string keeps its stretch,
a dyad keeps both pitches, a bell keeps its inharmonic partials, a tone an octave below its key
is tracked there, a tone on the harmonic codec's window edge is not pinned; its contract (layout,
clamped and differentiable decoding, registration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgesam_live.errors import CodecError
from pgesam_live.model.codec import (
    CODEC_NAMES,
    HarmonicCodec,
    PartialsCodec,
    get_codec,
    oscillator_bank,
)
from pgesam_live.model.metrics import mrstft_distance

SR = 24000


def midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def tone(partials: list[tuple[float, float]], duration_s: float = 1.0, decay_s: float = 2.0,
         seed: int = 0) -> np.ndarray:
    """Sum of sinusoids (freq_hz, amplitude) with a 5 ms attack and an exponential decay."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * SR)) / SR
    x = sum(a * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
            for f, a in partials if f < 0.45 * SR)
    env = np.minimum(t / 0.005, 1.0) * np.exp(-t / decay_s)
    return (0.3 * env * x + 1e-5 * rng.standard_normal(len(t))).astype(np.float32)


def harmonic_partials(f0_hz: float, n: int = 20, tilt: float = 1.0) -> list[tuple[float, float]]:
    return [(k * f0_hz, 1.0 / k**tilt) for k in range(1, n + 1)]


def peak_level_db(x: np.ndarray, f_hz: float, half_width_hz: float = 15.0) -> float:
    """Level (dB) of the strongest bin within f_hz +- half_width_hz of a 1 s Hann spectrum."""
    seg = x[2400:2400 + SR]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 4 * SR))
    f = np.fft.rfftfreq(4 * SR, 1 / SR)
    sel = np.abs(f - f_hz) <= half_width_hz
    return float(20 * np.log10(spec[sel].max() / spec.max() + 1e-12))


def peak_hz(x: np.ndarray, f_hz: float, half_width_hz: float = 15.0) -> float:
    seg = x[2400:2400 + SR]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 16 * SR))
    f = np.fft.rfftfreq(16 * SR, 1 / SR)
    sel = np.flatnonzero(np.abs(f - f_hz) <= half_width_hz)
    return float(f[sel[np.argmax(spec[sel])]])


@pytest.fixture(scope="module")
def partials() -> PartialsCodec:
    c = get_codec("partials")
    assert isinstance(c, PartialsCodec)
    return c


def round_trip(c: PartialsCodec, x: np.ndarray, hint_hz: float) -> tuple[torch.Tensor,
                                                                       np.ndarray]:
    frames = c.encode(torch.from_numpy(x)[None], f0_hint_hz=hint_hz)
    return frames, c.decode(frames)[0].numpy()


def test_registered_with_layout_and_harmonic_channels(partials: PartialsCodec) -> None:
    assert "partials" in CODEC_NAMES and "harmonic" in CODEC_NAMES
    assert (partials.name, partials.sample_rate, partials.frame_rate_hz) == ("partials", SR, 75)
    assert partials.dim == 98 + 1 + 2 * 16 == 131
    x = tone(harmonic_partials(220.0), 1.0)
    frames, y = round_trip(partials, x, 220.0)
    assert frames.shape == (1, 75, 131) and y.shape == (75 * 320,)
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.2
    assert torch.allclose(frames[..., 2:66].sum(-1), torch.ones(1, 75), atol=1e-4)
    # A plain harmonic tone: no stretch, and the harmonic channels read as the harmonic
    # codec's do (same f0 within a few cents, same loudness within 1 dB).
    h = HarmonicCodec().encode(torch.from_numpy(x)[None], f0_hint_hz=220.0)
    assert float(frames[0, 10:60, 98].max()) == 0.0
    assert float((frames[0, 10:60, 0] - h[0, 10:60, 0]).abs().max()) * 100 * 100 < 3.0
    assert float((frames[0, 10:60, 1] - h[0, 10:60, 1]).abs().max()) * 140 < 1.0


def test_stiff_string_comes_back_with_its_stretch(partials: PartialsCodec) -> None:
    f_ideal, b = 110.0, 4e-4  # partial 20 sits 1.3 semitones above 20 f
    parts = [(k * f_ideal * np.sqrt(1 + b * k * k), 1.0 / k) for k in range(1, 41)]
    x = tone(parts, 1.0)
    frames, y = round_trip(partials, x, f_ideal)
    p = partials.unnormalise(frames)
    got_b = float(p["stretch"][0, 20:60].median())
    assert got_b == pytest.approx(b, rel=0.3)
    f0 = float(p["f0_hz"][0, 20:60].median())
    assert 1200 * abs(np.log2(f0 / parts[0][0])) < 5.0  # f0 is partial 1's frequency
    for k in (10, 20, 30):  # the stretched partials are where the string put them
        assert abs(peak_hz(y, parts[k - 1][0]) - parts[k - 1][0]) < 0.004 * parts[k - 1][0]
    h = HarmonicCodec()
    yh = h.decode(h.encode(torch.from_numpy(x)[None], f0_hint_hz=f_ideal))[0].numpy()
    assert mrstft_distance(x, y) < mrstft_distance(x, yh) - 0.05


@pytest.mark.parametrize("low,high", [(55, 60), (60, 67)])
def test_dyad_keeps_both_pitches(partials: PartialsCodec, low: int, high: int) -> None:
    """Two harmonic voices a fourth or a fifth apart (equal temperament), named by either
    key: both fundamentals come back, at their levels."""
    f_lo, f_hi = midi_hz(low), midi_hz(high)
    x = tone(harmonic_partials(f_lo, 12) + [(f, 0.8 * a) for f, a in harmonic_partials(f_hi, 12)])
    for key in (low, high):
        _, y = round_trip(partials, x, midi_hz(key))
        for f in (f_lo, f_hi):
            assert abs(peak_level_db(y, f) - peak_level_db(x, f)) < 3.0, (key, f)
            assert 1200 * abs(np.log2(peak_hz(y, f) / f)) < 10.0, (key, f)


def test_bell_keeps_its_inharmonic_partials(partials: PartialsCodec) -> None:
    f0 = midi_hz(72)
    ratios = [(1.0, 0.3), (2.74, 0.1), (5.31, 1.0), (7.95, 0.5)]  # a glockenspiel bar's
    x = tone([(r * f0, a) for r, a in ratios], 1.0, decay_s=0.6)
    frames, y = round_trip(partials, x, f0)
    f_track = partials.unnormalise(frames)["f0_hz"][0, 5:60]
    assert float((1200 * torch.log2(f_track / f0)).abs().max()) < 10.0
    for r, _ in ratios:
        assert abs(peak_level_db(y, r * f0) - peak_level_db(x, r * f0)) < 3.0, r
    h = HarmonicCodec()
    yh = h.decode(h.encode(torch.from_numpy(x)[None], f0_hint_hz=f0))[0].numpy()
    assert mrstft_distance(x, y) < mrstft_distance(x, yh)


def test_suboctave_fundamental_is_tracked_an_octave_below_the_key(
        partials: PartialsCodec) -> None:
    key = 60
    x = tone(harmonic_partials(midi_hz(key - 12), 24))
    frames, _ = round_trip(partials, x, midi_hz(key))
    midi = frames[0, 10:60, 0] * partials.PITCH_SCALE_MIDI + partials.PITCH_OFFSET_MIDI
    assert float((midi - (key - 12)).abs().max()) < 0.05


@pytest.mark.parametrize("offset_cents", [100.0, -100.0, 180.0])
def test_f0_on_the_harmonic_window_edge_is_not_pinned(partials: PartialsCodec,
                                                      offset_cents: float) -> None:
    """A tone +-100 cents (the harmonic codec's window edge) or 180 cents (beyond it) from its
    hint: tracked where it is, while the harmonic codec stops at its edge."""
    hint = midi_hz(57)
    f = hint * 2 ** (offset_cents / 1200)
    x = tone(harmonic_partials(f, 16))
    frames, _ = round_trip(partials, x, hint)
    cents = 1200 * torch.log2(partials.unnormalise(frames)["f0_hz"][0, 10:60] / hint)
    assert float((cents - offset_cents).abs().max()) < 5.0
    if abs(offset_cents) > 100:
        h = HarmonicCodec()
        hc = 1200 * torch.log2(h.unnormalise(h.encode(torch.from_numpy(x)[None],
                                                      f0_hint_hz=hint))["f0_hz"][0, 10:60] / hint)
        assert float(hc.max()) <= 100.5  # the old window's wall


def test_decode_clamps_is_deterministic_and_differentiable(partials: PartialsCodec) -> None:
    gen = torch.Generator().manual_seed(0)
    bad = torch.randn(2, 30, partials.dim, generator=gen) * 0.5 + 0.5
    y = partials.decode(bad)
    assert bool(torch.isfinite(y).all()) and float(y.abs().max()) < 200.0
    x = tone(harmonic_partials(147.0, 10), 0.5)
    frames = partials.encode(torch.from_numpy(x)[None], f0_hint_hz=147.0)
    assert torch.equal(partials.decode(frames, seed=3), partials.decode(frames, seed=3))
    f = frames.clone()
    f[..., 98] = 0.1                # some stretch, and one sounding free partial
    f[..., 99] = 0.4
    f[..., 99 + 16] = 0.6
    f.requires_grad_(True)
    partials.decode(f).pow(2).mean().backward()
    assert f.grad is not None and bool(torch.isfinite(f.grad).all())
    for ch in (0, 1, 98, 99 + 16):  # f0, loudness, stretch, a partial's level
        assert float(f.grad[..., ch].abs().sum()) > 0, ch
    with pytest.raises(CodecError, match="frames"):
        partials.decode(torch.zeros(1, 10, 98))


def test_oscillator_bank_known_answer() -> None:
    """A constant 375 Hz sinusoid of amplitude 0.5: exactly 0.5 sin(2 pi 375 t)."""
    freq = torch.full((1, 10, 1), 375.0, dtype=torch.float64)
    amp = torch.full((1, 10, 1), 0.5, dtype=torch.float64)
    y = oscillator_bank(freq, amp, 320, SR)[0].numpy()
    t = np.arange(3200) / SR
    assert np.allclose(y, 0.5 * np.sin(2 * np.pi * 375.0 * t), atol=1e-9)


def test_training_losses_read_the_partials_layout(partials: PartialsCodec) -> None:
    """The audible frame loss is 0 on identical frames, sees an error in a free partial's
    level, and the decoded spectral loss reaches the stretch channel through its gradient."""
    from pgesam_live.model import train as T

    audible_frame_loss, channel_weights = T.audible_frame_loss, T.channel_weights
    decoded_spectral_loss = T.decoded_spectral_loss

    x = tone(harmonic_partials(220.0, 12), 0.5)
    t = partials.encode(torch.from_numpy(x)[None], f0_hint_hz=220.0)
    w = channel_weights("partials", partials.dim)
    assert float(audible_frame_loss(t, t, partials, w)) == 0.0
    p = t.clone()
    p[..., 99 + 16] += 0.1
    assert float(audible_frame_loss(p, t, partials, w)) > 0.0
    p = t.clone()
    p[..., 98] = 0.2
    p.requires_grad_(True)
    loss = decoded_spectral_loss(p, t, partials, crop_frames=20)
    loss.backward()
    assert float(loss.detach()) > 0
    assert p.grad is not None and float(p.grad[..., 98].abs().sum()) > 0


def test_train_runs_on_the_partials_codec(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pgesam_live.model import train as T
    from tests.model.test_train import make_tiny_nsynth, train_args

    data = make_tiny_nsynth(tmp_path / "nsynth")
    out = tmp_path / "run"
    T.run_train(train_args("vae", data, out, "--steps", "2", "--codec", "partials"))
    caches = list((data / ".pgesam-cache").glob("partials-*"))
    assert caches, "the frame cache is kept per codec"


def test_unstretched_harmonics_decode_as_the_oscillator_bank_would(
        partials: PartialsCodec) -> None:
    """The wavetable fast path for B = 0 sounds as the oscillator bank does (to the table's
    interpolation error), and a stretch just above it switches to the bank."""
    x = tone(harmonic_partials(196.0, 20), 0.5)
    frames = partials.encode(torch.from_numpy(x)[None], f0_hint_hz=196.0)
    assert float(frames[..., 98].max()) == 0.0
    p = partials.unnormalise(frames)
    fast = partials.decode_deterministic(frames)
    slow = oscillator_bank(torch.cat([p["harmonic_hz"], p["partial_hz"]], -1),
                           torch.cat([p["amplitude"], p["partial_amplitude"]], -1), 320, SR)
    assert float((fast - slow).abs().max()) < 1e-3 * float(slow.abs().max())
