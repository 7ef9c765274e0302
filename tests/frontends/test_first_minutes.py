"""A performer's first ten minutes (issue 17): what they reach for first answers one way from
every front end. The real engine offline, a stand-in synth (tests/fakes.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app.build import OfflineRig  # noqa: E402
from pgesam_live.frontends.osc import OscCore  # noqa: E402
from pgesam_live.frontends.osc_wire import encode_message  # noqa: E402
from pgesam_live.frontends.seam import run_line  # noqa: E402
from pgesam_live.notes import range_text  # noqa: E402
from pgesam_live.settings import Settings  # noqa: E402
from tests.fakes import FakeSynth  # noqa: E402

A = ("127.0.0.1", 9999)


@pytest.fixture
def rig() -> Iterator[OfflineRig]:
    r = OfflineRig(Settings().replace(audio="offline", cache_spill=False), synth=FakeSynth(24000))
    try:
        yield r
    finally:
        r.close()


def osc_errors(core: OscCore, address: str, *args: object) -> list[str]:
    replies = core.handle_datagram(encode_message(address, list(args)), A)
    return [str(r[2][1]) for r in replies if r[1] == "/pgesam/error"]


@pytest.mark.parametrize("pitch", [999, 100, 128, 10])
def test_range_errors_have_one_form_naming_the_models_range(rig: OfflineRig, pitch: int) -> None:
    """`play 999` (beyond MIDI) and `play 100` (beyond the model) say the same thing, in the
    REPL, from /pgesam/cmd and from /pgesam/note, and name the model's range."""
    rendered = rig.engine.model.pitch_range
    want = f"pitch {pitch} is outside what the model plays: {range_text(rendered)}"
    repl = run_line(rig.engine, f"play {pitch}", "repl")
    assert not repl.ok and repl.text == f"play: {want}"
    assert rig.engine.submit(f"note {pitch}").text == f"note: {want}"
    core = OscCore(rig.engine)
    assert osc_errors(core, "/pgesam/note", pitch) == [f"note: {want}"]
    assert osc_errors(core, "/pgesam/cmd", f"play {pitch}") == [f"play: {want}"]


def step(rig: OfflineRig) -> None:
    """Apply what is queued (the offline rig runs blocks only when told)."""
    rig.run_until(rig.engine.time_s() + 0.05)


def point_now(rig: OfflineRig) -> tuple[float, float]:
    step(rig)
    x, y = rig.engine.snapshot()["point"]
    return round(float(x), 2), round(float(y), 2)


def test_at_a_digit_goes_to_that_bookmark_on_the_map(rig: OfflineRig) -> None:
    e = rig.engine
    for xy, name in (("-0.7 0.6", "glass"), ("0.2 -0.1", "low")):
        assert e.submit(f"at {xy}").ok and e.submit(f"mark {name}").ok
    step(rig)
    assert "1 glass (-0.70, +0.60)" in run_line(e, "map", "repl").text
    assert e.submit("at 0 0").ok
    assert run_line(e, "at 1", "repl").ok, run_line(e, "at 1", "repl").text
    assert point_now(rig) == (-0.7, 0.6)
    assert e.submit("at 2").ok and point_now(rig) == (0.2, -0.1)
    refused = run_line(e, "at 3", "repl")
    assert not refused.ok
    assert refused.text == "at: no bookmark 3 on the map; bookmarks: 1 glass, 2 low"
    core = OscCore(e)
    assert osc_errors(core, "/pgesam/point", "1") == [] and point_now(rig) == (-0.7, 0.6)


def test_points_and_at_name_the_same_place_after_a_patch_hides_a_bookmark(
        rig: OfflineRig) -> None:
    """Precedence: the loaded patch's point, then a bookmark, then the demo points. `points`
    shows where `at NAME` goes, and says how the hidden bookmark is still reached."""
    e = rig.engine
    assert e.submit("at -0.7 0.6").ok and e.submit("mark glass").ok
    loaded = run_line(e, "load drift-arpeggio.yaml", "repl")
    assert loaded.ok, loaded.text
    rig.run_until(e.time_s() + 2.5)  # past its bar
    assert e.submit("at glass").ok
    at_glass = point_now(rig)
    step(rig)
    listing = run_line(e, "points", "repl").text.splitlines()
    glass = next(line for line in listing if line.startswith("glass "))
    assert glass.startswith(f"glass  ({at_glass[0]:+.2f}, {at_glass[1]:+.2f})"), glass
    assert "bookmark 1 glass at (-0.70, +0.60) is `at 1`" in glass
    assert e.submit("at 1").ok and point_now(rig) == (-0.7, 0.6)


def test_points_calls_a_bookmark_a_bookmark_where_no_patch_hides_it(rig: OfflineRig) -> None:
    """A bookmark made at a point of many decimals (an instrument's) is listed as the
    bookmark it is, not as hidden by a patch point, when no patch is loaded."""
    e = rig.engine
    assert e.submit("at -0.123456789 0.987654321").ok and e.submit("mark nice").ok
    step(rig)
    line = next(t for t in run_line(e, "points", "repl").text.splitlines()
                if t.startswith("nice "))
    assert line == "nice  (-0.12, +0.99)  bookmark 1", line


