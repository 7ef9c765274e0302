"""The command table: parsing, validation messages, round trips, OSC mapping, completion."""

from __future__ import annotations

import math

import pytest

from pgesam_live.errors import CommandError
from pgesam_live.vocab.commands import (
    COMMANDS,
    OSC_ADDRESSES,
    Command,
    from_osc,
    help_text,
    parse_line,
    validate,
)
from pgesam_live.vocab.completion import CompletionContext, complete

GOOD_LINES = [
    "at 0.4 -0.3",
    "at glass",
    "xy 0.25 1",
    "play C4 E4 G4 vel 0.6 len 2",
    "play 60",
    "play Bb2 len 0.5",
    "note F#3",
    "note 60 0.5 1.5",
    "note_at 0.2 0.1 C4 0.9",
    "release C4",
    'seq arp "C4 E4 [G4 B4] ~" 0.5',
    "start arp",
    "stop arp",
    "glide 0.5 0.5 8",
    "tempo 96.5",
    'load "my patch.yaml"',
    "mark nice",
    "hush",
    "panic",
    "prerender 0 0",
    "prerender 0.1 0.2 C3 C5",
    "lookahead 0.25",
    "map",
    "status",
    "help",
    "help play",
    "quit",
]


@pytest.mark.parametrize("line", GOOD_LINES)
def test_round_trip(line: str) -> None:
    cmd = parse_line(line)
    again = parse_line(cmd.to_line())
    assert again == cmd
    assert validate(cmd) == cmd


def test_values_are_converted() -> None:
    cmd = parse_line("play C4 F#3 Bb2 61 vel 0.6 len 2")
    assert cmd.args == {"pitches": [60, 54, 46, 61], "vel": 0.6, "len_beats": 2.0}
    assert parse_line("at glass").args == {"name": "glass"}
    assert parse_line("at 1 -1").args == {"x": 1.0, "y": -1.0}
    assert parse_line("note 60").args == {"pitch": 60, "vel": 0.8, "len_s": None}
    assert parse_line("TEMPO 120").name == "tempo"


