"""Note names <-> MIDI numbers, and the note-string language of patches and the REPL.

Conventions (the user contract): C4 = 60, so C-1 = 0 and G9 = 127. A note name is a letter
A-G (either case), up to two accidentals (``#`` sharp, ``b`` flat), and an octave number
(which may be negative). A plain integer 0..127 is a MIDI number.

A note string is a row of steps separated by spaces: a note (``C4``, ``F#3``, ``Bb2``,
``60``), a rest ``~``, or a chord in brackets (``[C4 E4 G4]``); e.g.
``"C4 E4 G4 B4 ~ G4 [C4 E4] ~"`` is 8 steps. Steps are numbered from 1 in error messages,
because that is how a performer counts them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pgesam_live.errors import CommandError

PITCH_MIN = 0
PITCH_MAX = 127
# A note outside the model's rendered range is played from the nearest edge, re-pitched like
# a sampler's top or bottom zone, up to this far beyond it.
REPITCH_BEYOND_SEMITONES = 12


# (any letter: `H4-C5` is shaped as a span, so that its bad end can be named)
_SPAN_RE = re.compile(r"^\s*(?P<lo>[A-Za-z][#b]?-?\d+|\d+)\s*[-:]\s*"
                      r"(?P<hi>[A-Za-z][#b]?-?\d+|\d+)\s*$")


def span_ends(text: str) -> tuple[str, str] | None:
    """The two ends of a span as written (`C3-C5` -> ("C3", "C5"), `20-200` -> ("20", "200"),
    pitches or not); None if `text` is not shaped as a span."""
    m = _SPAN_RE.match(str(text))
    return None if m is None else (m.group("lo"), m.group("hi"))


def parse_pitch_span(text: str) -> tuple[int, int] | None:
    """`48-72`, `C3-C5` or `C-1:G9` -> (low, high) MIDI, inclusive; None if `text` is not a
    span (a single pitch, or not pitches at all: the caller says what is allowed)."""
    ends = span_ends(text)
    if ends is None:
        return None
    try:
        return parse_pitch(ends[0]), parse_pitch(ends[1])
    except NoteError:
        return None


def playable_range(rendered: tuple[int, int]) -> tuple[int, int]:
    """The pitches an instrument with model range `rendered` plays (inclusive)."""
    lo, hi = rendered
    return (max(PITCH_MIN, lo - REPITCH_BEYOND_SEMITONES),
            min(PITCH_MAX, hi + REPITCH_BEYOND_SEMITONES))


def rendered_pitch(pitch: int, rendered: tuple[int, int] | None) -> int:
    """The pitch the model renders for `pitch` (the nearest edge of its range)."""
    if rendered is None:
        return pitch
    return min(max(pitch, rendered[0]), rendered[1])


def range_text(rendered: tuple[int, int]) -> str:
    """`36..84 (C2..C6; the model renders 48..72, notes beyond are re-pitched)`."""
    lo, hi = playable_range(rendered)
    return (f"{lo}..{hi} ({midi_to_note(lo)}..{midi_to_note(hi)}; the model renders "
            f"{rendered[0]}..{rendered[1]}, notes beyond are re-pitched)")


def pitch_range_message(where: str, pitch: int, rendered: tuple[int, int] | None) -> str:
    """The one form of a pitch-range refusal, wherever it is caught (the command table, the
    engine; REPL, OSC, MIDI, patches): `play: pitch 999 is outside what the model plays:
    36..84 (...)`. Without a model at hand (`rendered` None), MIDI's own range is named."""
    if rendered is None:
        return (f"{where}: pitch {pitch} is outside what the model plays (MIDI notes are "
                f"0..127; `status` names the model's range)")
    return f"{where}: pitch {pitch} is outside what the model plays: {range_text(rendered)}"
REST = "~"

# Pitch classes of the natural notes.
_NATURAL = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")

_NAME_RE = re.compile(r"^([A-Ga-g])(##|bb|#|b)?(-?\d+)$")
_INT_RE = re.compile(r"^\d+$")
# A token is a bracket or a run of anything else that is not white space.
_TOKEN_RE = re.compile(r"\[|\]|[^\s\[\]]+")

# One step of a note string: the pitches sounding together; () is a rest.
Step = tuple[int, ...]


class NoteError(CommandError):
    """A note name or note string that does not parse.

    ``token`` is the offending text and ``step`` the 1-based step it sits in (0 when the
    error is about the string as a whole, e.g. an unclosed bracket at its end)."""

    def __init__(self, message: str, token: str = "", step: int = 0) -> None:
        super().__init__(message)
        self.token = token
        self.step = step


def note_to_midi(name: str) -> int:
    """MIDI number of a note name (``C4`` -> 60, ``F#3`` -> 54, ``Bb2`` -> 46) or of a
    decimal string (``"60"`` -> 60). Raises NoteError naming the accepted forms."""
    text = name.strip()
    if _INT_RE.match(text):
        pitch = int(text)
    else:
        m = _NAME_RE.match(text)
        if m is None:
            raise NoteError(
                f'"{name}" is not a note name (use C4 = 60, F#3, Bb2, or a number 0..127)',
                token=name,
            )
        letter, accidental, octave = m.groups()
        shift = {None: 0, "#": 1, "##": 2, "b": -1, "bb": -2}[accidental]
        pitch = 12 * (int(octave) + 1) + _NATURAL[letter.lower()] + shift
    if not PITCH_MIN <= pitch <= PITCH_MAX:
        raise NoteError(
            f'"{name}" is pitch {pitch}, outside MIDI 0..127 (C-1 .. G9)', token=name
        )
    return pitch


