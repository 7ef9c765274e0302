"""NSynth-format reading, the authors' filters, and the on-disk frame cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pgesam_live.errors import DataError
from pgesam_live.model import data as dm
from pgesam_live.model.codec import Codec

SR_FILE = 16000
DUR_S = 0.5


class FakeCodec(Codec):
    """24 kHz, 75 frames/s, 3 features per 320-sample hop (+ the f0 hint); counts encodes
    (in _private attributes: runtime state the cache key leaves out)."""

    name = "fake"
    sample_rate = 24000
    frame_rate_hz = 75.0
    dim = 4
    HOP = 320

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = gain
        self._calls = 0
        self._notes_encoded = 0
        self._hints: list[torch.Tensor] = []

    def encode(self, wave: torch.Tensor, f0_hint_hz: torch.Tensor | None = None) -> torch.Tensor:
        self._calls += 1
        self._notes_encoded += wave.shape[0]
        hop = self.HOP
        t = wave.shape[1] // hop
        w = wave[:, : t * hop].reshape(wave.shape[0], t, hop)
        hint = torch.zeros(wave.shape[0]) if f0_hint_hz is None else f0_hint_hz / 1000.0
        if f0_hint_hz is not None:
            self._hints.append(f0_hint_hz.clone())
        return torch.stack([w.pow(2).mean(-1).sqrt() * self.gain, w.mean(-1),
                            w.abs().amax(-1), hint[:, None].expand(-1, t)], dim=-1)

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[..., 0].repeat_interleave(320, dim=1)


class NoHintCodec(FakeCodec):
    name = "nohint"

    def encode(self, wave: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().encode(wave)


FAMILY_OF = {"bass_synthetic_001": "bass", "bass_electronic_002": "bass",
             "bass_acoustic_003": "bass", "keyboard_acoustic_004": "keyboard",
             "keyboard_electronic_005": "keyboard"}
SPLIT_OF = {"bass_synthetic_001": "train", "bass_electronic_002": "train",
            "bass_acoustic_003": "test", "keyboard_acoustic_004": "train",
            "keyboard_electronic_005": "valid"}


def make_nsynth(root: Path, pitches: tuple[int, ...] = (48, 60, 72),
                velocities: tuple[int, ...] = (50, 100)) -> Path:
    """A hand-made NSynth directory: sines at each note's pitch, 16 kHz, DUR_S long."""
    t = np.arange(int(SR_FILE * DUR_S)) / SR_FILE
    examples: dict[str, dict[str, dict]] = {"train": {}, "valid": {}, "test": {}}
    for i, (inst, fam) in enumerate(sorted(FAMILY_OF.items())):
        split = SPLIT_OF[inst]
        d = root / f"nsynth-{split}" / "audio"
        d.mkdir(parents=True, exist_ok=True)
        for p in pitches:
            for v in velocities:
                note = f"{inst}-{p:03d}-{v:03d}"
                f0 = 440.0 * 2 ** ((p - 69) / 12)
                x = (v / 127) * 0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-2 * t)
                sf.write(d / f"{note}.wav", x.astype(np.float32), SR_FILE, subtype="PCM_16")
                examples[split][note] = {
                    "note_str": note, "pitch": p, "velocity": v, "instrument": i,
                    "instrument_str": inst, "instrument_family": dm.FAMILIES.index(fam),
                    "instrument_family_str": fam, "instrument_source": 0,
                    "instrument_source_str": inst.split("_")[1], "sample_rate": SR_FILE,
                    "qualities": [0] * 10}
    for split, ex in examples.items():
        (root / f"nsynth-{split}").mkdir(parents=True, exist_ok=True)
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(ex))
    return root


@pytest.fixture()
def nsynth(tmp_path: Path) -> Path:
    return make_nsynth(tmp_path / "nsynth")


