"""Codecs: the harmonic codec's round trip (synthetic and real notes), its contract (f0 in the
frames, clamped decoding, determinism, gradients) and the EnCodec path with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgesam_live.errors import CodecError
from pgesam_live.model import codec as codec_mod
from pgesam_live.model.codec import HarmonicCodec, get_codec
from pgesam_live.model.metrics import cents, half_peak_time_s, mrstft_distance, track_pitch

SR = 24000


def midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def synthetic_note(f0_hz: float, duration_s: float = 1.5, seed: int = 0) -> np.ndarray:
    """A harmonic tone (1/k partials, a little noise) with a 10 ms attack and a decay."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * SR)
    t = np.arange(n) / SR
    x = np.zeros_like(t)
    for k in range(1, 30):
        if k * f0_hz < 0.45 * SR:
            x += np.sin(2 * np.pi * k * f0_hz * t + rng.uniform(0, 2 * np.pi)) / k
    env = np.minimum(t / 0.01, 1.0) * np.exp(-t / 1.5)
    return (0.3 * env * x + 1e-4 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def harmonic() -> HarmonicCodec:
    c = get_codec("harmonic")
    assert isinstance(c, HarmonicCodec)
    return c


def test_harmonic_shapes_and_attributes(harmonic: HarmonicCodec) -> None:
    assert (harmonic.name, harmonic.sample_rate, harmonic.frame_rate_hz) == ("harmonic", SR, 75)
    assert harmonic.dim == 2 + 64 + 32
    wave = torch.from_numpy(np.stack([synthetic_note(220.0, 4.0), synthetic_note(330.0, 4.0)]))
    frames = harmonic.encode(wave, f0_hint_hz=[220.0, 330.0])
    assert frames.shape == (2, 300, harmonic.dim) == (2, harmonic.frames_for(4.0), 98)
    assert frames.dtype == torch.float32
    # Fixed affine normalisation keeps every channel roughly in [0, 1].
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.2
    dist = frames[..., 2:66]
    assert torch.allclose(dist.sum(-1), torch.ones(2, 300), atol=1e-4)
    out = harmonic.decode(frames)
    assert out.shape == (2, 96000) and out.dtype == torch.float32


@pytest.mark.parametrize("pitch", [36, 45.5, 57, 69.3, 84])
def test_harmonic_round_trip_synthetic_pitch(harmonic: HarmonicCodec, pitch: float) -> None:
    f0 = midi_hz(pitch)
    x = synthetic_note(f0)
    for hint in (f0, None):  # with the data set's hint, and estimated over a wide range
        frames = harmonic.encode(torch.from_numpy(x)[None], f0_hint_hz=hint)
        f0_frames = harmonic.unnormalise(frames)["f0_hz"][0, 10:100]
        assert float(torch.max(torch.abs(1200 * torch.log2(f0_frames / f0)))) < 5.0
        y = harmonic.decode(frames)[0].numpy()
        got = track_pitch(y, SR, f0 / 2, min(2 * f0, 11000.0))
        assert abs(cents(got, f0)) < 5.0, (pitch, hint, got)
        assert mrstft_distance(x, y) < 0.35


def test_harmonic_f0_lives_in_the_frames(harmonic: HarmonicCodec) -> None:
    f0 = midi_hz(55)
    frames = harmonic.encode(torch.from_numpy(synthetic_note(f0))[None], f0_hint_hz=f0)
    shifted = frames.clone()
    shifted[..., 0] += 7.0 / harmonic.PITCH_SCALE_MIDI  # a fifth up, nothing else changed
    y = harmonic.decode(shifted)[0].numpy()
    assert cents(track_pitch(y, SR, 60.0, 1000.0), f0) == pytest.approx(700.0, abs=5.0)


def test_harmonic_decode_clamps_off_frames(harmonic: HarmonicCodec) -> None:
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(3, 75, harmonic.dim, generator=gen) * 0.5 + 0.5  # a bad generator
    y = harmonic.decode(frames)
    assert bool(torch.isfinite(y).all())
    # Loudness is clamped to +20 dB and the distribution renormalised: bounded output.
    assert float(y.abs().max()) < 50.0
    # Frames below the loudness range decode to (near) silence, not to noise bursts.
    quiet = frames.clone()
    quiet[..., 1] = -1.0
    quiet[..., 2 + 64:] = -1.0
    assert float(harmonic.decode(quiet).abs().max()) < 1e-5


def test_harmonic_decode_deterministic_and_differentiable(harmonic: HarmonicCodec) -> None:
    x = synthetic_note(147.0, 1.0)
    frames = harmonic.encode(torch.from_numpy(x)[None], f0_hint_hz=147.0)
    a = harmonic.decode(frames, seed=0)
    assert torch.equal(a, harmonic.decode(frames, seed=0))
    assert not torch.equal(a, harmonic.decode(frames, seed=1))  # the noise follows the seed
    f = frames.clone().requires_grad_(True)
    loss = harmonic.decode(f).pow(2).mean()
    loss.backward()
    assert f.grad is not None and bool(torch.isfinite(f.grad).all())
    assert float(f.grad[..., 1].abs().sum()) > 0  # loudness reaches the waveform
    assert float(f.grad[..., 0].abs().sum()) > 0  # so does f0


def test_harmonic_bad_input(harmonic: HarmonicCodec) -> None:
    with pytest.raises(CodecError, match=r"\[B, N\]"):
        harmonic.encode(torch.zeros(96000))
    with pytest.raises(CodecError, match="frames"):
        harmonic.decode(torch.zeros(1, 10, 5))
    with pytest.raises(CodecError, match="f0_hint_hz"):
        harmonic.encode(torch.zeros(2, 4800), f0_hint_hz=[100.0, -1.0])
    with pytest.raises(CodecError, match="choose one of"):
        get_codec("mp3")


# GM programs across families: (program, pitch). Bars: each note <= 0.60 (the p90 bar), the
# mean <= 0.40, pitch within 25 cents.
REAL_NOTES = [(0, 60), (24, 52), (33, 40), (56, 62), (73, 72), (11, 67), (65, 55), (40, 64)]


def test_harmonic_real_notes(harmonic: HarmonicCodec, render_gm) -> None:  # type: ignore[no-untyped-def]
    dists = []
    for program, pitch in REAL_NOTES:
        x = render_gm(program, pitch)
        frames = harmonic.encode(torch.from_numpy(x)[None], f0_hint_hz=midi_hz(pitch))
        y = harmonic.decode(frames)[0].numpy()
        d = mrstft_distance(x, y)
        fmin, fmax = midi_hz(pitch) / 2.5, midi_hz(pitch) * 2.5
        c = cents(track_pitch(y, SR, fmin, fmax), track_pitch(x, SR, fmin, fmax))
        assert d <= 0.60, (program, pitch, d)
        assert abs(c) <= 25.0, (program, pitch, c)
        dists.append(d)
    assert float(np.mean(dists)) <= 0.40, dists


@pytest.mark.parametrize("program,pitch", [(24, 45), (0, 64), (12, 60)])
def test_harmonic_plucked_attack(harmonic: HarmonicCodec, render_gm, program: int,  # type: ignore[no-untyped-def]
                                 pitch: int) -> None:
    x = render_gm(program, pitch)
    y = harmonic.decode(harmonic.encode(torch.from_numpy(x)[None],
                                        f0_hint_hz=midi_hz(pitch)))[0].numpy()
    assert abs(half_peak_time_s(y, SR) - half_peak_time_s(x, SR)) <= 0.015


# ----------------------------------------------------------------------------------- encodec

@pytest.fixture(scope="module")
def random_encodec_weights(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    encodec = codec_mod._import_encodec()
    torch.manual_seed(0)
    model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
    path = tmp_path_factory.mktemp("weights") / codec_mod.ENCODEC_CHECKPOINT
    torch.save(model.state_dict(), path)
    return path


def test_encodec_shapes_with_random_weights(random_encodec_weights) -> None:  # type: ignore[no-untyped-def]
    c = get_codec("encodec", weights=random_encodec_weights)
    assert (c.name, c.sample_rate, c.frame_rate_hz, c.dim) == ("encodec", SR, 75.0, 128)
    wave = torch.from_numpy(np.stack([synthetic_note(220.0, 4.0), synthetic_note(440.0, 4.0)]))
    frames = c.encode(wave)
    assert frames.shape == (2, 300, 128)
    assert bool(torch.isfinite(frames).all())
    with torch.no_grad():
        out = c.decode(frames)
    assert out.shape == (2, 96000)
    # Decoding runs the decoder straight on the de-normalised frames: e = 58.5 e' - 25
    # (checked on a short slice to keep the test fast).
    short = frames[:1, :15]
    emb = short.transpose(1, 2) * 58.5 - 25.0
    with torch.no_grad():
        direct = c.model.decoder(emb)[:, 0, :15 * 320]  # type: ignore[attr-defined]
        assert torch.allclose(c.decode(short), direct)


def test_encodec_missing_weights_names_both_places(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(codec_mod, "_repo_root", lambda: tmp_path / "repo")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CodecError) as err:
        get_codec("encodec")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "repo" / "checkpoints" / "encodec_24khz-d7cc33bc.th") in msg
    assert str(tmp_path / "hub" / "checkpoints" / "encodec_24khz-d7cc33bc.th") in msg
    with pytest.raises(CodecError, match="does not exist"):
        get_codec("encodec", weights=tmp_path / "nope.th")
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CodecError, match="bad.th"):
        get_codec("encodec", weights=bad)