def parse_pitch(value: str | int) -> int:
    """A pitch from a note name, a decimal string or an int (bools are refused: YAML's
    ``yes``/``true`` are almost certainly a typo, not pitch 1)."""
    if isinstance(value, bool):
        raise NoteError(f"{value!r} is not a pitch (use a note name like C4 or 0..127)")
    if isinstance(value, int):
        if not PITCH_MIN <= value <= PITCH_MAX:
            raise NoteError(f"pitch {value} is outside MIDI 0..127", token=str(value))
        return value
    if isinstance(value, str):
        return note_to_midi(value)
    raise NoteError(f"{value!r} is not a pitch (use a note name like C4 or 0..127)")


def midi_to_note(pitch: int, flats: bool = False) -> str:
    """Name of a MIDI number: 60 -> ``C4``, 61 -> ``C#4`` (``Db4`` with flats=True)."""
    if isinstance(pitch, bool) or not isinstance(pitch, int):
        raise NoteError(f"{pitch!r} is not a MIDI number (an int 0..127)")
    if not PITCH_MIN <= pitch <= PITCH_MAX:
        raise NoteError(f"pitch {pitch} is outside MIDI 0..127", token=str(pitch))
    names = _FLAT_NAMES if flats else _SHARP_NAMES
    return f"{names[pitch % 12]}{pitch // 12 - 1}"


def _bad_names(text: str) -> list[str]:
    """Every token of a note string that is not a note, as '"X9" at step 5'."""
    out: list[str] = []
    step, in_chord = 0, False
    for token in _TOKEN_RE.findall(text):
        if token == "[":
            in_chord, step = True, step + 1
            continue
        if token == "]":
            in_chord = False
            continue
        if not in_chord:
            step += 1
        if token == REST:
            continue
        try:
            note_to_midi(token)
        except NoteError:
            out.append(f'"{token}" at step {step}')
    return out


def _check_chords_closed(tokens: Sequence[str]) -> None:
    """A '[' that no later ']' closes is named first: whatever follows it inside the would-be
    chord (a rest, another '[') is a symptom of the missing ']', not the mistake."""
    step, open_at = 0, None
    for token in tokens:
        if token == "[":
            if open_at is not None:
                return  # nesting: parse_notes names it where it happens
            step += 1
            open_at = step
        elif token == "]":
            open_at = None
        elif open_at is None:
            step += 1
    if open_at is not None:
        raise NoteError(f"the chord '[' at step {open_at} has no closing ']'",
                        token="[", step=open_at)


def parse_notes(text: str) -> tuple[Step, ...]:
    """Steps of a note string; each step is a tuple of MIDI numbers, ``()`` for a rest.

    ``"C4 ~ [C4 E4]"`` -> ``((60,), (), (60, 64))``. Raises NoteError (with ``.step``) for
    a bad name, a nested, empty or unclosed chord, or an empty string."""
    tokens = _TOKEN_RE.findall(text)
    _check_chords_closed(tokens)
    steps: list[Step] = []
    chord: list[int] | None = None
    for token in tokens:
        step_no = len(steps) + 1
        if token == "[":
            if chord is not None:
                raise NoteError(
                    f"chords do not nest: '[' inside the chord at step {step_no}",
                    token=token, step=step_no,
                )
            chord = []
        elif token == "]":
            if chord is None:
                raise NoteError(
                    f"']' at step {step_no} closes no chord", token=token, step=step_no
                )
            if not chord:
                raise NoteError(
                    f"empty chord '[]' at step {step_no} (use ~ for a rest)",
                    token="[]", step=step_no,
                )
            steps.append(tuple(chord))
            chord = None
        elif token == REST:
            if chord is not None:
                raise NoteError(
                    f"a rest '~' inside the chord at step {step_no}", token=token, step=step_no
                )
            steps.append(())
        else:
            try:
                pitch = note_to_midi(token)
            except NoteError:
                others = _bad_names(text)[1:]
                also = "; also " + ", ".join(others) if others else ""
                raise NoteError(
                    f'"{token}" at step {step_no} is not a note name{also} '
                    "(use C4 = 60, F#3, Bb2, 0..127, ~ for a rest, [..] for a chord)",
                    token=token, step=step_no,
                ) from None
            if chord is not None:
                chord.append(pitch)
            else:
                steps.append((pitch,))
    if chord is not None:
        raise NoteError(
            f"the chord at step {len(steps) + 1} has no closing ']'",
            token="[", step=len(steps) + 1,
        )
    if not steps:
        raise NoteError('the note string is empty (e.g. "C4 E4 G4 ~")')
    return tuple(steps)


def format_notes(steps: Iterable[Sequence[int]], flats: bool = False) -> str:
    """The note string of steps (inverse of parse_notes, with canonical names)."""
    parts: list[str] = []
    for step in steps:
        if len(step) == 0:
            parts.append(REST)
        elif len(step) == 1:
            parts.append(midi_to_note(step[0], flats))
        else:
            parts.append("[" + " ".join(midi_to_note(p, flats) for p in step) + "]")
    return " ".join(parts)


def note_names(low: int = PITCH_MIN, high: int = PITCH_MAX, flats: bool = False,
               both: bool = False) -> list[str]:
    """Names of the pitches low..high (inclusive), for tab completion; with `both` each
    black key twice, sharp then flat (C#4, Db4)."""
    out: list[str] = []
    for p in range(max(low, PITCH_MIN), min(high, PITCH_MAX) + 1):
        out.append(midi_to_note(p, flats and not both))
        if both and midi_to_note(p, True) != out[-1]:
            out.append(midi_to_note(p, True))
    return out
