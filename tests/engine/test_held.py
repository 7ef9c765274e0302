"""Held notes through the engine (offline): `note P V hold` ... `release P` sounds exactly as
long as it is held and then goes into the note's own release; its journal replays to the same
length; a note of a length releases the same way; a held note follows the point."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app.build import OfflineRig  # noqa: E402
from pgesam_live.render.loop import envelope_db  # noqa: E402
from pgesam_live.sessions.journal import Journal, make_header, replay_schedule  # noqa: E402
from pgesam_live.settings import Settings  # noqa: E402

SR = 24000


def fake_note(pitch: int, x: float) -> np.ndarray:
    """Held 3 s, released over 1 s (tau 0.15 s), as the model's notes are: a fundamental and
    a third harmonic whose share grows with x (so the point is heard; the renderer plays
    every note at one peak level)."""
    f0 = 440.0 * 2 ** ((int(pitch) - 69) / 12)
    t = np.arange(4 * SR) / SR
    env = np.minimum(1.0, t / 0.02) * np.where(t < 3.0, 1.0, np.exp(-(t - 3.0) / 0.15))
    ph = 2 * np.pi * f0 * t
    return (0.3 * env * (np.sin(ph) + (x + 1.0) * np.sin(3 * ph))).astype(np.float32)


def third_share_db(x: np.ndarray, f0: float, t0_s: float, t1_s: float) -> float:
    """Level of the third harmonic re the fundamental over [t0_s, t1_s], dB."""
    seg = x[int(t0_s * SR): int(t1_s * SR)].astype(np.float64)
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    hz = np.fft.rfftfreq(len(seg), 1 / SR)

    def at(f: float) -> float:
        return float(spec[np.abs(hz - f) < 5].max())

    return 20 * np.log10(at(3 * f0) / at(f0))


class HeldFakeSynth:
    """A model stand-in whose notes are held 3 s and released over 1 s, as the model's are
    (fake_note)."""

    def __init__(self) -> None:
        self.sample_rate = SR
        self.duration_s = 4.0
        self.pitch_range = (48, 72)
        self.model_id = "fakeheld-00000000"
        self.codec_name = "fake"
        self.training_points = [{"name": "a", "x": 0.5, "y": 0.5, "family": "organ"}]
        self.calls = 0

    def render(self, points: np.ndarray, pitches: np.ndarray, seed: int = 0) -> np.ndarray:
        self.calls += 1
        out = [fake_note(int(p), float(pt[0])) for pt, p in zip(points, pitches, strict=True)]
        return np.stack(out)


def make_rig(**changes: object) -> OfflineRig:
    s = Settings().replace(audio="offline", cache_spill=False, **changes)
    return OfflineRig(s, synth=HeldFakeSynth())


def sounding_until(x: np.ndarray, below_db: float = -60.0) -> float:
    """Seconds until the last 10 ms window above below_db re the loudest."""
    env = envelope_db(x, SR)
    loud = np.flatnonzero(env > env.max() + below_db)
    return float(loud[-1] * 0.01) if len(loud) else 0.0


def held_session(lines: list[tuple[float, str]], until_s: float, src: str = "midi",
                 journal: Path | None = None) -> np.ndarray:
    rig = make_rig()
    j = Journal(journal, make_header("fake", 0, 120.0)) if journal is not None else None
    if j is not None:
        rig.engine.add_listener(j)
    for t, line in lines:
        r = rig.engine.submit(line, src=src, at_s=t)
        assert r.ok, r.text
    rig.run_until(until_s)
    out = rig.audio.render_to_array()[:, 0]
    rig.close()
    if j is not None:
        j.close()
    return out


def test_a_held_note_of_ten_seconds_sounds_ten_seconds_and_releases(tmp_path: Path) -> None:
    """A MIDI key held 10 s (the journal form MIDI writes: `note P V hold`, `release P`)."""
    lines = [(0.0, "at 0 0"), (0.5, "note C4 0.8 hold"), (10.5, "release C4")]
    out = held_session(lines, 12.5, journal=tmp_path / "s.jsonl")
    env = envelope_db(out, SR)
    level = env[100:1000]  # 1 s .. 10 s
    assert level.max() - level.min() < 1.5  # it holds its level while held (a 4 s render)
    assert env[1040] > env[1000] - 3  # still sounding just before the key-up at 10.5 s...
    after = env[1080] - env[1040]  # ...and into its own release after it (tau 0.15 s)
    assert -30.0 < after < -6.0  # a release, not a cut (a 30 ms fade would be silent)
    assert sounding_until(out) == pytest.approx(10.5 + 0.9, abs=0.2)  # release ~ -58 dB by 0.9 s
    # The journal has the held form and replays to the same length, sample for sample.
    text = (tmp_path / "s.jsonl").read_text()
    assert "note 60 0.8 hold" in text and "release 60" in text
    _, schedule = replay_schedule(tmp_path / "s.jsonl")
    replay = held_session([(t, c.to_line()) for t, _, c in schedule], 12.5)
    assert np.array_equal(out, replay)


def test_a_plain_note_stays_a_one_shot() -> None:
    out = held_session([(0.0, "at 0 0"), (0.5, "note C4 0.8")], 8.0)
    assert sounding_until(out) == pytest.approx(0.5 + 3.0 + 0.9, abs=0.2)  # the render's 4 s


def test_a_release_of_its_pitch_does_not_cut_a_one_shot() -> None:
    """A one-shot plays the model's whole note: a key-up of the same pitch (a MIDI or web key
    let go while `note C4 0.8` sounds) ends only held notes."""
    alone = held_session([(0.0, "at 0 0"), (0.5, "note C4 0.8")], 6.0)
    released = held_session([(0.0, "at 0 0"), (0.5, "note C4 0.8"), (1.5, "release C4")], 6.0)
    assert np.array_equal(alone, released)


def test_a_bounce_releases_a_key_its_journal_never_let_go() -> None:
    """A replayed journal that ends with a key down (cut off, or from before quit released
    it): the bounce ends the note in its own release, not a fade at the ring-out's end."""
    rig = make_rig()
    assert rig.engine.submit("at 0 0", src="midi", at_s=0.0).ok
    assert rig.engine.submit("note C4 0.8 hold", src="midi", at_s=0.5).ok
    assert rig.engine.submit("at 0.1 0", src="midi", at_s=5.0).ok  # the journal's last line
    end_s = rig.run_to_end(5.0, 5.0 + 4.5)  # as `replay --out` runs past it
    out = rig.audio.render_to_array()[: int(end_s * SR), 0]
    rig.close()
    assert end_s < 5.0 + 1.5  # the release rang (0.9 s), not the whole 12 s ring-out
    env = envelope_db(out, SR)
    assert env[480] > env[200] - 1.5  # held until the journal ends (5 s)...
    assert sounding_until(out) == pytest.approx(5.0 + 0.1 + 0.9, abs=0.25)  # ...then released


