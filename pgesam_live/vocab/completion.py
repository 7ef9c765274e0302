"""Tab completion from the command table, by argument position: command words, point and
sequence names, patch files, note names (only those the model plays), keywords."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from pgesam_live.notes import note_names, playable_range
from pgesam_live.vocab.commands import COMMANDS

COMPLETION_PITCHES = (12, 119)  # C0..B8


def completion_note_names(low: int = COMPLETION_PITCHES[0],
                          high: int = COMPLETION_PITCHES[1]) -> list[str]:
    """Completion candidates for pitches: naturals, sharps and flats (notes.note_names)."""
    return note_names(max(low, COMPLETION_PITCHES[0]), min(high, COMPLETION_PITCHES[1]),
                      both=True)


@dataclass(frozen=True)
class CompletionContext:
    """What the completer may offer besides the table's own words."""

    point_names: Sequence[str] = ()
    instrument_words: Sequence[str] = ()  # `at piano`: after the point names (instruments.py)
    sequence_names: Sequence[str] = ()
    patch_files: Sequence[str] = ()
    pitch_range: tuple[int, int] | None = None  # the model's: only playable notes offered


def candidates_for_kind(kind: str, ctx: CompletionContext) -> list[str]:
    if kind == "pitch":
        if ctx.pitch_range is None:
            return completion_note_names()
        return completion_note_names(*playable_range(ctx.pitch_range))
    if kind == "point":
        return [*ctx.point_names, *ctx.instrument_words]
    if kind == "seq":
        return list(ctx.sequence_names)
    if kind == "patch":
        return list(ctx.patch_files)
    if kind == "command":
        return list(COMMANDS)
    return []


def complete(before_cursor: str, ctx: CompletionContext) -> tuple[str, list[str]]:
    """(word being typed, candidate words) for the text left of the cursor.

    Context-aware by position from the table: the first word is a command, later words take
    the kinds of the arguments at that position (all forms), and `vel`/`len` keywords are
    offered where the form has them."""
    if before_cursor.count('"') % 2 or before_cursor.count("'") % 2:
        return "", []  # inside a quoted note string: nothing sensible to offer
    words = before_cursor.split()
    if before_cursor and not before_cursor[-1].isspace() and words:
        prefix = words.pop()
    else:
        prefix = ""
    try:
        done = shlex.split(" ".join(words))
    except ValueError:
        return prefix, []
    if not done:
        return prefix, [c for c in COMMANDS if c.startswith(prefix.lower())]
    spec = COMMANDS.get(done[0].lower())
    if spec is None:
        return prefix, []
    rest = done[1:]
    out: list[str] = []
    for form in spec.forms:
        kw = form.keywords
        if rest and rest[-1] in kw:
            continue  # a keyword's value: a number, nothing to list
        n_pos = sum(1 for i, t in enumerate(rest) if t not in kw and not (i and rest[i - 1] in kw))
        pos = form.positionals
        kinds: list[str] = []
        if n_pos < len(pos):
            kinds.append(pos[n_pos].kind)
        elif pos and pos[-1].variadic:
            kinds.append(pos[-1].kind)
        if kw and n_pos >= 1 and (n_pos >= len(pos) or pos[-1].variadic):
            out.extend(w for w in kw if w not in rest)
        for kind in kinds:
            out.extend(candidates_for_kind(kind, ctx))
    seen: set[str] = set()
    unique = [c for c in out if not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]
    low = prefix.lower()
    return prefix, [c for c in unique if c.lower().startswith(low)]
