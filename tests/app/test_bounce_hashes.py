"""Bounces stay byte-identical across restructuring: the demo patches (frozen copies in
tests/fixtures/demo_patches, taken with the hashes) rendered offline with a small fixed test model
defined here (not the bundled checkpoint, so a new default model does not change them).

The hashes were taken on the code before the sweep of issue 15; a change in how the engine
schedules, renders, mixes or writes a bounce shows here as a changed SHA-256. Retaken once,
on purpose, for issue 16: a sequence's gate is a held note released into the note's own release
(render/loop.py) instead of a 30 ms fade; and again when a loop's start came to be chosen where
the sound's level is steady (render/loop.py; with the loop code before that change the old
hashes still came out)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app.build import OfflineRig  # noqa: E402
from pgesam_live.patches.schema import load_patch  # noqa: E402
from pgesam_live.settings import Settings  # noqa: E402

PATCH_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "demo_patches"
SR = 24000

EXPECTED = {
    "drift-arpeggio.yaml":
        "a546c15bd75253df8e4baabd412bebc5a2353bdc5ea49813a9133d1ee0db935d",
    "family-changes.yaml":
        "d781fd215b14d088e1af8762f4c926d0f457734f18f9c0c6f499c09eeaf1525f",
    "morph.yaml":
        "32953521421875f69b1419105cdcaeb8f1651a42a823310a886a99e7b2000f89",
}


class FixedSynth:
    """A small, fixed, fully deterministic model stand-in: a decaying three-partial tone
    whose partial balance follows x, decay follows y and a seeded noise breath follows the
    seed. Each row depends only on its own (point, pitch, seed): batching does not matter."""

    def __init__(self) -> None:
        self.sample_rate = SR
        self.pitch_range = (36, 84)
        self.model_id = "fixed-test-0001"
        self.codec_name = "fixed"
        self.training_points = [{"name": "a", "x": 0.5, "y": 0.5, "family": "guitar"},
                                {"name": "b", "x": -0.5, "y": -0.5, "family": "organ"}]

    def render(self, points: np.ndarray, pitches: np.ndarray, seed: int = 0) -> np.ndarray:
        n = int(SR * 1.5)
        t = np.arange(n, dtype=np.float64) / SR
        out = np.zeros((len(pitches), n), np.float32)
        for i, (pt, p) in enumerate(zip(points, pitches, strict=True)):
            x, y = float(pt[0]), float(pt[1])
            f0 = 440.0 * 2 ** ((int(p) - 69) / 12)
            a1, a2, a3 = 1.0, 0.5 * (1 + x), 0.3 * (1 - x)
            env = np.exp(-t * (2.0 + 1.5 * (y + 1)))
            tone = (a1 * np.sin(2 * np.pi * f0 * t) + a2 * np.sin(4 * np.pi * f0 * t)
                    + a3 * np.sin(6 * np.pi * f0 * t))
            key = int(p) * 1_000_003 + int(round(x * 1000)) * 1009 + int(round(y * 1000))
            rng = np.random.default_rng([seed, key & 0x7FFFFFFF])
            noise = rng.standard_normal(n) * 0.02 * np.exp(-t * 20)
            out[i] = (0.4 * env * tone + noise).astype(np.float32)
        return out


def bounce(patch: Path, out: Path) -> str:
    s = Settings().replace(audio="offline", cache_spill=False, patch_dir=PATCH_DIR)
    p = load_patch(patch, pitch_range=(36, 84))
    s = s.replace(seed=p.seed, tempo_bpm=p.tempo_bpm)
    rig = OfflineRig(s, synth=FixedSynth())
    try:
        rig.submit_or_fail(f"load {patch}", src="patch", at_s=0.0)
        seconds = rig.run_to_end(0.0, 600.0)
        rig.save(out, seconds=seconds)
    finally:
        rig.close()
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_demo_patch_bounce_is_byte_identical(name: str, tmp_path: Path) -> None:
    got = bounce(PATCH_DIR / name, tmp_path / "out.wav")
    assert got == EXPECTED[name], f"{name}: bounce changed: {got}"


def test_the_fixed_model_bounce_is_music_not_silence(tmp_path: Path) -> None:
    import soundfile as sf

    bounce(PATCH_DIR / "morph.yaml", tmp_path / "m.wav")
    audio, sr = sf.read(tmp_path / "m.wav")
    assert sr == SR and len(audio) > 10 * SR
    assert float(np.abs(audio).max()) > 0.05


def test_a_bounce_reuses_the_disk_note_cache_and_sounds_the_same(tmp_path: Path) -> None:
    """`replay --out` and `render` read the notes a session (or an earlier bounce) left on
    disk: a warm bounce renders nothing and writes the same samples."""
    from tests.fakes import FakeSynth

    s = Settings().replace(audio="offline", cache_spill=True, cache_dir=tmp_path / "cache",
                           patch_dir=PATCH_DIR)
    outs, rendered = [], []
    for _ in range(2):
        rig = OfflineRig(s, synth=FakeSynth(24000), spill=True)
        try:
            assert rig.engine.submit("at 0.1 0.1", at_s=0.0).ok
            assert rig.engine.submit('seq a "C4 E4 G4" 0.5 gate 0.5', at_s=0.0).ok
            rig.run_until(2.0)
            rig.engine.submit("hush", at_s=2.0)
            end = rig.run_to_end(2.0, 3.0)
            outs.append(rig.audio.render_to_array()[: int(end * 24000)].copy())
            rendered.append(rig.renderer.rendered)
            rig.cache.close()
        finally:
            rig.close()
    assert rendered[0] >= 3 and rendered[1] == 0
    assert np.array_equal(outs[0], outs[1])
    assert list((tmp_path / "cache" / "notes").rglob("*.npy"))


def test_a_bounce_ends_at_a_time_a_hair_past_a_block_boundary() -> None:
    """`render` and `replay --out` step time by adding 0.1 s (0.1 * 3.2 comes out as
    0.32000000000000006): a target a rounding error past a block boundary must end the run,
    not spin for ever waiting for a block that `advance_to` rightly does not compute."""
    import signal

    from tests.fakes import FakeSynth

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("run_until spun without advancing")

    rig = OfflineRig(Settings().replace(audio="offline", patch_dir=PATCH_DIR),
                     synth=FakeSynth(24000))
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        rig.bar(None, "test")
        block_s = rig.audio.buffer_size / rig.audio.sample_rate
        t_s = 25 * block_s + 1e-12  # a hair past the 25th block's end
        rig.run_until(t_s)
        assert rig.audio.time_s() == pytest.approx(25 * block_s)
        end_s = rig.run_to_end(0.1 * 3.2, 0.1 * 3.2 + 0.3)
        assert end_s >= 0.32
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        rig.close()


def test_a_bounce_slower_than_real_time_says_how_much() -> None:
    from pgesam_live.app.offline import _speed

    assert _speed(19.9, 69.6) == "in 69.6 s (0.29x real time)"
    assert _speed(60.0, 2.0) == "in 2.0 s (30x real time)"
    assert _speed(6.0, 2.0) == "in 2.0 s (3x real time)"