def load(root: Path, split: str, codec: Codec, **kw: object) -> dm.FrameSet:
    kw.setdefault("duration_s", DUR_S)
    kw.setdefault("progress", False)
    return dm.load_frames(root, split, codec, **kw)  # type: ignore[arg-type]


# --- reading and filters ---------------------------------------------------------------------

def test_read_split_fields(nsynth: Path) -> None:
    train = dm.read_split(nsynth, "train")
    assert len(train) == 3 * 3 * 2
    assert [n.note_str for n in train] == sorted(n.note_str for n in train)
    n = next(n for n in train if n.note_str == "bass_synthetic_001-060-100")
    assert (n.pitch, n.velocity, n.family, n.family_str) == (60, 100, 0, "bass")
    assert n.source_str == "synthetic" and n.sample_rate == SR_FILE and n.split == "train"
    assert n.path == nsynth / "nsynth-train" / "audio" / "bass_synthetic_001-060-100.wav"
    allnotes = dm.read_split(nsynth, "all")
    assert len(allnotes) == 5 * 3 * 2
    assert {n.split for n in allnotes} == {"train", "valid", "test"}
    with pytest.raises(DataError, match="unknown split"):
        dm.read_split(nsynth, "dev")


def test_load_audio_resamples_16k_to_24k(nsynth: Path) -> None:
    path = nsynth / "nsynth-train" / "audio" / "bass_synthetic_001-072-100.wav"
    x = dm.load_audio(path, 24000)
    assert x.dtype == np.float32 and x.shape == (int(24000 * DUR_S),)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f_peak = np.argmax(spec) * 24000 / len(x)
    assert abs(f_peak - 523.25) < 4.0  # MIDI 72, bin width 2 Hz
    assert dm.load_audio(path, 24000, n_samples=100).shape == (100,)
    assert dm.load_audio(path, 24000, n_samples=20000)[-100:].tolist() == [0.0] * 100


