"""Held notes in the voice pool (offline pyo server): written ahead as they play, re-anchored
past the table's length, released into their own release, moved by `follow`, silenced by
panic, stolen like any note."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pgesam_live.audio.server import AudioEngine
from pgesam_live.audio.voices import VoicePool
from pgesam_live.errors import ConfigError
from pgesam_live.render.loop import Playhead, Sustain, envelope_db, held_output, level_db
from tests.render.test_loop import clicks, note

SR = 24000
B = 256


@pytest.fixture
def rig() -> Iterator[tuple[AudioEngine, VoicePool]]:
    engine = AudioEngine("offline", sample_rate=SR, buffer_size=B)
    engine.boot()
    pool = VoicePool(engine, n_voices=4, max_note_s=1.0, limiter=False)  # a short table
    try:
        yield engine, pool
    finally:
        engine.close()


@pytest.fixture(scope="module")
def sustain() -> Sustain:
    return Sustain.analyse(note(220.0), SR, 220.0)


def test_a_held_note_plays_exactly_its_playhead_for_ten_seconds_then_releases(
        rig: tuple[AudioEngine, VoicePool], sustain: Sustain) -> None:
    engine, pool = rig
    start = 10 * B + 37
    pool.play_held(Playhead(sustain), start_s=start / SR, velocity=1.0, pan=-1.0, tag=60)
    engine.advance_to((start + 9.9 * SR) / SR)
    pool.release(60, at_s=(start + 10 * SR) / SR)  # a timed key-up, to the sample
    engine.advance_to((start + 11 * SR) / SR + 0.1)
    out = engine.render_to_array()[:, 0]  # hard left: the note at unit gain
    want = held_output(sustain, 10.0, after_s=1.0)
    got = out[start: start + len(want)]
    assert np.allclose(got, want, atol=1e-5)  # sample for sample, across re-anchors
    assert np.all(out[:start] == 0)
    assert pool.reanchors >= 9  # a 1 s table held for 10 s
    assert level_db(got[int(9.5 * SR): 10 * SR]) > level_db(got[int(10.5 * SR):]) + 30
    assert pool.in_use() == 0  # over after its release


def test_follow_moves_a_held_note_to_another_timbre(
        rig: tuple[AudioEngine, VoicePool], sustain: Sustain) -> None:
    engine, pool = rig
    other = Sustain.analyse(note(220.0) * 0.5, SR, 220.0)
    pool.play_held(Playhead(sustain), start_s=0.0, velocity=1.0, pan=-1.0, tag=57)
    engine.advance_to(5.0)
    pool.follow(57, other)
    pool.follow(99, other)  # no such note: nothing happens
    engine.advance_to(7.0)
    out = engine.render_to_array()[:, 0]
    assert pool.follows == 1
    assert level_db(out[int(6.0 * SR): 7 * SR]) - level_db(out[4 * SR: 5 * SR]) == \
        pytest.approx(-6.0, abs=0.5)
    own = np.abs(np.diff(sustain.audio[SR: 2 * SR].astype(np.float64))).max()
    assert clicks(out[: 7 * SR], 1.5 * own) == 0


def test_panic_silences_a_held_note_for_good(
        rig: tuple[AudioEngine, VoicePool], sustain: Sustain) -> None:
    engine, pool = rig
    pool.play_held(Playhead(sustain), velocity=1.0, tag=60)
    engine.advance_to(2.0)
    pool.panic()
    engine.advance_to(4.0)
    out = engine.render_to_array()[:, 0]
    assert np.abs(out[int(2.1 * SR):]).max() == 0.0
    assert pool.in_use() == 0


def test_a_decaying_held_note_ends_by_itself(rig: tuple[AudioEngine, VoicePool]) -> None:
    engine, pool = rig
    s = Sustain.analyse(note(220.0, decay_db_per_s=-15.0), SR, 220.0)
    assert s.looped and s.silent_after is not None
    pool.play_held(Playhead(s), velocity=1.0, tag=60)
    engine.advance_to(s.silent_after / SR + 0.2)
    assert pool.in_use() == 0  # decayed away: the voice is free without a release
    lev = envelope_db(engine.render_to_array()[:, 0], SR)
    assert lev[400] < lev[100] - 40  # 15 dB per second for 3 s


def test_stealing_a_held_voice_ends_it(rig: tuple[AudioEngine, VoicePool],
                                      sustain: Sustain) -> None:
    engine, pool = rig
    for i in range(4):
        pool.play_held(Playhead(sustain), velocity=0.5, tag=60 + i)
    engine.advance_to(1.0)
    pool.play(np.full(SR // 10, 0.1, np.float32), velocity=1.0)  # steals the oldest
    engine.advance_to(2.0)
    assert pool.stolen == 1 and pool.in_use() == 3
    assert sorted(pool.held_tags()) == [61, 62, 63]


def test_a_held_drone_is_stolen_last(rig: tuple[AudioEngine, VoicePool],
                                     sustain: Sustain) -> None:
    """The oldest note is a held drone: a new note takes the oldest one-shot's voice."""
    engine, pool = rig
    pool.play_held(Playhead(sustain), start_s=0.0, velocity=0.5, tag=48)
    shots = [pool.play(np.full(SR, 0.1, np.float32), start_s=0.1 + 0.05 * i, tag=60 + i)
             for i in range(3)]
    engine.advance_to(0.5)
    assert pool.in_use() == 4
    assert pool.play(np.full(SR // 10, 0.1, np.float32), start_s=0.6) == shots[0]
    engine.advance_to(1.0)
    assert pool.stolen == 1 and pool.held_tags() == [48]


def test_play_held_refuses_what_is_not_a_playhead(rig: tuple[AudioEngine, VoicePool]) -> None:
    _, pool = rig
    with pytest.raises(ConfigError, match="playhead"):
        pool.play_held(np.zeros(10, np.float32))


def test_moves_faster_than_the_crossfade_make_no_click(
        rig: tuple[AudioEngine, VoicePool], sustain: Sustain) -> None:
    """A drag: moves every 20 ms, inside the previous move's crossfade (80 ms)."""
    engine, pool = rig
    # Other waveforms (inverted: no shift of the original matches them) at other levels.
    levels = [Sustain.analyse(note(220.0) * g, SR, 220.0) for g in (-0.9, 0.7, -0.5)]
    pool.play_held(Playhead(sustain), start_s=0.0, velocity=1.0, pan=-1.0, tag=57)
    engine.advance_to(4.0)
    for s in levels:
        pool.follow(57, s)
        engine.advance_to(engine.time_s() + 0.02)
    engine.advance_to(6.0)
    out = engine.render_to_array()[:, 0]
    own = np.abs(np.diff(sustain.audio[SR: 2 * SR].astype(np.float64))).max()
    assert clicks(out[: 6 * SR], 1.2 * own) == 0
    assert level_db(out[5 * SR: 6 * SR]) - level_db(out[3 * SR: 4 * SR]) == \
        pytest.approx(20 * np.log10(0.5), abs=0.5)
