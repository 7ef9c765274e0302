"""The engine end to end, offline: commands -> scheduler -> voice pool -> audio, with a model
stand-in whose notes are known (tests/fakes.py), so timing and routing are checked exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app import OfflineRig  # noqa: E402
from pgesam_live.session import Journal, make_header, replay_schedule  # noqa: E402
from pgesam_live.settings import REPO_ROOT, Settings  # noqa: E402
from tests.fakes import FakeSynth  # noqa: E402

SR = 24000


def make_rig(**changes: object) -> OfflineRig:
    s = Settings().replace(audio="offline", cache_spill=False, **changes)
    return OfflineRig(s, synth=FakeSynth(SR))


def spy_starts(rig: OfflineRig) -> list[float]:
    """Record the start time of every note the scheduler hands to the pool."""
    starts: list[float] = []
    sink = rig.engine.scheduler.sink
    orig = sink.play

    def play(samples, start_s, velocity, pan, length_s):  # type: ignore[no-untyped-def]
        starts.append(start_s)
        return orig(samples, start_s, velocity, pan, length_s)

    sink.play = play  # type: ignore[method-assign]
    return starts


def first_nonzero(x: np.ndarray, start: int = 0) -> int:
    nz = np.flatnonzero(np.abs(x[start:]).max(axis=1) > 1e-6)
    return int(nz[0]) + start if len(nz) else -1


def test_sequence_notes_start_on_their_exact_sample() -> None:
    rig = make_rig()
    starts = spy_starts(rig)
    assert rig.engine.submit("at 0.2 0.1").ok
    r = rig.engine.submit('seq arp "C4 ~ G4 ~" 0.5', at_s=0.0)
    assert r.ok, r.text
    rig.run_until(2.2)
    # 120 bpm, step 0.5 beat = 0.25 s; rests at steps 1 and 3; a fresh clock starts at 0.
    expected = [0.0, 0.5, 1.0, 1.5, 2.0]
    assert starts[: len(expected)] == pytest.approx(expected, abs=1e-9)
    out = rig.audio.render_to_array()
    # The first note's first sample is exactly at sample 0 (sample-accurate voice pool).
    assert first_nonzero(out) == 0
    assert rig.engine.snapshot()["late_notes"] == 0
    rig.close()


def test_immediate_note_at_odd_time_starts_in_its_block() -> None:
    rig = make_rig()
    rig.engine.submit("at 0 0")
    assert rig.engine.submit("note 60 0.9", at_s=0.3337).ok
    rig.run_until(1.0)
    out = rig.audio.render_to_array()
    onset = first_nonzero(out)
    block = rig.audio.buffer_size
    # Commands are applied between blocks: the note starts at the block holding its time.
    assert onset == (int(0.3337 * SR) // block) * block
    rig.close()


def test_bounce_of_a_demo_patch_is_byte_identical(tmp_path: Path) -> None:
    patch = REPO_ROOT / "patches" / "drift-arpeggio.yaml"
    outs = []
    for i in range(2):
        rig = make_rig()
        rig.submit_or_fail(f"load {patch}", "patch", at_s=0.0)
        rig.run_until(3.0)
        outs.append(rig.save(tmp_path / f"b{i}.wav").read_bytes())
        rig.close()
    assert outs[0] == outs[1]
    assert len(outs[0]) > 1000


def test_journal_replay_gives_the_same_audio(tmp_path: Path) -> None:
    lines = [(0.0, "at 0.3 -0.2"), (0.05, "play C4 E4 vel 0.7"), (0.4, 'seq a "G4 ~ A4" 0.5'),
             (1.1, "tempo 90"), (1.3, "glide -0.5 0.5 2"), (2.0, "stop a"), (2.2, "note 67")]
    j = Journal(tmp_path / "s.jsonl", make_header("fake", 0, 120.0))
    rig = make_rig()
    rig.engine.add_listener(j)
    for t, line in lines:
        assert rig.engine.submit(line, src="osc", at_s=t).ok
    rig.run_until(3.5)
    live = rig.audio.render_to_array()
    rig.close()
    j.close()
    _, schedule = replay_schedule(tmp_path / "s.jsonl")
    assert [c.to_line() for _, _, c in schedule][0] == "at 0.3 -0.2"
    rig2 = make_rig()
    for t, src, cmd in schedule:
        assert rig2.engine.submit(cmd, src=src, at_s=t).ok
    rig2.run_until(3.5)
    assert np.array_equal(live, rig2.audio.render_to_array())
    rig2.close()


def test_bad_patch_while_playing_names_line_and_key_and_keeps_the_old_one(
        tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text('pgesam: 1\nsequences:\n  s:\n    notes: "C4 E4"\n    step: 0.5\n'
                    '    repeat: 0\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text('pgesam: 1\nsequences:\n  s:\n    notes: "C4 H4"\n    step: 0.5\n')
    rig = make_rig()
    starts = spy_starts(rig)
    assert rig.engine.submit(f"load {good}").ok
    rig.run_until(1.0)
    r = rig.engine.submit(f"load {bad}")
    assert not r.ok
    assert "bad.yaml:4" in r.text and "sequences.s.notes" in r.text
    n = len(starts)
    rig.run_until(3.0)
    assert len(starts) > n  # the running patch plays on
    assert rig.engine.snapshot()["sequences"] == ["s"]
    rig.close()


@pytest.mark.parametrize("line", ["at nowhere", "tempo 900", "play H9", "frobnicate",
                                  "stop ghost", "play 100", 'seq x "C4" -1', "load nope"])
def test_bad_lines_are_one_line_replies(line: str) -> None:
    rig = make_rig()
    r = rig.engine.submit(line)
    assert not r.ok and "\n" not in r.text and r.text
    assert rig.engine.submit("play C4").ok  # still alive
    rig.close()


def test_panic_silences_within_a_block_and_hush_lets_notes_ring() -> None:
    rig = make_rig()
    rig.engine.submit("at 0 0")
    rig.engine.submit('seq a "C4 E4 G4" 0.25', at_s=0.0)
    rig.engine.submit("hush", at_s=0.5)
    rig.run_until(0.9)
    out = rig.audio.render_to_array()
    # After hush the last note still rings (FakeSynth notes last 1 s)...
    assert np.abs(out[int(0.8 * SR):]).max() > 0.05
    rig.engine.submit("panic", at_s=1.0)
    rig.run_until(1.5)
    out = rig.audio.render_to_array()
    block = rig.audio.buffer_size
    after = out[int(1.0 * SR) + 2 * block:]
    assert np.abs(after).max() < 1e-4
    rig.close()


def test_status_and_bookmarks() -> None:
    rig = make_rig()
    rig.engine.submit("at 0.25 -0.5")
    rig.engine.submit("mark warm")
    rig.run_until(0.1)
    snap = rig.engine.snapshot()
    assert snap["bookmarks"]["warm"] == [0.25, -0.5]
    assert "warm" in rig.engine.point_names()
    assert rig.engine.submit("at warm").ok
    r = rig.engine.submit("status")
    assert r.ok and "bpm" in r.text
    rig.close()