def test_load_audio_stereo_to_mono(tmp_path: Path) -> None:
    st = np.stack([np.full(1000, 0.5), np.full(1000, -0.1)], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.wav", st, 24000, subtype="FLOAT")
    x = dm.load_audio(tmp_path / "s.wav", 24000)
    assert np.allclose(x, 0.2, atol=1e-6)


def test_filters(nsynth: Path) -> None:
    notes = dm.read_split(nsynth, "all")
    f = dm.filter_notes(notes, pitch_range=(50, 72), velocities=[100])
    assert {n.pitch for n in f} == {60, 72} and {n.velocity for n in f} == {100}
    assert len(f) == 5 * 2
    lim = dm.filter_notes(notes, max_instruments_per_family=1, seed=0)
    per_fam = {fam: {n.instrument_str for n in lim if n.family_str == fam}
               for fam in ("bass", "keyboard")}
    assert all(len(s) == 1 for s in per_fam.values())
    assert lim == dm.filter_notes(notes, max_instruments_per_family=1, seed=0)
    picks = {frozenset(n.instrument_str for n in dm.filter_notes(
        notes, max_instruments_per_family=1, seed=s)) for s in range(8)}
    assert len(picks) > 1  # the seed decides which instruments stay
    assert len(dm.filter_notes(notes, families=["keyboard"])) == 2 * 3 * 2
    with pytest.raises(DataError, match="unknown families"):
        dm.filter_notes(notes, families=["kazoo"])


# --- encoding and the cache ------------------------------------------------------------------

def test_load_frames_shapes_labels_and_f0_hint(nsynth: Path) -> None:
    codec = FakeCodec()
    fs = load(nsynth, "train", codec, pitch_range=(48, 72), velocities=[100], batch_size=4)
    n = 3 * 3  # three train instruments x three pitches at velocity 100
    assert fs.frames.shape == (n, int(24000 * DUR_S) // 320, 4)
    assert fs.frames.dtype == torch.float32 and len(fs) == n
    assert fs.pitch.dtype == torch.long and fs.pitch.tolist() == [n_.pitch for n_ in fs.notes]
    assert fs.instrument_names == sorted(fs.instrument_names) == [
        "bass_electronic_002", "bass_synthetic_001", "keyboard_acoustic_004"]
    for i, note in enumerate(fs.notes):
        assert fs.instrument_names[int(fs.instrument[i])] == note.instrument_str
        assert int(fs.family[i]) == dm.FAMILIES.index(note.family_str)
    assert codec._calls == 3  # batches of 4 over 9 notes
    hints = torch.cat(codec._hints)
    assert torch.allclose(hints, dm.midi_to_hz(fs.pitch.float()))
    assert torch.allclose(fs.frames[:, :, 3], hints[:, None].expand(-1, fs.frames.shape[1])
                          / 1000.0)
    # louder (velocity) notes give larger rms frames: the audio really went through
    quiet = load(nsynth, "train", FakeCodec(), velocities=[50], cache=False, progress=True)
    assert float(quiet.frames[..., 0].mean()) < float(fs.frames[..., 0].mean())


def test_codec_without_hint_and_split_all(nsynth: Path) -> None:
    codec = NoHintCodec()
    fs = load(nsynth, "all", codec, velocities=[100], n_frames=10)
    assert fs.frames.shape == (5 * 3, 10, 4)
    assert codec._hints == [] and float(fs.frames[..., 3].abs().max()) == 0.0
    assert {n.split for n in fs.notes} == {"train", "valid", "test"}
    with pytest.raises(DataError, match="n_frames"):
        load(nsynth, "all", codec, velocities=[100], n_frames=1000)


def test_cache_is_reused_and_invalidated(nsynth: Path) -> None:
    codec = FakeCodec()
    a = load(nsynth, "train", codec, pitch_range=(48, 72))
    first = codec._calls
    assert first > 0
    cache_files = list((nsynth / dm.CACHE_DIRNAME).rglob("*.pt"))
    assert len(cache_files) == 1 and cache_files[0].name.startswith("train-")
    assert cache_files[0].parent.name.startswith("fake-")
    b = load(nsynth, "train", codec, pitch_range=(48, 72))
    assert codec._calls == first  # second load does not call encode
    assert torch.equal(a.frames, b.frames) and a.instrument_names == b.instrument_names
    assert [n.note_str for n in a.notes] == [n.note_str for n in b.notes]
    # n_frames slices the cached whole notes without re-encoding
    c = load(nsynth, "train", codec, pitch_range=(48, 72), n_frames=5)
    assert codec._calls == first and torch.equal(c.frames, a.frames[:, :5])

    # a changed wav (new content, new mtime) is noticed and the set re-encoded
    wav = nsynth / "nsynth-train" / "audio" / "bass_synthetic_001-060-100.wav"
    x, sr = sf.read(wav, dtype="float32")
    sf.write(wav, 0.5 * x, sr, subtype="PCM_16")
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    d = load(nsynth, "train", codec, pitch_range=(48, 72))
    assert codec._calls == 2 * first
    i = [n.note_str for n in d.notes].index("bass_synthetic_001-060-100")
    assert torch.allclose(d.frames[i, :, 0], 0.5 * a.frames[i, :, 0], atol=1e-3)

    # another codec configuration gets its own cache folder
    other = FakeCodec(gain=2.0)
    e = load(nsynth, "train", other, pitch_range=(48, 72))
    assert other._calls > 0 and torch.allclose(e.frames[..., 0], 2 * d.frames[..., 0])
    assert len({p.parent for p in (nsynth / dm.CACHE_DIRNAME).rglob("*.pt")}) == 2

    # other filters get their own file; cache=False always encodes
    load(nsynth, "train", codec, pitch_range=(60, 72))
    n_calls = codec._calls
    load(nsynth, "train", codec, pitch_range=(60, 72), cache=False)
    assert codec._calls > n_calls


def test_cache_float16_and_cache_dir(nsynth: Path, tmp_path: Path) -> None:
    codec = FakeCodec()
    a = load(nsynth, "valid", codec, cache_dtype=torch.float16, cache_dir=tmp_path / "c")
    b = load(nsynth, "valid", codec, cache_dtype=torch.float16, cache_dir=tmp_path / "c")
    assert codec._calls == 1 and torch.equal(a.frames, b.frames)
    assert b.frames.dtype == torch.float32
    assert not (nsynth / dm.CACHE_DIRNAME).exists()


def test_codec_fingerprint_follows_settings_and_weights() -> None:
    assert dm.codec_fingerprint(FakeCodec()) == dm.codec_fingerprint(FakeCodec())
    assert dm.codec_fingerprint(FakeCodec()) != dm.codec_fingerprint(FakeCodec(gain=3.0))

    class WeightCodec(FakeCodec):
        def __init__(self, seed: int) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.net = torch.nn.Linear(2, 2)

    assert dm.codec_fingerprint(WeightCodec(0)) == dm.codec_fingerprint(WeightCodec(0))
    assert dm.codec_fingerprint(WeightCodec(0)) != dm.codec_fingerprint(WeightCodec(1))

    before = dm.codec_fingerprint(FakeCodec())
    with pytest.MonkeyPatch.context() as mp:  # a class constant is configuration too
        mp.setattr(FakeCodec, "HOP", 160)
        assert dm.codec_fingerprint(FakeCodec()) != before
    assert dm.codec_fingerprint(FakeCodec()) == before

    class KeyCodec(FakeCodec):
        def cache_key(self) -> str:
            return "v1"

    assert dm.codec_fingerprint(KeyCodec()) == dm.codec_fingerprint(KeyCodec(gain=9.0))


# --- bad data --------------------------------------------------------------------------------

def test_missing_examples_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nsynth-train/examples.json is missing"):
        dm.read_split(tmp_path, "train")
    root = make_nsynth(tmp_path / "n")
    (root / "nsynth-test" / "examples.json").unlink()
    dm.read_split(root, "train")
    with pytest.raises(DataError, match="nsynth-test"):
        dm.read_split(root, "all")


def test_malformed_examples_json(tmp_path: Path) -> None:
    root = make_nsynth(tmp_path / "n")
    jp = root / "nsynth-valid" / "examples.json"
    jp.write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        dm.read_split(root, "valid")
    jp.write_text(json.dumps({"x-060-100": {"pitch": 60}}))
    with pytest.raises(DataError, match="x-060-100"):
        dm.read_split(root, "valid")


def test_missing_and_unreadable_wav(tmp_path: Path) -> None:
    root = make_nsynth(tmp_path / "n")
    gone = root / "nsynth-test" / "audio" / "bass_acoustic_003-048-050.wav"
    gone.unlink()
    with pytest.raises(DataError, match="bass_acoustic_003-048-050.wav is listed"):
        load(root, "test", FakeCodec())
    load(root, "test", FakeCodec(), velocities=[100])  # filtered out: not needed
    bad = root / "nsynth-test" / "audio" / "bass_acoustic_003-060-100.wav"
    bad.write_bytes(b"RIFF but not really a wav file")
    with pytest.raises(DataError, match="bass_acoustic_003-060-100.wav is not a readable"):
        load(root, "test", FakeCodec(), velocities=[100])


def test_empty_after_filtering(nsynth: Path) -> None:
    with pytest.raises(DataError, match="passes the filters"):
        load(nsynth, "train", FakeCodec(), pitch_range=(80, 90))


def test_instrument_means_are_each_notes_instruments_mean_point() -> None:
    mu = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [0.5, 3.0]])
    inst = torch.tensor([0, 0, 2, 0])
    got = dm.instrument_means(mu, inst)
    want = torch.tensor([[0.5, 1.0], [0.5, 1.0], [5.0, 5.0], [0.5, 1.0]])
    assert torch.allclose(got, want)
