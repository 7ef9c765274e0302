"""MIDI: message -> command mapping with mido.Message objects (no ports needed)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import mido
import pytest

from pgesam_live.errors import ConfigError
from pgesam_live.frontends.midi import (
    MidiInput,
    MidiMapper,
    MidiMapping,
    list_ports,
    port_base,
    resolve_port,
)
from pgesam_live.vocab.commands import Command, parse_line


def lines(cmds: list[Command]) -> list[str]:
    return [c.to_line() for c in cmds]


def test_notes_and_velocity() -> None:
    m = MidiMapper()
    assert lines(m.handle(mido.Message("note_on", note=60, velocity=127))) == ["note 60 1 hold"]
    (cmd,) = m.handle(mido.Message("note_on", note=64, velocity=64))
    assert cmd.args["vel"] == pytest.approx(64 / 127) and cmd.args["mode"] == "hold"
    assert lines(m.handle(mido.Message("note_off", note=60))) == ["release 60"]
    assert lines(m.handle(mido.Message("note_on", note=64, velocity=0))) == ["release 64"]
    for c in m.handle(mido.Message("note_on", note=61, velocity=1)):
        assert parse_line(c.to_line()) == c  # every mapped command is a valid, journalable line


def test_sustain_pedal_defers_note_offs() -> None:
    m = MidiMapper()
    m.handle(mido.Message("note_on", note=60, velocity=100))
    m.handle(mido.Message("note_on", note=67, velocity=100))
    assert m.handle(mido.Message("control_change", control=64, value=127)) == []
    assert m.handle(mido.Message("note_off", note=60)) == []
    assert m.handle(mido.Message("note_off", note=67)) == []
    m.handle(mido.Message("note_on", note=67, velocity=90))  # re-struck while held by pedal
    assert lines(m.handle(mido.Message("control_change", control=64, value=0))) == ["release 60"]
    assert lines(m.handle(mido.Message("note_off", note=67))) == ["release 67"]
    assert m.handle(mido.Message("control_change", control=64, value=0)) == []  # already up


def test_ccs_move_the_point() -> None:
    m = MidiMapper()
    assert lines(m.handle(mido.Message("control_change", control=1, value=127))) == ["xy 1 0.5"]
    assert lines(m.handle(mido.Message("control_change", control=74, value=0))) == ["xy 1 0"]
    assert m.handle(mido.Message("control_change", control=7, value=10)) == []
    other = MidiMapper(MidiMapping(cc_x=16, cc_y=17))
    assert lines(other.handle(mido.Message("control_change", control=17, value=127))) == \
        ["xy 0.5 1"]


def test_all_notes_off_panic_and_channel_filter() -> None:
    m = MidiMapper(MidiMapping(channel=2))
    assert m.handle(mido.Message("note_on", note=60, velocity=100, channel=0)) == []
    m.handle(mido.Message("note_on", note=60, velocity=100, channel=2))
    m.handle(mido.Message("note_on", note=62, velocity=100, channel=2))
    assert lines(m.handle(mido.Message("control_change", control=123, value=0, channel=2))) == \
        ["release 60", "release 62"]
    assert lines(m.handle(mido.Message("control_change", control=120, value=0, channel=2))) == \
        ["panic"]
    assert m.handle(mido.Message("pitchwheel", pitch=100, channel=2)) == []


def test_mapping_is_checked() -> None:
    with pytest.raises(ConfigError, match="other than"):
        MidiMapping(cc_x=64)
    with pytest.raises(ConfigError, match="both 3"):
        MidiMapping(cc_x=3, cc_y=3)
    assert MidiMapping.from_env({"PGESAM_MIDI_CC_X": "16", "PGESAM_MIDI_CC_Y": "17"}).cc_y == 17
    with pytest.raises(ConfigError):
        MidiMapping.from_env({"PGESAM_MIDI_CC_X": "wheel"})


def test_resolve_port() -> None:
    inputs = ["Midi Through:Midi Through Port-0 14:0", "Arturia KeyStep 32:0 20:0"]
    assert resolve_port("auto", inputs) == inputs[1]
    assert resolve_port("keystep", inputs) == inputs[1]
    assert resolve_port(inputs[0], inputs) == inputs[0]
    with pytest.raises(ConfigError, match="no MIDI input"):
        resolve_port("auto", inputs[:1])
    with pytest.raises(ConfigError, match="not an input port"):
        resolve_port("launchpad", inputs)


def test_list_ports_is_one_line_not_a_crash() -> None:
    names, problem = list_ports()
    assert isinstance(names, list)
    if problem is not None:  # e.g. no ALSA sequencer in this container
        assert names == [] and "\n" not in problem and problem.startswith("MIDI unavailable")


@dataclass
class Reply:
    ok: bool
    text: str = ""


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def submit(self, cmd: Command, src: str = "repl", at_s: float | None = None) -> Reply:
        self.got.append((src, cmd.to_line()))
        return Reply(True)

    def snapshot(self) -> dict[str, Any]:  # the seam's view (vocab/views.py EngineView)
        return {"point": [0.0, 0.0]}

    def message(self, text: str) -> None:
        self.got.append(("message", text))


def test_input_submits_and_coalesces_cc_streams() -> None:
    engine = Recorder()
    inp = MidiInput(engine, "fake port").start()
    try:
        inp.on_message(mido.Message("note_on", note=60, velocity=127))
        for value in range(128):  # a fast wheel sweep
            inp.on_message(mido.Message("control_change", control=1, value=value))
        inp.on_message(mido.Message("note_off", note=60))
        deadline = time.monotonic() + 2
        while not any(line == "xy 1 0.5" for _, line in engine.got) and \
                time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        inp.close()
    got: list[Any] = [line for _, line in engine.got]
    assert got[0] == "note 60 1 hold" and "release 60" in got
    moves = [g for g in got if g.startswith("xy")]
    assert moves[-1] == "xy 1 0.5" and len(moves) < 20  # coalesced, latest wins
    assert all(src == "midi" for src, _ in engine.got) and inp.errors == 0


class PointEngine(Recorder):
    """A recorder with a current point and a refusal for notes outside 36..84."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def snapshot(self) -> dict[str, Any]:
        return {"point": [0.4, -0.3]}

    def message(self, text: str) -> None:
        self.messages.append(text)

    def submit(self, cmd: Command, src: str = "repl", at_s: float | None = None) -> Reply:
        if cmd.name == "note" and not 36 <= cmd.args["pitch"] <= 84:
            return Reply(False, f"note: pitch {cmd.args['pitch']} is outside what the model "
                                "plays")
        return super().submit(cmd, src, at_s)