def messages_of(rig: OfflineRig) -> list[str]:
    said: list[str] = []
    rig.engine.add_listener(lambda ev: said.append(ev["text"]) if ev.get("kind") == "message"
                            else None)
    return said


def test_load_says_what_it_loaded_and_what_starts(rig: OfflineRig) -> None:
    said = messages_of(rig)
    assert run_line(rig.engine, "load morph.yaml", "repl").ok
    step(rig)
    loaded = [m for m in said if m.startswith("loaded ")]
    assert loaded and loaded[0].startswith("loaded morph.yaml: tempo 100; starts motif (8 "
                                           "times); 2 events; commands: at glass"), said
    assert "plays now" in loaded[0]


def test_save_names_the_sessions_journal_and_says_where(tmp_path: Path) -> None:
    from pgesam_live.frontends.seam import FrontView
    from pgesam_live.sessions.journal import Journal, make_header, read_journal

    r = OfflineRig(Settings().replace(audio="offline", cache_spill=False), synth=FakeSynth(24000))
    journal = Journal(tmp_path / "20261204-120000.jsonl", make_header("fake", 0, 120))
    try:
        r.engine.add_listener(journal)
        view = FrontView(r.engine, journal_path=journal.path)
        assert run_line(view, "play C4", "repl").ok
        step(r)
        saved = run_line(view, "save my-jam", "repl")
        dest = tmp_path / "my-jam.jsonl"
        assert saved.ok and str(dest) in saved.text and "replay" in saved.text, saved.text
        _, entries = read_journal(dest)
        assert [e.cmd for e in entries] == ["play 60"]
        assert run_line(view, "tempo 90", "repl").ok
        step(r)
        assert run_line(view, "save my-jam", "repl").ok  # again: updated
        assert [e.cmd for e in read_journal(dest)[1]] == ["play 60", "tempo 90"]
        (tmp_path / "older.jsonl").write_text("{}\n")
        refused = run_line(view, "save older", "repl")
        assert not refused.ok and "exists" in refused.text and "save older2" in refused.text
        no_journal = run_line(r.engine, "save x", "repl")
        assert not no_journal.ok and "no journal" in no_journal.text
        # Over OSC the sender is told where, as the REPL prints it (never silence).
        from pythonosc.osc_message_builder import OscMessageBuilder

        from pgesam_live.frontends.osc import OscCore

        b = OscMessageBuilder("/pgesam/cmd")
        b.add_arg("save from-osc")
        replies = OscCore(view).handle_datagram(b.build().dgram, ("127.0.0.1", 9999))
        assert [(a, args[0].split(" (")[0]) for _, a, args in replies] == \
            [("/pgesam/save", f"saved {tmp_path / 'from-osc.jsonl'}")], replies
        assert (tmp_path / "from-osc.jsonl").is_file()
    finally:
        journal.close()
        r.close()


def test_record_points_to_save() -> None:
    from pgesam_live.errors import CommandError
    from pgesam_live.vocab.commands import parse_line

    with pytest.raises(CommandError, match="did you mean save NAME"):
        parse_line("record my-jam")


def test_gain_scales_the_output_from_the_repl_and_osc_and_is_journalled(rig: OfflineRig) -> None:
    from pgesam_live.vocab.views import status_line

    lines: list[str] = []
    e = rig.engine
    e.add_listener(lambda ev: lines.append(ev["cmd"]) if ev["kind"] == "command" else None)
    assert e.submit("at 0 0").ok and e.submit("note 60 0.8", at_s=0.0).ok
    assert osc_errors(OscCore(e), "/pgesam/gain", 0.25) == []  # applied at once (t 0)
    assert e.submit("gain 0.5", at_s=0.2).ok  # then twice as loud
    rig.run_until(0.4)
    assert e.snapshot()["gain"] == 0.5 and "gain 0.5" in status_line(e.snapshot())
    assert "gain 0.5" in lines and "gain 0.25" in lines
    bad = run_line(e, "gain 3", "repl")
    assert not bad.ok and "0..2" in bad.text
    out = rig.audio.render_to_array()
    sr = 24000
    early = float(abs(out[int(0.05 * sr):int(0.15 * sr)]).max())
    late = float(abs(out[int(0.25 * sr):int(0.35 * sr)]).max())
    assert early > 0 and late == pytest.approx(early * 2, rel=0.05)


def test_voice_steals_are_counted_on_the_status_line_and_told(rig: OfflineRig) -> None:
    from pgesam_live.vocab.views import status_line

    said = messages_of(rig)
    e = rig.engine
    n = int(e.snapshot()["voices_total"])
    assert e.submit("at 0 0").ok
    for i in range(n + 3):  # every voice busy, then three more
        assert e.submit(f"note {48 + i % 24} 0.5", at_s=0.01 * i).ok
    rig.run_until(0.01 * (n + 3) + 0.1)
    snap = e.snapshot()
    assert snap["voices_stolen"] == 3
    assert "stolen 3" in status_line(snap)
    rig.run_until(3.0)  # reports are rate-limited (2 s): the rest comes later, summed
    told = [m for m in said if "stolen" in m]
    assert 1 <= len(told) <= 2, said
    assert sum(int(m.split()[1]) for m in told) == 3 and "3 in all" in told[-1]