def test_a_patch_release_acts_at_its_beat_whatever_the_look_ahead(tmp_path: Path) -> None:
    p = tmp_path / "rel.yaml"
    p.write_text('pgesam: 1\ntempo: 120\ncommands:\n  - {at: 1, do: "note C4 0.8 hold"}\n'
                 '  - {at: 2, do: "release C4"}\n')
    outs = []
    for lookahead in (0.2, 0.6):
        rig = make_rig(lookahead_s=lookahead)
        assert rig.engine.submit(f"load {p}", at_s=0.0).ok
        rig.run_until(2.5)
        outs.append(rig.audio.render_to_array()[:, 0])
        rig.close()
    env = envelope_db(outs[0], SR)
    assert env[60:99].min() > env.max() - 1.5  # sounding until beat 2 (1.0 s)...
    assert -30.0 < env[130] - env[99] < -6.0  # ...then in its own release
    assert np.array_equal(outs[0], outs[1])


def test_a_note_with_a_length_releases_into_its_own_release() -> None:
    out = held_session([(0.0, "at 0 0"), (0.5, "note C4 0.8 6")], 9.0)  # longer than 4 s
    env = envelope_db(out, SR)
    assert env[640] > env[400] - 1.5  # held past the render's own 3 s
    assert sounding_until(out) == pytest.approx(6.5 + 0.9, abs=0.2)


def test_a_note_length_in_seconds_is_seconds_across_a_pending_tempo_change() -> None:
    """`tempo 30` waits for the next beat: a 6 s note started with it, before that beat,
    still lasts 6 s (it was 4.8 s when its beats were counted at the coming tempo)."""
    out = held_session([(0.0, "at 0 0"), (0.6, "tempo 30"), (0.6, "note C4 0.8 6")], 9.0)
    assert sounding_until(out) == pytest.approx(6.6 + 0.9, abs=0.2)


