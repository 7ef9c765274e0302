"""The engine end to end, offline: commands -> scheduler -> voice pool -> audio, with a model
stand-in whose notes are known (tests/fakes.py), so timing and routing are checked exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app.build import LIVE_PREROLL_S, OfflineRig  # noqa: E402
from pgesam_live.patches.schema import PatchValidationError, load_patch  # noqa: E402
from pgesam_live.sessions.journal import Journal, make_header, replay_schedule  # noqa: E402
from pgesam_live.settings import REPO_ROOT, Settings  # noqa: E402
from tests.fakes import FakeSynth  # noqa: E402

SR = 24000


def make_rig(preroll_s: float = 0.0, **changes: object) -> OfflineRig:
    s = Settings().replace(audio="offline", cache_spill=False, **changes)
    return OfflineRig(s, synth=FakeSynth(SR), preroll_s=preroll_s)


def spy_starts(rig: OfflineRig) -> list[float]:
    """Record the start time of every note the scheduler hands to the pool."""
    starts: list[float] = []
    sink = rig.engine.scheduler.sink
    orig = sink.play

    def play(samples, start_s, velocity, pan, length_s, tag=None):  # type: ignore[no-untyped-def]
        starts.append(start_s)
        return orig(samples, start_s, velocity, pan, length_s, tag)

    sink.play = play  # type: ignore[method-assign]
    held = rig.engine.held  # a note with a length (a gate) is a held note released at its end
    orig_held = held.play_held

    def play_held(audio, start_s, *args, **kw):  # type: ignore[no-untyped-def]
        starts.append(start_s)
        return orig_held(audio, start_s, *args, **kw)

    held.play_held = play_held  # type: ignore[method-assign]
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


def test_a_timed_note_starts_on_its_exact_sample() -> None:
    """A journal line or an OSC bundle at an odd time: applied in the block holding its
    time, the note starts on its own sample (not the block's first), and is journalled
    there."""
    rig = make_rig()
    lines: list[tuple[float, str]] = []
    rig.engine.add_listener(lambda ev: lines.append((ev["t"], ev["cmd"]))
                            if ev["kind"] == "command" else None)
    rig.engine.submit("at 0 0")
    assert rig.engine.submit("note 60 0.9", at_s=0.3337).ok
    rig.run_until(1.0)
    out = rig.audio.render_to_array()
    assert first_nonzero(out) == round(0.3337 * SR)
    assert lines[-1] == (0.3337, "note 60 0.9")
    rig.close()


def test_stop_drops_the_notes_of_the_look_ahead(tmp_path: Path) -> None:
    """`stop s` just before a beat: the note on that beat, already handed to the voice pool
    inside the look-ahead, does not start (a sounding one rings on)."""
    p = tmp_path / "beat.yaml"
    p.write_text('pgesam: 1\nsequences:\n  s:\n    timbre: [0.3, 0.1]\n    notes: "C4"\n'
                 '    step: 1\n    gate: 0.2\n    repeat: 0\n')
    rig = make_rig()
    starts = spy_starts(rig)
    assert rig.engine.submit(f"load {p}", at_s=0.0).ok
    assert rig.engine.submit("stop s", at_s=2.42).ok
    rig.run_until(4.0)
    out = rig.audio.render_to_array()
    rig.close()
    assert 2.5 in starts  # it was handed over inside the look-ahead...
    assert np.abs(out[int(2.45 * SR):]).max() < 1e-6  # ...and never sounded


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
    assert r.ok and "tempo 120" in r.text and r.data is not None  # the one status line
    rig.close()


def test_lines_see_what_the_lines_before_them_did() -> None:
    """A script's lines apply in order: each is checked against the state the accepted lines
    before it leave, not the state of the last audio block."""
    rig = make_rig()
    e = rig.engine
    for line in ["at 0.3 0.1", "mark nice", "at 0 0", "at nice", 'seq foo "C4 E4" 0.5',
                 "stop foo"]:
        r = e.submit(line)
        assert r.ok, (line, r.text)
    r = e.submit("stop foo")  # the queued stop already ends it
    assert not r.ok and "foo" in r.text
    assert not e.submit("at nowhere").ok
    rig.run_until(0.1)
    assert e.snapshot()["point"] == [0.3, 0.1] and e.snapshot()["point_name"] == "nice"
    assert e.apply_errors == 0 and e.snapshot()["sequences"] == []
    rig.close()


def test_a_loaded_patch_is_usable_before_its_bar(tmp_path: Path) -> None:
    """`load` swaps at the next bar; its points and sequences can be named at once."""
    p1 = tmp_path / "one.yaml"
    p1.write_text('pgesam: 1\nsequences:\n  a:\n    notes: "C4 ~ ~ ~"\n    step: 1\n'
                  '    repeat: 0\n')
    p2 = tmp_path / "two.yaml"
    p2.write_text('pgesam: 1\npoints:\n  glass: [0.4, -0.3]\nsequences:\n  b:\n'
                  '    notes: "E4"\n    step: 1\n    repeat: 0\n  c:\n    notes: "G4"\n'
                  '    step: 1\n    repeat: 0\n')
    rig = make_rig()
    e = rig.engine
    assert e.submit(f"load {p1}").ok
    rig.run_until(0.6)  # beat ~1 of bar 1: the next load waits for beat 4
    for line in [f"load {p2}", "at glass", "stop c"]:
        r = e.submit(line)
        assert r.ok, (line, r.text)
    rig.run_until(0.7)
    assert e.snapshot()["patch"] == str(p1)  # still waiting for its bar
    assert "b" in e.sequence_names()
    assert e.submit("start b").ok and e.submit("at glass").ok
    rig.run_until(3.0)
    snap = e.snapshot()
    assert snap["patch"] == str(p2) and snap["point"] == [0.4, -0.3]
    assert snap["sequences"] == ["b"]  # c was stopped before it started
    assert e.apply_errors == 0
    rig.close()


def test_release_leaves_a_chord_played_now_whole(tmp_path: Path) -> None:
    """`play C4 E4` plays one-shots (the model's whole notes): a `release C4` (a key let go
    elsewhere) ends only held notes of C4 (tests/engine/test_held.py), never cuts these."""
    outs = []
    for lines in (("play C4 E4",), ("play C4 E4", "release C4")):
        rig = make_rig()
        assert rig.engine.submit("at 0 0", at_s=0.0).ok
        for k, line in enumerate(lines):
            assert rig.engine.submit(line, at_s=0.1 + 0.3 * k).ok
        rig.run_until(0.8)
        outs.append(rig.audio.render_to_array())
        rig.close()
    assert np.abs(outs[0][int(0.2 * SR):]).max() > 0.01
    assert np.array_equal(outs[0], outs[1])


def test_views_wait_for_the_commands_already_accepted() -> None:
    """While blocks run (the live instrument), status/map/points right after a command show
    it applied; with nothing driving the engine a view does not hang."""
    import threading
    import time

    rig = make_rig()
    e = rig.engine
    stop = threading.Event()

    def drive() -> None:
        t = 0.0
        while not stop.is_set():
            t += 0.01
            rig.run_until(t)
            time.sleep(0.005)

    th = threading.Thread(target=drive, daemon=True)
    th.start()
    try:
        for x in (0.25, -0.5, 0.75):
            assert e.submit(f"at {x} 0.1").ok
            assert e.snapshot()["point"] == [x, 0.1]
        assert e.submit("mark here").ok
        assert "here" in e.submit("points").text
    finally:
        stop.set()
        th.join()
    assert e.submit("at 0.5 0.5").ok
    t0 = time.monotonic()
    e.snapshot()  # no block comes: gives up quickly
    assert time.monotonic() - t0 < 0.3
    rig.close()


def test_osc_loads_only_patches_in_the_patch_folder(tmp_path: Path) -> None:
    outside = tmp_path / "other.yaml"
    outside.write_text("root:x:0:0:secret\n")
    good = tmp_path / "mine.yaml"
    good.write_text('pgesam: 1\nevents: [{at: 0, note: C4}]\n')
    rig = make_rig()
    e = rig.engine
    for line in [f"load {outside}", "load ../README.md", "load /etc/passwd"]:
        r = e.submit(line, src="osc")
        assert not r.ok and "secret" not in r.text and "root:" not in r.text
        assert "patch" in r.text
    assert e.submit("load drift-arpeggio", src="osc").ok  # by name, in the folder
    assert e.submit(f"load {good}").ok  # the performer at the REPL may load any file
    rig.close()


def test_prerender_announces_notes_already_cached() -> None:
    rig = make_rig()
    e = rig.engine
    ready: list[tuple[float, float, int]] = []
    e.add_listener(lambda ev: ready.append((ev["x"], ev["y"], ev["pitch"]))
                   if ev.get("kind") == "ready" else None)
    for p in (60, 61):
        key = e.cache.key(0.2, 0.1, p, 0)
        e.cache.put(key, rig.synth.render([[0.2, 0.1]], [p], seed=0)[0])
    assert e.submit("prerender 0.2 0.1 60 62").ok
    rig.run_until(0.05)
    assert sorted(p for _, _, p in ready)[:2] == [60, 61]
    rig.close()


def test_a_note_below_the_model_range_plays_re_pitched(tmp_path: Path) -> None:
    """The contract's own example has `note: G2` (43) for a 48..72 model: it sounds, at G2,
    from the model's C3 re-pitched; the model is never asked for 43."""
    p = tmp_path / "low.yaml"
    p.write_text("pgesam: 1\nevents:\n  - {at: 0, note: G2, velocity: 1.0}\n")
    rig = make_rig()
    asked: list[int] = []
    render = rig.synth.render

    def spy(points, pitches, seed=0):  # type: ignore[no-untyped-def]
        asked.extend(int(x) for x in pitches)
        return render(points, pitches, seed)

    rig.synth.render = spy
    assert rig.engine.submit(f"load {p}").ok
    rig.run_until(1.0)
    out = rig.audio.render_to_array()[:, 0]
    rig.close()
    assert asked == [48]
    x = out[int(0.1 * SR): int(0.9 * SR)]
    rises = np.flatnonzero((x[:-1] <= 0) & (x[1:] > 0))
    period = np.median(np.diff(rises))
    assert abs(period - SR / (440 * 2 ** ((43 - 69) / 12))) < 3  # G2's period, not C3's


def test_load_is_journalled_as_found_not_as_typed(tmp_path: Path) -> None:
    """A journal replays from any working directory: a patch of the patch folder is named
    within it, any other by its absolute path."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("pgesam: 1\nevents: [{at: 0, note: C4}]\n")
    rig = make_rig()
    lines: list[str] = []
    rig.engine.add_listener(lambda ev: lines.append(ev["cmd"]) if ev["kind"] == "command"
                            else None)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert rig.engine.submit("load mine.yaml").ok
        assert rig.engine.submit("load drift-arpeggio").ok
        assert rig.engine.submit(f"load {REPO_ROOT / 'patches' / 'morph.yaml'}").ok
    finally:
        os.chdir(cwd)
    rig.run_until(0.05)
    rig.close()
    assert lines == [f"load {mine.resolve()}", "load drift-arpeggio.yaml", "load morph.yaml"]


def test_front_end_counters_show_in_the_state() -> None:
    rig = make_rig()
    rig.engine.add_stat("osc_skewed", lambda: 3)
    rig.engine.add_stat("broken", lambda: 1 // 0)
    snap = rig.engine.snapshot()
    assert snap["osc_skewed"] == 3 and snap["broken"] == -1
    from pgesam_live.frontends.repl import status_line, status_text

    assert "osc skewed 3" in status_line(snap) and "osc_skewed: 3" in status_text(snap)
    rig.close()


def test_a_chord_larger_than_the_voice_pool_is_refused() -> None:
    rig = make_rig()
    r = rig.engine.submit("play " + " ".join(["C4"] * 40))
    assert not r.ok and "voice pool has 32" in r.text
    assert rig.engine.submit("play C4 E4 G4").ok
    rig.close()


def test_a_bounce_runs_to_the_end_of_the_music(tmp_path: Path) -> None:
    """Without --seconds a bounce ends when the last note (after any tempo change) has rung
    out, not at a length computed from the first tempo; a forced end fades, never clicks."""
    p = tmp_path / "slow.yaml"
    p.write_text('pgesam: 1\ntempo: 120\nsequences:\n  s:\n    timbre: [0.3, 0.1]\n'
                 '    notes: "C4 D4 E4 F4 G4 A4 B4 C5"\n    step: 1\n    gate: 0.2\n'
                 'commands:\n  - {at: 1, do: "tempo 40"}\n')
    rig = make_rig()
    starts = spy_starts(rig)
    assert rig.engine.submit(f"load {p}", at_s=0.0).ok
    end_s = rig.run_to_end(0.0, 600.0)
    out_path = rig.save(tmp_path / "x.wav", seconds=end_s)
    rig.close()
    assert len(starts) == 8 and starts[-1] == pytest.approx(0.5 + 6 * 1.5)
    assert 9.8 < end_s < 10.3  # the last note's gate (0.3 s) and fade, then one step
    import soundfile as sf

    x, _ = sf.read(str(out_path))
    assert np.abs(x[-24:]).max() < 1e-3


def test_the_line_check_follows_pending_patches_through_loads_and_hush(tmp_path: Path) -> None:
    """A queued hush keeps a pending patch loaded with nothing of it running, and a second
    load replaces the first: names that will not exist are refused at once, not accepted and
    then failed."""
    one = tmp_path / "one.yaml"
    one.write_text('pgesam: 1\npoints:\n  p1: [0.1, 0.1]\nsequences:\n  arp:\n'
                   '    notes: "C4"\n    repeat: 0\n')
    two = tmp_path / "two.yaml"
    two.write_text('pgesam: 1\nsequences:\n  bass:\n    notes: "C3"\n    repeat: 0\n')
    rig = make_rig()
    e = rig.engine
    assert e.submit(f"load {one}").ok and e.submit("hush").ok
    assert not e.submit("stop arp").ok  # nothing of it runs...
    assert e.submit("at p1").ok  # ...but it is loaded
    assert e.submit(f"load {one}").ok and e.submit(f"load {two}").ok
    assert not e.submit("stop arp").ok and e.submit("stop bass").ok
    assert e.submit("hush").ok and e.submit("start bass").ok
    rig.run_until(0.5)
    assert e.apply_errors == 0
    assert e.snapshot()["patch"].endswith("two.yaml")
    rig.close()
    rig = make_rig()
    e = rig.engine
    assert e.submit(f"load {one}").ok and e.submit("panic").ok and e.submit("start arp").ok
    rig.run_until(0.5)
    assert e.apply_errors == 0 and "arp" in e.snapshot()["sequences"]
    rig.close()


def test_stop_ends_a_sequence_being_replaced_too() -> None:
    rig = make_rig()
    e = rig.engine
    starts = spy_starts(rig)
    assert e.submit('seq arp "C4 E4" 0.25', at_s=0.0).ok
    assert e.submit('seq arp "G4 B4" 0.25', at_s=2.3).ok  # takes over at the next bar (4 s)
    assert e.submit("stop arp", at_s=2.5).ok
    rig.run_until(5.0)
    rig.close()
    assert not [t for t in starts if t > 2.5 + 0.2 + 1e-6]  # nothing after the look-ahead


def test_status_shows_the_tempo_just_set() -> None:
    """`tempo 96` then `status`: 96, though it takes effect on the coming beat."""
    rig = make_rig()
    assert rig.engine.submit('seq a "C4" 1', at_s=0.0).ok
    rig.run_until(1.3)
    assert rig.engine.submit("tempo 96").ok
    rig.run_until(1.32)
    snap = rig.engine.snapshot()
    assert snap["tempo_bpm"] == 96 and snap["tempo_now_bpm"] == 120
    rig.run_until(3.0)
    assert rig.engine.snapshot()["tempo_now_bpm"] == 96
    rig.close()


def test_a_live_load_checks_its_command_names_against_bookmarks_and_running_sequences(
        tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text('pgesam: 1\ncommands: ["at mine", {at: 1, do: "stop live"}]\n')
    rig = make_rig()
    e = rig.engine
    r = e.submit(f"load {p}")
    assert not r.ok and "no point named 'mine'" in r.text and "stop: no sequence 'live'" \
        in r.text
    assert e.submit("mark mine").ok and e.submit('seq live "C4" 1').ok
    rig.run_until(0.1)
    assert e.submit(f"load {p}").ok
    rig.run_until(0.5)
    assert e.apply_errors == 0
    rig.close()


def test_a_patch_whose_commands_load_a_missing_or_broken_patch_is_refused_at_load(
        tmp_path: Path) -> None:
    """A patch is validated completely before anything plays: a `load` among its commands
    names a patch that must be found (as that line will find it) and valid. Two patches that
    load each other in turn are fine."""
    good = tmp_path / "good.yaml"
    good.write_text(f'pgesam: 1\ncommands: [{{at: 8, do: "load {tmp_path / "other.yaml"}"}}]\n')
    other = tmp_path / "other.yaml"
    other.write_text(f'pgesam: 1\ncommands: [{{at: 8, do: "load {good}"}}]\n')
    missing = tmp_path / "missing.yaml"
    missing.write_text('pgesam: 1\ncommands: [{at: 4, do: "load nowhere"}]\n')
    broken = tmp_path / "broken.yaml"
    broken.write_text('pgesam: 1\ntempo: 9999\n')
    uses_broken = tmp_path / "uses.yaml"
    uses_broken.write_text(f'pgesam: 1\ncommands: [{{at: 4, do: "load {broken}"}}]\n')
    rig = make_rig()
    e = rig.engine
    r = e.submit(f"load {missing}")
    assert not r.ok and '"load nowhere"' in r.text and "no patch 'nowhere'" in r.text
    r = e.submit(f"load {uses_broken}")
    assert not r.ok and "that patch has errors" in r.text and "tempo" in r.text
    assert e.submit(f"load {good}").ok
    rig.run_until(0.5)
    assert e.apply_errors == 0 and e.snapshot()["patch"].endswith("good.yaml")
    rig.close()


def test_a_seq_of_rests_only_silences_a_running_sequence_and_is_refused_otherwise() -> None:
    rig = make_rig()
    e = rig.engine
    r = e.submit('seq d "~ ~ ~" 0.5')
    assert not r.ok and "rests only" in r.text and "give at least one note" in r.text
    assert e.submit('seq d "C4 E4" 0.5').ok
    rig.run_until(1.0)
    assert e.snapshot()["sequences"] == ["d"]
    assert e.submit('seq d "~ ~" 0.5').ok  # from the next bar (2 s at 120 bpm), silence
    rig.run_until(2.5)
    assert e.snapshot()["sequences"] == [] and e.apply_errors == 0
    rig.close()


def test_load_name_checks_follow_queued_and_timed_lines(tmp_path: Path) -> None:
    """Names a patch's commands use may come from lines before its load: queued at once
    (pasted, a bundle) or timed (a replay). A patch's own sequences end at the swap, so a
    later patch cannot stop them; a queued hush installs a pending patch, so the old
    patch's names are gone."""
    c = tmp_path / "c.yaml"
    c.write_text('pgesam: 1\ncommands: ["at m", "stop live"]\n')
    rig = make_rig()
    e = rig.engine
    # A replay: every line submitted up front with its time.
    assert e.submit("at 0.2 0.2", at_s=0.0).ok and e.submit("mark m", at_s=0.1).ok
    assert e.submit('seq live "C4 E4" 1', at_s=0.2).ok
    assert e.submit(f"load {c}", at_s=1.0).ok
    rig.run_until(2.0)
    assert e.apply_errors == 0
    rig.close()
    rig = make_rig()
    e = rig.engine
    # Pasted together: the queued mark and seq count.
    assert e.submit("mark m").ok and e.submit('seq live "C4" 1').ok and e.submit(f"load {c}").ok
    rig.run_until(0.5)
    assert e.apply_errors == 0
    rig.close()
    # A patch's own loop ends at the swap: another patch cannot stop it.
    loops = tmp_path / "loops.yaml"
    loops.write_text('pgesam: 1\npoints:\n  gp: [0.1, 0.1]\nsequences:\n  x:\n'
                     '    notes: "C4"\n    repeat: 0\n')
    f = tmp_path / "f.yaml"
    f.write_text('pgesam: 1\ncommands: ["stop x"]\n')
    h = tmp_path / "h.yaml"
    h.write_text('pgesam: 1\nsequences:\n  z: {notes: "C4"}\n')
    rig = make_rig()
    e = rig.engine
    assert e.submit(f"load {loops}").ok
    rig.run_until(1.0)
    r = e.submit(f"load {f}")
    assert not r.ok and "stop: no sequence 'x' runs when this line does" in r.text
    # load h (pending), then hush: h is installed; loops' names are gone at once.
    assert e.submit(f"load {h}").ok and e.submit("hush").ok
    assert not e.submit("start x").ok and not e.submit("at gp").ok and e.submit("start z").ok
    rig.run_until(2.0)
    assert e.apply_errors == 0
    rig.close()


def test_a_timed_seq_at_a_name_plays_the_point_the_name_has_at_its_time() -> None:
    """A replay submits every line up front: `seq ... at m` after a timed `mark m` plays
    where m is when the seq applies, not where an older bookmark m was at submit."""
    rig = make_rig()
    e = rig.engine
    assert e.submit("at 0.1 0.1").ok and e.submit("mark m").ok
    rig.run_until(0.1)
    assert e.submit("at 0.5 -0.5", at_s=0.5).ok and e.submit("mark m", at_s=0.6).ok
    assert e.submit('seq s "C4" 1 at m', at_s=0.7).ok
    rig.run_until(1.5)
    assert e.apply_errors == 0
    assert e.scheduler._sequences["s"].seq.timbre == pytest.approx((0.5, -0.5))
    rig.close()


def test_a_bookmark_cannot_hide_a_patch_point_and_says_when_it_hides_a_demo_one(
        tmp_path: Path) -> None:
    rig = make_rig()
    e = rig.engine
    said: list[str] = []
    e.add_listener(lambda ev: said.append(ev["text"]) if ev["kind"] == "message" else None)
    demo = sorted(e.model.named_points)[0]  # a point of the demo patches: taken, and said
    assert e.submit(f"mark {demo}").ok
    rig.run_until(0.1)
    assert any(f"the demo patches' {demo}" in t and "hidden" in t for t in said)
    assert e.submit("at 0.5 0.5").ok and e.submit("mark spot").ok
    p = tmp_path / "p.yaml"
    p.write_text('pgesam: 1\npoints:\n  spot: [-0.4, 0.3]\ncommands: ["at spot"]\n')
    assert e.submit(f"load {p}").ok
    rig.run_until(0.5)
    assert e.snapshot()["point"] == pytest.approx([-0.4, 0.3])  # the patch's spot, not mine
    r = e.submit("mark spot")
    assert not r.ok and "is a point of the loaded patch (-0.40, +0.30)" in r.text
    assert e.apply_errors == 0
    rig.close()


def test_hush_after_load_keeps_the_patchs_load_time_settings_not_its_sound(
        tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text('pgesam: 1\npoints:\n  p1: [0.3, -0.2]\ncommands: ["at p1", "play C4"]\n')
    rig = make_rig()
    e = rig.engine
    starts = spy_starts(rig)
    assert e.submit(f"load {p}").ok and e.submit("hush").ok
    rig.run_until(1.0)
    assert e.snapshot()["point"] == pytest.approx([0.3, -0.2]) and starts == []
    assert e.apply_errors == 0
    rig.close()


def test_a_line_after_a_load_that_plays_now_comes_after_the_patchs_settings(
        tmp_path: Path) -> None:
    """Lines apply in order: a patch that plays now is loaded (status names it) with its
    load-time settings applied before the next line, which the patch then never undoes;
    its sound still waits for beat 0."""
    p = tmp_path / "p.yaml"
    p.write_text('pgesam: 1\npoints:\n  p1: [0.3, -0.2]\n'
                 'commands: ["at p1", "tempo 90", "play C4"]\n')
    rig = make_rig(preroll_s=LIVE_PREROLL_S)  # as the live instrument
    e = rig.engine
    starts = spy_starts(rig)
    assert e.submit(f"load {p}").ok
    rig.run_until(0.05)
    snap = e.snapshot()
    assert snap["point"] == pytest.approx([0.3, -0.2]) and snap["patch"] == str(p)
    assert snap["tempo_now_bpm"] == 90
    assert e.submit("at -0.1 0.1").ok
    rig.run_until(2.5)
    assert e.snapshot()["point"] == pytest.approx([-0.1, 0.1])  # not undone by `at p1`
    assert starts == [pytest.approx(0.05 + LIVE_PREROLL_S, abs=0.06)]  # at beat 0
    assert e.apply_errors == 0
    rig.close()


def test_hush_in_a_patchs_pre_roll_keeps_its_later_load_time_settings(
        tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text('pgesam: 1\npoints:\n  p1: [0.3, -0.2]\ncommands: ["play C4", "at p1"]\n')
    rig = make_rig(preroll_s=LIVE_PREROLL_S)
    e = rig.engine
    starts = spy_starts(rig)
    assert e.submit(f"load {p}").ok
    rig.run_until(0.05)
    assert e.submit("hush").ok  # in the pre-roll: nothing of it sounds, its `at p1` holds
    rig.run_until(2.0)
    assert e.snapshot()["point"] == pytest.approx([0.3, -0.2]) and starts == []
    rig.close()


def test_refusals_when_a_line_comes_due_are_told_with_the_line(tmp_path: Path) -> None:
    own = tmp_path / "own.yaml"
    own.write_text('pgesam: 1\npoints:\n  p1: [0.1, 0.1]\ncommands: ["mark p1"]\n')
    twice = tmp_path / "twice.yaml"
    twice.write_text('pgesam: 1\nsequences:\n  b: {notes: "C4", repeat: 0}\n'
                     'commands: [{at: 1, do: "stop b"}, {at: 2, do: "stop b"}]\n')
    rig = make_rig()
    e = rig.engine
    rejected: list[dict] = []
    e.add_listener(lambda ev: rejected.append(ev) if ev["kind"] == "rejected" else None)
    # Timed (as a replay submits): a patch marking over its own point, a rests-only seq.
    assert e.submit(f"load {own}", at_s=0.2).ok and e.submit('seq zz "~" 0.5', at_s=0.3).ok
    rig.run_until(1.0)
    assert [ev["cmd"].split()[0] for ev in rejected] == ["load", "seq"]
    assert "is a point of this patch" in rejected[0]["text"]
    assert "rests only" in rejected[1]["text"]
    assert e.snapshot()["patch"] is None
    rig.close()
    with pytest.raises(PatchValidationError, match=r"commands\[1\]\.do: stop: no sequence 'b' "
                                                   r"runs when this line does"):
        load_patch(twice, known_points=set())


def test_a_patch_line_marks_where_its_own_at_put_the_point(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text('pgesam: 1\npoints:\n  p1: [0.3, -0.2]\ncommands: ["at p1", "mark home"]\n')
    rig = make_rig()
    e = rig.engine
    assert e.submit("at -0.9 -0.9").ok and e.submit(f"load {p}").ok
    rig.run_until(1.0)
    assert e.snapshot()["bookmarks"]["home"] == pytest.approx([0.3, -0.2])
    rig.close()


def test_the_load_check_counts_queued_starts_and_rests_only_seqs_as_apply_will(
        tmp_path: Path) -> None:
    arp = tmp_path / "arp.yaml"
    arp.write_text('pgesam: 1\nsequences:\n  arp: {notes: "C4", repeat: 0}\n')
    stop_arp = tmp_path / "stoparp.yaml"
    stop_arp.write_text('pgesam: 1\ncommands: [{at: 4, do: "stop arp"}]\n')
    stop_s = tmp_path / "stops.yaml"
    stop_s.write_text('pgesam: 1\ncommands: [{at: 8, do: "stop s"}]\n')
    rig = make_rig()
    e = rig.engine
    tags: list[object] = []
    e.add_listener(lambda ev: tags.append(ev.get("tag")) if ev["kind"] == "command" else None)
    assert e.submit(f"load {arp}").ok and e.submit('seq s "C4 E4" 0.5', tag="mine").ok
    rig.run_until(0.5)
    assert "mine" in tags  # the submitter's tag comes back with its command
    # `start arp` makes arp the performer's: it plays on past the next load, which may stop it.
    assert e.submit("start arp").ok and e.submit(f"load {stop_arp}").ok
    # A rests-only seq ends s: a load stopping s later is refused now, not when applied.
    assert e.submit('seq s "~" 0.5').ok
    assert not e.submit(f"load {stop_s}").ok
    rig.run_until(1.5)
    assert e.apply_errors == 0
    rig.close()


def test_a_timed_moves_state_event_carries_the_point_it_moves_to() -> None:
    """OSC keeps a sender's own change from echoing back by the point in the state event
    after its command: for a timed move that is where it goes, not where the block began."""
    rig = make_rig()
    e = rig.engine
    states: list[list[float]] = []
    e.add_listener(lambda ev: states.append(ev["point"]) if ev["kind"] == "state" else None)
    assert e.submit("at 0.3 -0.3", at_s=0.503).ok
    rig.run_until(1.0)
    assert states and states[-1] == pytest.approx([0.3, -0.3])
    rig.close()


def test_at_another_output_rate_a_cached_note_is_resampled_before_it_plays() -> None:
    """--sample-rate 48000 on a 24 kHz model: a note is resampled when it is cached (the
    renderer's thread calls note_ready), not in the audio hook when it plays."""
    rig = make_rig(sample_rate=48000)
    e = rig.engine
    assert rig.audio.sample_rate == 48000 and e._resampler is not None
    key = rig.cache.key(0.2, 0.1, 60, e.scheduler.seed)
    note = FakeSynth(SR).render(np.array([[0.2, 0.1]], np.float32), np.array([60]))[0]
    rig.cache.put(key, note)
    e.note_ready(key)
    assert e.submit("at 0.2 0.1").ok and e.submit("note 60").ok
    rig.run_until(0.5)
    out = rig.audio.render_to_array()
    assert first_nonzero(out) >= 0
    assert e._resampler.resampled_in_hook == 0
    rig.close()


def test_at_a_training_instruments_word_goes_to_its_point_and_says_which() -> None:
    """`at violin` (no patch point, bookmark or demo point of that name) goes to the
    training instrument's point and says which program it took; a bookmark of that name
    wins; a name nothing has is refused, naming the instruments as a way."""
    synth = FakeSynth(SR)
    synth.training_points = [
        {"name": "fluidr3_gm_000", "x": -0.25, "y": 0.0, "family": "keyboard"},
        {"name": "fluidr3_gm_001", "x": -0.2, "y": 0.05, "family": "keyboard"},
        {"name": "fluidr3_gm_040", "x": 0.3, "y": -0.2, "family": "string"}]
    rig = OfflineRig(Settings().replace(audio="offline", cache_spill=False), synth=synth)
    e = rig.engine
    said: list[str] = []
    e.add_listener(lambda ev: said.append(ev["text"]) if ev["kind"] == "message" else None)
    assert e.submit("at violin").ok
    rig.run_until(0.1)
    assert e.snapshot()["point"] == pytest.approx([0.3, -0.2])
    assert said[-1] == "at violin: Violin (fluidr3_gm) (+0.30, -0.20)"
    assert e.submit("at piano").ok
    rig.run_until(0.2)
    assert e.snapshot()["point"] == pytest.approx([-0.25, 0.0])
    assert "also Bright Acoustic Piano: name more words" in said[-1]
    assert e.submit("at 0.1 0.1").ok and e.submit("mark violin").ok
    assert e.submit("at 0 0").ok and e.submit("at violin").ok
    rig.run_until(0.3)
    assert e.snapshot()["point"] == pytest.approx([0.1, 0.1])  # the bookmark
    r = e.submit("at tuba")
    assert not r.ok and "no point named 'tuba'" in r.text and "training instrument" in r.text
    assert e.apply_errors == 0
    rig.close()


def test_the_point_keeps_its_name_only_while_it_stays_there() -> None:
    """`mark` during a glide names where the point was; status stops showing the name once
    the glide carries the point on (and shows it again at `at NAME`)."""
    rig = make_rig()
    e = rig.engine
    assert e.submit("glide 0.5 0.5 8").ok
    rig.run_until(0.5)
    assert e.submit("mark m1").ok
    rig.run_until(2.0)
    snap = e.snapshot()
    assert snap["point_name"] is None and snap["point"] != pytest.approx(e.bookmarks["m1"])
    assert e.submit("at m1").ok
    rig.run_until(2.1)
    assert e.snapshot()["point_name"] == "m1"
    rig.close()
