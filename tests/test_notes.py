from __future__ import annotations

import pytest

from pgesam_live.errors import CommandError
from pgesam_live.notes import (
    NoteError,
    format_notes,
    midi_to_note,
    note_names,
    note_to_midi,
    parse_notes,
    parse_pitch,
)


@pytest.mark.parametrize(
    ("name", "pitch"),
    [
        ("C4", 60), ("c4", 60), ("A4", 69), ("F#3", 54), ("Bb2", 46), ("bb2", 46),
        ("B#3", 60), ("Cb4", 59), ("C##4", 62), ("Dbb4", 60), ("C-1", 0), ("G9", 127),
        ("60", 60), ("0", 0), ("127", 127), (" E4 ", 64),
    ],
)
def test_note_to_midi(name: str, pitch: int) -> None:
    assert note_to_midi(name) == pitch


@pytest.mark.parametrize("name", ["H4", "C", "-4", "C#", "Cx4", "C4.5", "60.0", "G#9", "128", ""])
def test_bad_names_raise_with_the_fix(name: str) -> None:
    with pytest.raises(NoteError) as info:
        note_to_midi(name)
    # A NoteError is a CommandError, so the REPL's one-line handler catches it.
    assert isinstance(info.value, CommandError)
    assert "C4" in str(info.value) or "0..127" in str(info.value)


def test_midi_to_note_round_trips_every_pitch() -> None:
    for pitch in range(128):
        assert note_to_midi(midi_to_note(pitch)) == pitch
        assert note_to_midi(midi_to_note(pitch, flats=True)) == pitch
    assert midi_to_note(61) == "C#4"
    assert midi_to_note(61, flats=True) == "Db4"
    assert midi_to_note(0) == "C-1"
    with pytest.raises(NoteError):
        midi_to_note(128)


def test_parse_pitch_accepts_ints_and_names_not_bools() -> None:
    assert parse_pitch(64) == 64
    assert parse_pitch("E4") == 64
    with pytest.raises(NoteError):
        parse_pitch(True)
    with pytest.raises(NoteError):
        parse_pitch(-1)
    with pytest.raises(NoteError):
        parse_pitch(1.5)  # type: ignore[arg-type]


def test_parse_notes_contract_example() -> None:
    steps = parse_notes("C4 E4 G4 B4 ~ G4 [C4 E4] ~")
    assert steps == ((60,), (64,), (67,), (71,), (), (67,), (60, 64), ())


def test_parse_notes_brackets_need_no_spaces_and_numbers_mix() -> None:
    assert parse_notes("[C4 E4 G4]~ 72 [48 Bb2]") == ((60, 64, 67), (), (72,), (48, 46))


@pytest.mark.parametrize(
    ("text", "step", "token"),
    [
        ("C4 E4 H4", 3, "H4"),
        ("C4 [E4 X] G4", 2, "X"),
        ("C4 [E4 [G4]]", 2, "["),
        ("C4 ]", 2, "]"),
        ("C4 []", 2, "[]"),
        ("C4 [E4 G4", 2, "["),
        ("C4 [E4 ~]", 2, "~"),
        # An unclosed chord is the mistake, not the rest or the bad name it swallows.
        ("C4 E4 G4 [B4 D5 ~", 4, "["),
        ("C4 [E4 H9 G4", 2, "["),
    ],
)
def test_parse_notes_errors_name_the_step(text: str, step: int, token: str) -> None:
    with pytest.raises(NoteError) as info:
        parse_notes(text)
    assert info.value.step == step
    assert info.value.token == token
    assert f"step {step}" in str(info.value)


def test_parse_notes_empty_is_an_error() -> None:
    with pytest.raises(NoteError, match="empty"):
        parse_notes("   ")


def test_format_notes_round_trip() -> None:
    text = "C4 E4 G4 B4 ~ G4 [C4 E4] ~"
    assert format_notes(parse_notes(text)) == text
    assert format_notes(parse_notes("Bb2 [Eb4 G4]"), flats=True) == "Bb2 [Eb4 G4]"


def test_note_names_for_completion() -> None:
    names = note_names(48, 72)
    assert len(names) == 25
    assert names[0] == "C3" and names[-1] == "C5"
