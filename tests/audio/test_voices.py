"""VoicePool on an offline (manual) pyo server: onsets, gain, pan, release, stealing, panic."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from pgesam_live.audio.server import AudioEngine
from pgesam_live.audio.voices import (
    LIMIT_CLIP,
    RELEASE_S,
    VoicePool,
    bench_trigger_latency_ms,
    bench_voices_cpu_pct,
    velocity_gain,
)
from pgesam_live.errors import ConfigError

SR = 24000
B = 256


@pytest.fixture
def rig() -> Iterator[tuple[AudioEngine, VoicePool]]:
    engine = AudioEngine("offline", sample_rate=SR, buffer_size=B)
    engine.boot()
    pool = VoicePool(engine, n_voices=32, max_note_s=2.0)
    try:
        yield engine, pool
    finally:
        engine.close()


def const(n_s: float, value: float = 0.5) -> np.ndarray:
    return np.full(int(n_s * SR), value, dtype=np.float32)


def onsets(x: np.ndarray) -> np.ndarray:
    """Indices where the signal goes from silent to sounding."""
    on = (np.abs(x) > 0).astype(np.int8)
    return np.flatnonzero(np.diff(np.concatenate([[0], on])) == 1)


def test_onsets_are_sample_accurate(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    # Several offsets within a block (0, 1, the middle, the last sample) and an arbitrary time.
    starts = [10 * B, 20 * B + 1, 30 * B + 128, 40 * B + 255, int(round(1.23456 * SR))]
    for s in starts:
        pool.play(const(0.02), start_s=s / SR, velocity=1.0)
    engine.advance_to(1.4)
    out = engine.render_to_array()
    assert list(onsets(out[:, 0])) == starts
    assert pool.late_starts == 0


def test_notes_handed_in_by_an_earlier_hook_start_in_the_same_block(
        rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    target = 50 * B + 77

    def scheduler_hook(t_s: float) -> None:  # like the scheduler: zero look-ahead
        if int(round(t_s * SR)) == 50 * B:
            pool.play(const(0.01), start_s=target / SR)

    engine.add_hook(scheduler_hook)  # added after the pool, runs before it (priority)
    engine.run_blocks(60)
    assert list(onsets(engine.render_to_array()[:, 0])) == [target]
    assert pool.late_starts == 0


def test_late_note_starts_next_block_and_is_counted(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    engine.run_blocks(10)
    pool.play(const(0.01), start_s=1.0 * B / SR)  # long past
    engine.run_blocks(5)
    assert list(onsets(engine.render_to_array()[:, 0])) == [10 * B]
    assert pool.late_starts == 1


def test_velocity_curve() -> None:
    assert velocity_gain(1.0) == pytest.approx(1.0)
    assert velocity_gain(0.0) == 0.0  # velocity 0 is silence
    assert 20 * np.log10(velocity_gain(0.5)) == pytest.approx(-12.04, abs=0.01)  # GM curve
    assert 20 * np.log10(velocity_gain(0.1)) == pytest.approx(-40.0)
    assert velocity_gain(2.0) == pytest.approx(1.0)  # clamped
    g = [velocity_gain(v) for v in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in zip(g, g[1:], strict=False))


def test_velocity_and_pan_in_the_output(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    pool.play(const(0.1, 0.4), start_s=0.1, velocity=1.0, pan=-1.0)
    pool.play(const(0.1, 0.4), start_s=0.3, velocity=0.5, pan=1.0)
    pool.play(const(0.1, 0.4), start_s=0.5, velocity=1.0, pan=0.0)
    engine.advance_to(0.7)
    out = engine.render_to_array()

    def seg(t_s: float) -> np.ndarray:
        return out[int((t_s + 0.02) * SR): int((t_s + 0.08) * SR)]

    left = seg(0.1)
    assert np.allclose(left[:, 0], 0.4, atol=1e-5) and np.abs(left[:, 1]).max() == 0.0
    right = seg(0.3)
    assert np.abs(right[:, 0]).max() < 1e-6 and np.allclose(right[:, 1], 0.1, atol=1e-5)
    centre = seg(0.5)  # equal power: -3 dB each side
    assert np.allclose(centre, 0.4 / np.sqrt(2.0), atol=1e-4)


def test_length_s_ends_with_a_release_fade(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    start = 0.1
    pool.play(const(1.0, 0.5), start_s=start, velocity=1.0, pan=-1.0, length_s=0.2)
    engine.advance_to(0.6)
    x = engine.render_to_array()[:, 0]
    s0 = int(start * SR)
    cut = s0 + int(0.2 * SR)
    end = cut + int(round(RELEASE_S * SR))
    assert np.allclose(x[s0:cut], 0.5, atol=1e-5)  # untouched up to length_s
    fade = x[cut:end]
    assert np.all(np.diff(fade) < 0) and fade[0] < 0.5 and fade[-1] < 0.02  # smooth ramp down
    assert np.abs(x[end:]).max() == 0.0  # silent after the release
    assert pool.in_use() == 0


def test_stealing_the_oldest_when_full(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    idx = [pool.play(const(1.0, 0.01), start_s=0.05 + 0.01 * i) for i in range(32)]
    assert sorted(idx) == list(range(32)) and pool.stolen == 0
    engine.advance_to(0.5)
    assert pool.in_use() == 32
    v = pool.play(const(1.0, 0.01), start_s=0.6)  # 33rd note
    assert pool.stolen == 1 and v == idx[0]  # the oldest note's voice
    engine.advance_to(0.7)
    assert pool.in_use() == 32 and pool.played == 33


def test_stolen_voice_does_not_click() -> None:
    engine2 = AudioEngine("offline", sample_rate=SR, buffer_size=B)
    pool = VoicePool(engine2, n_voices=1, max_note_s=2.0)
    try:
        t = np.arange(SR) / SR
        tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        pool.play(tone, start_s=0.1, pan=-1.0)
        engine2.advance_to(0.2)  # the first note sounds when the second one arrives
        switch = int(0.3 * SR) + 100
        pool.play(tone, start_s=switch / SR, pan=-1.0)  # steals the sounding voice
        engine2.advance_to(0.5)
        x = engine2.render_to_array()[:, 0]
        assert pool.stolen == 1
        assert np.abs(x[switch - 50: switch]).max() > 0.4  # the old note sounded up to the switch
        # A hard cut of a 0.5 sine would jump by up to 0.5; a 220 Hz sine moves < 0.03 per sample.
        jumps = np.abs(np.diff(x[switch - 50: switch + 200]))
        assert jumps.max() < 0.06
        # And the old note is really gone after the 5 ms fade: only the new tone remains.
        later = x[switch + 300: switch + 2000]
        assert np.allclose(later, tone[300:2000], atol=1e-4)
    finally:
        engine2.close()


def test_panic_silences_within_one_block(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    for i in range(8):
        pool.play(const(1.5, 0.1), start_s=0.05, pan=-1.0 + i / 4)
    pool.play(const(0.1, 0.1), start_s=0.9)  # pending: must never sound
    engine.advance_to(0.3)
    n_before = engine.blocks
    pool.panic()
    engine.run_blocks(1)  # the fade block
    engine.advance_to(1.2)
    out = engine.render_to_array()
    jumps = np.abs(np.diff(out[n_before * B - 1: (n_before + 2) * B, 0]))
    assert np.abs(out[(n_before + 1) * B:]).max() == 0.0
    assert np.abs(out[n_before * B - 10: n_before * B]).max() > 0.1  # it was sounding
    assert jumps.max() < 0.2  # faded, not cut (8 x 0.1 would jump by ~0.5)
    assert pool.in_use() == 0


def test_release_ends_only_the_tagged_notes_with_a_fade(
        rig: tuple[AudioEngine, VoicePool]) -> None:
    """A key let go: its notes fade out over RELEASE_S from the next block, others ring on."""
    engine, pool = rig
    pool.play(const(1.0, 0.3), start_s=0.05, pan=-1.0, tag=60)
    pool.play(const(1.0, 0.2), start_s=0.05, pan=1.0, tag=64)
    engine.advance_to(10 * B / SR)
    pool.release(60)
    engine.advance_to(0.9)
    out = engine.render_to_array()
    left, right = out[:, 0], out[:, 1]
    cut = 10 * B
    end = cut + int(round(RELEASE_S * SR))
    assert np.allclose(left[int(0.06 * SR): cut], 0.3, atol=1e-5)  # untouched before
    assert np.all(np.diff(left[cut:end]) < 0) and left[end - 1] < 0.02  # a fade, not a cut
    assert np.abs(left[end:]).max() < 1e-6  # (the right note leaks 1e-8 through the pan)
    assert np.allclose(right[int(0.06 * SR): int(0.9 * SR)], 0.2, atol=1e-5)  # rang on
    pool.release(99)  # nothing with that tag: nothing happens
    engine.advance_to(1.2)
    assert np.allclose(engine.render_to_array()[int(0.9 * SR): int(1.04 * SR), 1], 0.2,
                       atol=1e-5)


def test_release_all_drops_pending_lets_sounding_ring(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    pool.play(const(0.5, 0.2), start_s=0.05, pan=-1.0)
    pool.play(const(0.1, 0.2), start_s=0.4, pan=1.0)
    engine.advance_to(0.2)
    assert pool.release_all() == 1
    engine.advance_to(0.7)
    out = engine.render_to_array()
    assert np.allclose(out[int(0.1 * SR): int(0.5 * SR), 0], 0.2, atol=1e-5)  # rang on
    assert np.abs(out[:, 1]).max() < 1e-6  # the pending right-hand note never played


def test_limiter_keeps_a_32_note_chord_below_full_scale(
        rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    t = np.arange(SR) / SR
    for i in range(32):
        f = 110.0 * 2 ** (i / 12)
        pool.play((0.9 * np.sin(2 * np.pi * f * t)).astype(np.float32), start_s=0.1, velocity=1.0)
    engine.advance_to(1.2)
    out = engine.render_to_array()
    assert np.abs(out).max() <= LIMIT_CLIP < 1.0
    assert np.abs(out[int(0.2 * SR):int(1.0 * SR)]).max() > 0.5  # limited, not muted


def test_bad_input_is_a_config_error(rig: tuple[AudioEngine, VoicePool]) -> None:
    _, pool = rig
    with pytest.raises(ConfigError):
        pool.play(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ConfigError):
        pool.play(const(0.1), length_s=-1.0)


def test_play_from_another_thread_while_blocks_run(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    errors: list[BaseException] = []

    def player() -> None:
        try:
            for i in range(200):
                pool.play(const(0.02, 0.01), start_s=0.01 + i * 0.004)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    th = threading.Thread(target=player)
    th.start()
    engine.advance_to(1.0)
    th.join()
    engine.advance_to(1.2)
    assert not errors and pool.played == 200
    assert engine.hook_errors == 0


def test_benches_run_and_report_sane_numbers() -> None:
    cpu = bench_voices_cpu_pct(n=8, seconds=0.5)
    assert 0.0 < cpu < 100.0
    lat = bench_trigger_latency_ms(n_notes=4)
    # Never before the call; at most one block (10.7 ms) plus scheduling slack on a busy box.
    assert 0.0 <= lat["mean_ms"] <= lat["max_ms"] < 60.0


def test_a_release_ends_only_notes_played_before_it_from_its_sample(
        rig: tuple[AudioEngine, VoicePool]) -> None:
    """Note off then note on of the same key in one block: the new note sounds. A release
    timed inside a block fades from its own sample."""
    engine, pool = rig
    pool.play(const(1.0, 0.3), start_s=0.05, pan=-1.0, tag=60)
    engine.advance_to(0.2)
    pool.release(60)  # the key let go...
    pool.play(const(1.0, 0.2), start_s=None, pan=1.0, tag=60)  # ...and struck again at once
    pool.release(60, at_s=0.5 + 7 / SR)  # a timed release of the new one, mid-block
    engine.advance_to(0.8)
    out = engine.render_to_array()
    left, right = out[:, 0], out[:, 1]
    assert np.abs(left[int(0.25 * SR):]).max() < 1e-6  # the first note ended at 0.2 s
    at = int(round((0.5 + 7 / SR) * SR))
    assert np.allclose(right[int(0.25 * SR): at], 0.2, atol=1e-5)  # the second sounded...
    assert right[at + 1] < 0.2 and np.abs(right[at + int(RELEASE_S * SR) + 1:]).max() < 1e-6