def test_a_knob_moves_its_own_axis_and_goes_out_before_the_next_note() -> None:
    engine = PointEngine()
    inp = MidiInput(engine, "fake port").start()
    try:
        inp.on_message(mido.Message("control_change", control=1, value=127))
        inp.on_message(mido.Message("note_on", note=60, velocity=100))  # at once after it
    finally:
        inp.close()
    got = [line for _, line in engine.got]
    # y stays where the point was (-0.3 -> v 0.35), and the move precedes the note.
    assert got[0] == "xy 1 0.35" and got[1].startswith("note 60")


def test_a_refused_note_is_said_and_its_key_up_not_sent() -> None:
    engine = PointEngine()
    inp = MidiInput(engine, "fake port").start()
    try:
        inp.on_message(mido.Message("note_on", note=20, velocity=100))
        inp.on_message(mido.Message("note_off", note=20))
        inp.on_message(mido.Message("control_change", control=64, value=127))
        inp.on_message(mido.Message("note_on", note=60, velocity=100))
        inp.on_message(mido.Message("note_off", note=60))
        inp.on_message(mido.Message("control_change", control=121, value=0))  # reset: pedal up
    finally:
        inp.close()
    got = [line for _, line in engine.got]
    assert [g.split()[:2] for g in got] == [["note", "60"], ["release", "60"]]
    assert engine.messages and "outside what the model plays" in engine.messages[0]


def test_an_unplugged_keyboard_lets_go_of_its_keys_and_plays_again_when_back() -> None:
    """The port gone from the list: keys down and under the pedal are released (src midi,
    so journalled) and it is said; the same device back under another ALSA client number
    is opened again and plays; another device does not stand in for it."""
    engine = PointEngine()
    inp = MidiInput(engine, "Keys MIDI 1 20:0").start()
    try:
        inp.on_message(mido.Message("note_on", note=60, velocity=127))
        inp.on_message(mido.Message("control_change", control=64, value=127))
        inp.on_message(mido.Message("note_on", note=64, velocity=127))
        inp.on_message(mido.Message("note_off", note=64))   # held by the pedal
        inp.on_message(mido.Message("note_on", note=20, velocity=100))  # refused: no key-up
        inp.check_port(["Keys MIDI 1 20:0", "Midi Through Port-0 14:0"])
        assert inp.connected and [g for _, g in engine.got] == ["note 60 1 hold",
                                                               "note 64 1 hold"]
        inp.check_port(["Midi Through Port-0 14:0"])
        assert not inp.connected
        assert [g for g in engine.got[2:]] == [("midi", "release 60"), ("midi", "release 64")]
        assert "disconnected; released 2 key(s)" in engine.messages[-1]
        inp.check_port(["Midi Through Port-0 14:0", "Other Synth 24:0"])
        assert not inp.connected
        opened: list[str] = []
        inp.check_port(["Keys MIDI 1 24:0"], reopen=lambda name: opened.append(name))
        assert inp.connected and opened == ["Keys MIDI 1 24:0"]
        assert engine.messages[-1] == "MIDI: Keys MIDI 1 24:0 is back"
        inp.on_message(mido.Message("note_on", note=62, velocity=127))
        inp.on_message(mido.Message("control_change", control=64, value=0))  # pedal was reset
        inp.on_message(mido.Message("note_off", note=62))
        assert [g for _, g in engine.got[4:]] == ["note 62 1 hold", "release 62"]
    finally:
        inp.close()
    assert port_base("Keys MIDI 1 20:0") == "Keys MIDI 1" and port_base("Keys") == "Keys"