def spy_notes(rig: OfflineRig) -> list[tuple[float, float, float | None]]:
    """(start_s, velocity, length_beats) of every sequence note the scheduler plays."""
    played: list[tuple[float, float, float | None]] = []
    sched = rig.engine.scheduler
    orig = sched._play_note

    def play(note, seed, tag=None):  # type: ignore[no-untyped-def]
        played.append((sched.tempo.beat_to_s(note.beat), note.velocity, note.length_beats))
        return orig(note, seed, tag)

    sched._play_note = play  # type: ignore[method-assign]
    return played


def test_seq_from_the_repl_takes_vel_gate_len_at_and_a_default_step(rig: OfflineRig) -> None:
    e = rig.engine
    played = spy_notes(rig)
    assert e.submit("at 0 0").ok and e.submit("mark home").ok
    assert e.submit("at 0.5 0.5").ok
    # no step: 0.5 beat (0.25 s at 120 bpm); gate half a step; at a bookmark just made
    r = run_line(e, 'seq arp "C4 E4" vel 0.6 gate 0.5 at home', "repl")
    assert r.ok, r.text
    rig.run_until(1.05)
    starts = [p[0] for p in played[:4]]
    assert len(starts) == 4 and all(b - a == pytest.approx(0.25)
                                    for a, b in zip(starts, starts[1:], strict=False))
    assert all(p[2] == pytest.approx(0.25) for p in played[:4])  # half of a 0.5-beat step
    vel = played[0][1]
    assert e.submit('seq arp "C4 E4" len 1 vel 0.3').ok  # len in beats
    rig.run_until(e.time_s() + 1.5)
    later = played[-1]
    assert later[2] == pytest.approx(1.0) and later[1] < vel
    for bad, words in (('seq x "C4" gate 0.5 len 1', "not both"),
                       ('seq x "C4" at nowhere', "no point named 'nowhere'"),
                       ('seq x "C4" vel 2', "0..1")):
        refused = run_line(e, bad, "repl")
        assert not refused.ok and words in refused.text, refused.text


def test_seq_at_a_point_plays_there_and_reads_back_from_its_line(rig: OfflineRig) -> None:
    from pgesam_live.vocab.commands import parse_line

    e = rig.engine
    started: list[object] = []
    orig = e.scheduler.start_sequence
    e.scheduler.start_sequence = lambda name, seq: (started.append(seq),  # type: ignore
                                                    orig(name, seq))[1]
    assert e.submit("at -0.3 0.2").ok and e.submit("mark pad").ok and e.submit("at 0.4 0.4").ok
    line = 'seq s "C4" 1 vel 0.7 at pad'
    assert parse_line(parse_line(line).to_line()) == parse_line(line)
    assert e.submit(line).ok  # `pad` is still queued: resolved when the line applies
    rig.run_until(0.2)
    assert len(started) == 1
    seq = started[0]
    assert seq.timbre == pytest.approx((-0.3, 0.2)) and seq.step_beats == 1.0  # type: ignore
    assert seq.velocity == (0.7,)  # type: ignore[attr-defined]


def test_map_png_from_the_repl_and_named_points_on_the_terminal_map(
        rig: OfflineRig, tmp_path: Path) -> None:
    e = rig.engine
    assert run_line(e, "load drift-arpeggio.yaml", "repl").ok
    rig.run_until(e.time_s() + 2.5)
    glass = e.resolve_point("glass")
    text = run_line(e, "map", "repl").text
    assert f"glass ({glass[0]:+.2f}, {glass[1]:+.2f})" in text.split("* points: ")[1]
    assert "*" in "".join(line for line in text.splitlines() if line.startswith("|"))
    from pgesam_live.frontends.seam import FrontView

    view = FrontView(e)  # as the live app builds it
    out = tmp_path / "my-map.png"
    wrote = run_line(view, f"map png {out}", "repl")
    assert wrote.ok and str(out) in wrote.text, wrote.text
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    for line, words in ((f"map png {tmp_path / 'x.svg'}", "name the file"),
                        ("map gif", "not a picture format")):
        refused = run_line(view, line, "repl")
        assert not refused.ok and words in refused.text, refused.text
    over_osc = run_line(view, f"map png {tmp_path / 'o.png'}", "osc")
    assert not over_osc.ok and "not available over OSC" in over_osc.text


def test_the_beat_is_never_negative_before_a_fresh_clocks_first_beat(rig: OfflineRig) -> None:
    e = rig.engine
    rig.run_until(1.0)
    assert e.submit('seq a "C4 E4" 0.5').ok
    beats = []
    for _ in range(20):
        rig.run_until(e.time_s() + 0.02)
        beats.append(e.snapshot()["beat"])
    assert min(beats) >= 0.0 and beats[-1] > 0.0