def test_debuzz_flattens_a_frame_rate_zig_zag_and_keeps_onsets() -> None:
    """HarmonicCodec.debuzz: a loudness alternating +-0.7 dB frame to frame (the parallel
    decoder's buzz at half the frame rate) comes out within 0.01 dB of its mean; an onset
    (silence, then a 60 dB jump) keeps its frame and the one before it; a slow swell (a
    straight line in dB) is unchanged; nothing else of the frame moves."""
    from pgesam_live.model.codec import HarmonicCodec

    c = HarmonicCodec()
    f = torch.rand(2, 40, c.dim)
    zig = torch.tensor([0.7, -0.7]).repeat(20)
    f[0, :, 1] = (-30.0 + zig + c.LOUD_OFFSET_DB) / c.LOUD_SCALE_DB
    f[1, :, 1] = (torch.where(torch.arange(40) < 10, -100.0, -30.0) + c.LOUD_OFFSET_DB) \
        / c.LOUD_SCALE_DB
    f[1, 25:, 1] = (torch.linspace(-30.0, -20.0, 15) + c.LOUD_OFFSET_DB) / c.LOUD_SCALE_DB
    out = c.debuzz(f)
    db = out[..., 1] * c.LOUD_SCALE_DB - c.LOUD_OFFSET_DB
    assert (db[0, 1:-1] + 30.0).abs().max() < 0.01
    assert torch.equal(out[1, 9:11, 1], f[1, 9:11, 1])  # the onset and the frame before it
    assert torch.allclose(out[1, 26:-1, 1], f[1, 26:-1, 1], atol=1e-6)  # a line stays a line
    keep = [i for i in range(c.dim) if i != 1]
    assert torch.equal(out[..., keep], f[..., keep])


