"""AudioEngine: backends, the block clock, hooks, offline determinism, record-mode WAV."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pgesam_live.audio import server as audio
from pgesam_live.audio.server import AudioEngine, portaudio_output_available
from pgesam_live.audio.voices import VoicePool
from pgesam_live.errors import AudioError, ConfigError
from pgesam_live.render.dsp import resample

SR = 24000
B = 256


def bounce(path: Path) -> np.ndarray:
    """A small deterministic bounce: a few notes and a chord through the pool and limiter."""
    engine = AudioEngine("offline", sample_rate=SR, buffer_size=B)
    try:
        pool = VoicePool(engine, n_voices=8, max_note_s=1.0)
        t = np.arange(int(0.3 * SR)) / SR
        for i, (start_s, f_hz) in enumerate([(0.01, 220.0), (0.1234, 330.0), (0.2, 440.0)]):
            tone = (0.6 * np.sin(2 * np.pi * f_hz * t) * np.exp(-4 * t)).astype(np.float32)
            pool.play(tone, start_s=start_s, velocity=0.9, pan=i - 1.0, length_s=0.2)
            pool.play(tone, start_s=0.25, velocity=1.0)
        engine.advance_to(0.8)
        engine.save(path)
        return engine.render_to_array()
    finally:
        engine.close()


def test_offline_bounce_is_byte_identical(tmp_path: Path) -> None:
    a = bounce(tmp_path / "a.wav")
    b = bounce(tmp_path / "b.wav")
    assert a.shape == (int(np.ceil(0.8 * SR / B)) * B, 2)
    assert np.abs(a).max() > 0.1
    assert np.array_equal(a, b)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_hooks_get_block_times_in_priority_order() -> None:
    engine = AudioEngine("offline", sample_rate=SR, buffer_size=B)
    calls: list[tuple[str, float]] = []
    try:
        engine.boot()
        engine.add_hook(lambda t: calls.append(("late", t)), priority=5)
        engine.add_hook(lambda t: calls.append(("early", t)), priority=-5)
        engine.run_blocks(3, on_block=lambda t: calls.append(("arg", t)))
        bs = B / SR
        assert calls == [(n, k * bs) for k in range(3) for n in ("arg", "early", "late")]
        assert engine.time_s() == pytest.approx(3 * bs) and engine.time_samples() == 3 * B
        engine.advance_to(0.1)  # blocks until engine time >= 0.1
        assert engine.time_s() >= 0.1 > engine.time_s() - bs
    finally:
        engine.close()


def test_a_failing_hook_is_counted_and_the_clock_goes_on() -> None:
    engine = AudioEngine("offline", sample_rate=SR, buffer_size=B)
    seen: list[float] = []

    def bad(t_s: float) -> None:
        raise RuntimeError("boom")

    try:
        engine.boot()
        engine.add_hook(bad)
        engine.add_hook(seen.append, priority=1)
        engine.run_blocks(4)
        assert engine.hook_errors == 4 and len(seen) == 4
        engine.remove_hook(bad)
        engine.run_blocks(1)
        assert engine.hook_errors == 4
    finally:
        engine.close()


def test_bad_settings_and_wrong_mode_errors() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        AudioEngine("alsa")
    with pytest.raises(ConfigError):
        AudioEngine("offline", buffer_size=0)
    engine = AudioEngine("none", sample_rate=SR, buffer_size=B)
    try:
        engine.boot()
        with pytest.raises(AudioError, match="offline"):
            engine.run_blocks(1)
        with pytest.raises(AudioError, match="offline"):
            engine.render_to_array()
    finally:
        engine.close()
    with pytest.raises(AudioError, match="closed"):
        engine.boot()


def test_auto_falls_back_to_record_and_the_wav_has_the_note(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine has no sound card; force the answer so the test means the same everywhere.
    monkeypatch.setattr(audio, "portaudio_output_available",
                        lambda: (False, "no audio device found"))
    wav = tmp_path / "sessions" / "take.wav"
    engine = AudioEngine("auto", sample_rate=SR, buffer_size=B, record_path=wav)
    try:
        engine.boot()
        assert engine.backend == "record"
        assert engine.message is not None and "\n" not in engine.message
        assert str(wav) in engine.message and "no audio device" in engine.message
        assert "record" in engine.description
        pool = VoicePool(engine, n_voices=4, max_note_s=0.5)
        engine.start()
        engine.start()  # idempotent
        time.sleep(0.05)
        start_s = engine.time_s() + 0.1  # a scheduler's look-ahead
        pool.play(np.full(int(0.05 * SR), 0.5, dtype=np.float32), start_s=start_s, pan=-1.0)
        time.sleep(0.35)
        t_wall = engine.time_s()
    finally:
        engine.stop()
        engine.stop()  # idempotent
        engine.close()
    data, sr = sf.read(str(wav), dtype="float32")
    assert sr == SR and data.ndim == 2 and data.shape[1] == 2
    assert abs(len(data) / SR - t_wall) < 0.1  # everything computed was written
    onset = int(np.flatnonzero(np.abs(data[:, 0]) > 1e-3)[0])
    assert abs(onset - start_s * SR) <= B  # within one block (it is in fact exact)
    assert np.abs(data[:, 1]).max() < 1e-3


def test_realtime_clock_tracks_the_wall_clock() -> None:
    engine = AudioEngine("none", sample_rate=SR, buffer_size=B)
    try:
        engine.start()
        t0 = time.perf_counter()
        e0 = engine.time_s()
        time.sleep(0.4)
        dt_wall = time.perf_counter() - t0
        dt_engine = engine.time_s() - e0
        assert abs(dt_engine - dt_wall) < 0.05 + 2 * engine.block_s
    finally:
        engine.close()


def test_portaudio_without_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never boot pyo's portaudio for real here: without a sound card it would segfault.
    monkeypatch.setattr(audio, "portaudio_output_available",
                        lambda: (False, "no audio device found"))
    with pytest.raises(AudioError, match="--audio record"):
        AudioEngine("portaudio").boot()


def test_probe_answers_without_booting() -> None:
    ok, why = portaudio_output_available()
    assert isinstance(ok, bool) and why


def test_resample_keeps_pitch_and_changes_length() -> None:
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    y = resample(x, SR, 48000)
    assert y.dtype == np.float32 and len(y) == 2 * len(x)
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    f_peak = np.argmax(spec) * 48000 / len(y)
    assert abs(f_peak - 440.0) < 2.0
    assert len(resample(x, SR, 16000)) == 16000
    with pytest.raises(ConfigError):
        resample(np.zeros((2, 10), dtype=np.float32), SR, 16000)


def test_jack_without_a_server_is_a_clear_error() -> None:
    engine = AudioEngine("jack", sample_rate=SR, buffer_size=B)
    try:
        engine.boot()
    except AudioError as e:
        assert "jackd" in str(e)
        # ...and only that line: pyo's own four go nowhere (a process of its own, since
        # pytest's capture would take pyo's writes to sys.stdout before fd 1 sees them).
        code = ("from pgesam_live.audio.server import AudioEngine\n"
                "try:\n    AudioEngine('jack', sample_rate=24000, buffer_size=256).boot()\n"
                "except Exception as e:\n    print('ERR', e)\n")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYO_GUI_WX": "0"})
        assert run.stdout.startswith("ERR jack: no jack server") and run.stdout.count("\n") == 1
        assert "Pyo error" not in run.stdout + run.stderr
        return
    engine.close()
    pytest.skip("a jack server is running here: the no-server error path cannot be exercised")


def test_a_recording_cut_off_by_a_crash_is_repaired(tmp_path: Path) -> None:
    """A crash leaves the WAV header saying 0 frames: the next start fixes it, so any player
    (here the standard library's) reads every sample."""
    import struct
    import wave

    import soundfile as sf

    from pgesam_live.audio.server import repair_recordings

    p = tmp_path / "s.wav"
    x = (0.1 * np.sin(np.arange(24000) / 10)).astype(np.float32)
    sf.write(str(p), np.stack([x, x], 1), 24000, subtype="PCM_24", format="WAV")
    data = bytearray(p.read_bytes())
    i = data.index(b"data")
    data[i + 4: i + 8] = struct.pack("<I", 0)  # as libsndfile leaves it until close
    data[4:8] = struct.pack("<I", 36)
    p.write_bytes(bytes(data))
    lines = repair_recordings(tmp_path)
    assert len(lines) == 1 and "s.wav (1.0 s)" in lines[0]
    with wave.open(str(p)) as w:
        assert w.getnframes() == 24000
    assert repair_recordings(tmp_path) == []  # a sound file is left alone