@pytest.mark.parametrize("line", ["note C4 0.8 hold", "note C4 0.8 2"])
def test_panic_after_a_note_in_one_block_silences_it_live_as_in_a_replay(line: str) -> None:
    """`note` then `panic` pasted together (one audio block) end in silence, as the same two
    lines at one time in a replay do: the queued note is dropped, not played after."""
    replayed = held_session([(0.0, "at 0 0"), (0.5, line), (0.5, "panic")], 2.0)
    assert np.abs(replayed[int(0.5 * SR):]).max() == 0.0
    rig = make_rig()
    assert rig.engine.submit("at 0 0").ok
    rig.run_until(0.5)
    assert rig.engine.submit(line).ok and rig.engine.submit("panic").ok
    rig.run_until(2.0)
    live = rig.audio.render_to_array()[:, 0]
    rig.close()
    assert np.abs(live[int(0.5 * SR):]).max() == 0.0


def test_release_before_the_loop_goes_into_the_release_at_once() -> None:
    out = held_session([(0.0, "at 0 0"), (0.5, "note C4 0.8 hold"), (0.8, "release C4")], 3.0)
    assert sounding_until(out) == pytest.approx(0.8 + 0.9, abs=0.2)


def test_a_held_note_follows_the_point_without_a_click() -> None:
    lines = [(0.0, "at -0.5 0"), (0.5, "note C4 0.8 follow"), (4.0, "at 0.5 0"),
             (8.0, "release C4")]
    out = held_session(lines, 9.5)
    c4 = 261.63
    # At x = -0.5 the third harmonic is 6 dB under the fundamental, at x = 0.5 3.5 dB over.
    assert third_share_db(out, c4, 3.0, 3.9) == pytest.approx(-6.0, abs=1.0)
    assert third_share_db(out, c4, 5.0, 7.0) == pytest.approx(3.5, abs=1.0)
    d = np.abs(np.diff(out[int(3.5 * SR): int(5 * SR)].astype(np.float64)))
    own = np.abs(np.diff(out[int(5 * SR): int(6 * SR)].astype(np.float64))).max()
    assert d.max() <= 1.2 * own  # the crossfade makes no step larger than the sound's own


def test_a_held_note_without_follow_keeps_its_timbre() -> None:
    lines = [(0.0, "at -0.5 0"), (0.5, "note C4 0.8 hold"), (4.0, "at 0.5 0"),
             (8.0, "release C4")]
    assert third_share_db(held_session(lines, 9.5), 261.63, 5.0, 7.0) == pytest.approx(
        -6.0, abs=1.0)


def test_follow_on_makes_every_held_note_follow() -> None:
    lines = [(0.0, "at -0.5 0"), (0.1, "follow on"), (0.5, "note C4 0.8 hold"),
             (4.0, "at 0.5 0"), (8.0, "release C4")]
    assert third_share_db(held_session(lines, 9.5), 261.63, 5.0, 7.0) == pytest.approx(
        3.5, abs=1.0)


def test_follow_on_takes_a_note_already_held_but_not_one_at_its_own_point() -> None:
    lines = [(0.0, "at -0.5 0"), (0.5, "note C4 0.8 hold"), (0.5, "note_at -0.5 0 G4 0.8 hold"),
             (2.0, "follow on"), (4.0, "at 0.5 0"), (8.0, "release C4"), (8.0, "release G4")]
    out = held_session(lines, 9.5)
    assert third_share_db(out, 261.63, 5.0, 7.0) == pytest.approx(3.5, abs=1.0)
    # G4 (392 Hz; its third, 1176 Hz, is clear of C4's partials) stays at its own point.
    assert third_share_db(out, 392.0, 5.0, 7.0) == pytest.approx(-6.0, abs=1.0)


def test_bad_modes_are_refused_with_the_fix() -> None:
    rig = make_rig()
    try:
        r = rig.engine.submit("note C4 0.8 sustain")
        assert not r.ok and "hold" in r.text
        r = rig.engine.submit("follow maybe")
        assert not r.ok and "follow on" in r.text
    finally:
        rig.close()


def test_status_says_which_keys_are_held_now_beside_the_running_count() -> None:
    rig = make_rig()
    try:
        e = rig.engine
        for t, line in [(0.0, "at 0 0"), (0.1, "note C4 0.8 hold"), (0.2, "note E4 0.8 hold"),
                        (1.0, "release C4")]:
            assert e.submit(line, src="midi", at_s=t).ok
        rig.run_until(0.5)
        assert e.snapshot()["held_now"] == [60, 64]
        rig.run_until(1.5)
        st = e.snapshot()
        assert st["held_now"] == [64] and st["held_notes"] == 2
        assert e.submit("panic", src="repl").ok
        rig.run_until(1.7)
        assert e.snapshot()["held_now"] == []
    finally:
        rig.close()