def test_tune_centres_each_notes_f0_on_its_key_keeping_octave_and_vibrato() -> None:
    """HarmonicCodec.tune: a note 30 cents sharp, one an octave below its key and 20 cents
    sharp, and one 11 semitones above: each moves by the same amount at every frame, so its
    median lands on the key's pitch class in the octave it chose, its vibrato intact."""
    from pgesam_live.model.codec import HarmonicCodec

    c = HarmonicCodec()
    f = torch.zeros(3, 60, c.dim)
    f[..., 1] = 0.7  # audible everywhere
    vibrato = 0.2 * torch.sin(torch.arange(60) / 5.0)  # semitones
    keys = torch.tensor([60, 60, 48])
    played = torch.tensor([60.3, 48.2, 59.0])
    f[..., 0] = (played[:, None] + vibrato - c.PITCH_OFFSET_MIDI) / c.PITCH_SCALE_MIDI
    t = c.tune(f, keys)
    midi = t[..., 0] * c.PITCH_SCALE_MIDI + c.PITCH_OFFSET_MIDI
    assert torch.allclose(midi.median(dim=1).values, torch.tensor([60.0, 48.0, 60.0]), atol=0.03)
    assert torch.allclose(midi - midi[:, :1], (f[..., 0] - f[:, :1, 0]) * c.PITCH_SCALE_MIDI,
                          atol=1e-4)  # the shape of the track is kept
    # Only the loud frames count: a quiet tail far off the key does not pull the median.
    g = f[:1].clone()
    g[0, 40:, 1] = 0.1  # 84 dB down
    g[0, 40:, 0] = (70.0 - c.PITCH_OFFSET_MIDI) / c.PITCH_SCALE_MIDI
    tuned = c.tune(g, keys[:1])[0, :40, 0] * c.PITCH_SCALE_MIDI + c.PITCH_OFFSET_MIDI
    assert abs(float(tuned.median()) - 60.0) < 0.05