def test_float_journal_text_is_exact() -> None:
    x = 0.1 + 0.2  # 0.30000000000000004: the journal must keep every bit
    line = Command("at", {"x": x, "y": -1 / 3}).to_line()
    assert parse_line(line).args == {"x": x, "y": -1 / 3}


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("tempo 900", "tempo: bpm 900 is out of range 20..400"),
        ("tempo nan", "finite"),
        ("at 0.1 inf", "finite"),
        ("at 2 0", "out of range -1.5..1.5"),
        ("at 0", "missing Y"),
        ("at glass 1", "too many arguments"),
        ("play", "missing PITCHES"),
        ("play H4", "not a note name"),
        ("play 128", "outside what the model plays (MIDI notes are 0..127"),
        ("play C4 vel", "`vel` needs a value"),
        ("play C4 vel 2", "0..1"),
        ("play C4 len 0", "> 0"),
        ("note 60.5", "not a note name"),
        ('seq a "C4 [E4" 1', "seq: notes:"),
        ('seq a "C4 E4 1', "close the quote"),
        ('seq a "C4" 0', "step 0 is out of range 0.001..64"),  # as a patch's step
        ('seq a "C4" 0.0001', "step 0.0001 is out of range 0.001..64"),  # floods the audio
        ('seq a "C4" 65', "step 65 is out of range 0.001..64"),
        ("seq 1a C4 1", "not a name"),
        ("tempp 3", "did you mean tempo"),
        ("prerender 0 0 C5 C3", "above HIGH"),
        ("prerender 0 0 C5", "both LOW and HIGH"),
        ("help nosuch", "unknown command"),
        ("hush now", "too many arguments"),
        ("", "empty line"),
    ],
)
def test_errors_name_what_is_allowed(line: str, fragment: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_line(line)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_osc_mapping_accepts_int_and_float() -> None:
    assert from_osc("/pgesam/note", [60]).args == {"pitch": 60, "vel": 0.8, "len_s": None}
    assert from_osc("/pgesam/note", [60.0, 1, 0.5]).args == {"pitch": 60, "vel": 1.0,
                                                             "len_s": 0.5}
    assert from_osc("/pgesam/note", ["C4"]).args["pitch"] == 60
    assert from_osc("/pgesam/timbre", [0, 1]) == parse_line("at 0 1")
    assert from_osc("/pgesam/point", ["glass"]) == parse_line("at glass")
    assert from_osc("/pgesam/xy", [0.5, 0.5]) == parse_line("xy 0.5 0.5")
    assert from_osc("/pgesam/seq/start", ["arp"]).name == "start"
    assert from_osc("/pgesam/patch", ["a.yaml"]).name == "load"
    assert from_osc("/pgesam/hush", []).name == "hush"


def test_osc_note_takes_the_hold_and_follow_modes() -> None:
    assert from_osc("/pgesam/note", [60, 0.8, "hold"]) == parse_line("note 60 0.8 hold")
    assert from_osc("/pgesam/note_at", [0.1, 0.2, "C4", 1, "follow"]) == \
        parse_line("note_at 0.1 0.2 C4 1 follow")
    with pytest.raises(CommandError, match="not a mode"):
        from_osc("/pgesam/note", [60, 0.8, "hodl"])
    with pytest.raises(CommandError, match="too many"):
        from_osc("/pgesam/note", [60, 0.8, "hold", 2])


@pytest.mark.parametrize(
    "address, args, fragment",
    [
        ("/pgesam/nope", [], "unknown address"),
        ("/pgesam/tempo", [math.nan], "finite"),
        ("/pgesam/tempo", [math.inf], "finite"),
        ("/pgesam/tempo", ["120"], "int or float"),
        ("/pgesam/tempo", [1e30], "out of range"),
        ("/pgesam/tempo", [], "missing BPM"),
        ("/pgesam/tempo", [120, 1], "too many"),
        ("/pgesam/xy", [0.5], "missing V"),
        ("/pgesam/note", [60.5], "whole MIDI"),
        ("/pgesam/note", [True], "boolean"),
        ("/pgesam/point", [10], "must be a string"),
    ],
)
def test_osc_rejections(address: str, args: list, fragment: str) -> None:
    with pytest.raises(CommandError) as info:
        from_osc(address, args)
    assert fragment in str(info.value)


def test_contract_addresses_are_mapped() -> None:
    for address in ["/pgesam/note", "/pgesam/note_at", "/pgesam/timbre", "/pgesam/xy",
                    "/pgesam/point", "/pgesam/tempo", "/pgesam/seq/start", "/pgesam/seq/stop",
                    "/pgesam/patch", "/pgesam/prerender", "/pgesam/hush", "/pgesam/panic"]:
        assert address in OSC_ADDRESSES


def test_front_end_words_are_not_journalled() -> None:
    local = {n for n, s in COMMANDS.items() if not s.journal}
    assert local == {"map", "status", "help", "quit", "points", "seqs", "keys", "export",
                     "save"}
    assert parse_line("tempo 100").journal


def test_help() -> None:
    text = help_text()
    for name in COMMANDS:
        assert name in text
    one = help_text("note")
    assert "usage: note PITCH [VEL] [LEN_S]" in one and "/pgesam/note" in one


CTX = CompletionContext(point_names=["glass", "reed"], sequence_names=["arp", "bass"],
                        patch_files=["ambient.yaml", "live/set1.yaml"],
                        instrument_words=["grand", "piano", "violin"])


@pytest.mark.parametrize(
    "text, expected, absent",
    [
        ("te", {"tempo"}, {"at"}),
        ("at ", {"glass", "reed"}, {"C4"}),
        ("at g", {"glass", "grand"}, {"reed", "piano"}),
        ("at vi", {"violin"}, {"glass"}),
        ("play C", {"C4", "C#4"}, {"D4", "vel"}),
        ("play C4 ", {"vel", "len", "E4"}, set()),
        ("play C4 vel 0.5 ", {"len"}, {"vel"}),
        ("load ", {"ambient.yaml", "live/set1.yaml"}, set()),
        ("stop ", {"arp", "bass"}, {"glass"}),
        ("help pa", {"panic"}, {"play"}),
        ("note_at 0 0 ", {"C4"}, {"glass"}),
        ("tempo ", set(), {"glass", "C4"}),
    ],
)
def test_completion_by_position(text: str, expected: set, absent: set) -> None:
    _, cands = complete(text, CTX)
    assert expected <= set(cands)
    assert not (absent & set(cands))


@pytest.mark.parametrize("line,fragment", [
    ("at nan nan", "finite"), ("at inf 0", "finite"), ("at 5 0", "x 5 is out of range"),
    ("at glass 1", "too many arguments"), ("at 0.1", "missing Y"),
    ("note C4 hold", "a held note gives its velocity first: `note C4 0.8 hold`"),
    ("note C4 follow", "`note C4 0.8 follow`")])
def test_the_error_of_the_form_the_performer_meant(line: str, fragment: str) -> None:
    with pytest.raises(CommandError, match=fragment):
        parse_line(line)


def test_messages_use_the_words_typed_and_help_names_the_osc_way() -> None:
    with pytest.raises(CommandError, match="play: len -1 is out of range"):
        parse_line("play C4 len -1")
    with pytest.raises(CommandError, match='quote the notes'):
        parse_line("seq a C4 E4 0.5")
    assert 'OSC: /pgesam/cmd "play ..."' in help_text("play")
    assert "/pgesam/map" in help_text("map") and "/pgesam/status" in help_text("status")


def test_control_characters_and_unknown_addresses_get_a_fix() -> None:
    with pytest.raises(CommandError, match=r"control character '\\x00' at column 8"):
        parse_line("play C4\x00")
    assert parse_line("play\tC4").args["pitches"] == [60]
    with pytest.raises(CommandError, match=r"did you mean /pgesam/seq/start.*the addresses: "
                                           r"/pgesam/cmd, .*/pgesam/note,"):
        from_osc("/pgesam/seq/strat", ["arp"])


def test_validate_checks_values_without_a_text_round_trip() -> None:
    """A Command built in code is checked on its values (no to_line/parse_line), and gives
    what the text round trip gives, so journal and replay agree with what was applied."""
    import pgesam_live.vocab.commands as commands_module

    lines = ["at 0.4 -0.3", "at glass", "xy 0.25 1", "play C4 E4 vel 0.5 len 2", "play 60",
             "note 60", "note 61 0.9 1.5", "note_at 0.1 0.2 C4 0.9", 'seq arp "C4 ~ [E4 G4]" 0.5',
             "start arp", "stop arp", "glide 0.5 0.5 8", "tempo 96", "load x.yaml",
             "mark nice", "hush", "panic", "prerender 0.1 0.2", "prerender 0.1 0.2 48 60",
             "lookahead 0.25", "release C4"]
    real_parse = commands_module.parse_line
    for line in lines:
        cmd = real_parse(line)
        sparse = Command(cmd.name, {k: v for k, v in cmd.args.items() if v is not None})
        assert validate(sparse) == cmd, line
        assert real_parse(validate(sparse).to_line()) == cmd, line
    for bad in (Command("at", {"x": 2.0, "y": 0.0}), Command("tempo", {"bpm": 5.0}),
                Command("play", {"pitches": []}), Command("note", {"pitch": 200}),
                Command("prerender", {"x": 0.0, "y": 0.0, "low": 60}),
                Command("nope", {}), Command("at", {"x": float("nan"), "y": 0.0})):
        with pytest.raises(CommandError):
            validate(bad)
