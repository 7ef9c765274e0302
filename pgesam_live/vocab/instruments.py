"""The training instruments as point names: `at piano`, `at violin`, `at fluidr3_gm_040`.

A model's training points are its instruments' places on the map ({name, x, y}; a name such
as fluidr3_gm_000 reads as a General MIDI program and its bank, "Acoustic Grand Piano
(fluidr3_gm)": mapview.instrument_label). A point name that no patch, bookmark or demo point
has is looked up here: an instrument's own name exactly, else words (split on `-` and `_`)
that each begin a word of an instrument's program name: `piano`, `grand-piano`, `nylon`,
`elec_bass`. Of several, those whose words match whole win (`harp` is the Orchestral Harp,
not the Harpsichord), then the lowest program number (General MIDI puts each family's
archetype first: 0 Acoustic Grand Piano, 24 Acoustic Guitar (nylon), 40 Violin), then the
first bank.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pgesam_live.vocab.mapview import instrument_label

MAX_OTHERS = 4  # the other matches a reply names


@dataclass(frozen=True)
class InstrumentMatch:
    name: str                 # the training point's own name (fluidr3_gm_000)
    label: str                # what a performer reads: "Acoustic Grand Piano (fluidr3_gm)"
    x: float
    y: float
    others: tuple[str, ...]   # other programs the words matched (up to MAX_OTHERS)


def _program(p: dict[str, Any]) -> str:
    """The program name of a training point: its label without the bank, else its name."""
    name = str(p.get("name", ""))
    label = instrument_label(name)
    return label.rsplit(" (", 1)[0] if label != name else name


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def _order(p: dict[str, Any], i: int, whole: bool) -> tuple[int, int, int]:
    """Whole-word matches first, then the lowest program number (the name's trailing
    number), then the given order."""
    m = re.search(r"(\d+)$", str(p.get("name", "")))
    return (0 if whole else 1, int(m.group(1)) if m else 10 ** 6, i)


def find_instrument(name: str, training_points: Sequence[dict[str, Any]]
                    ) -> InstrumentMatch | None:
    """The training instrument a point name means (see the module), or None."""
    def match(p: dict[str, Any], others: tuple[str, ...] = ()) -> InstrumentMatch:
        return InstrumentMatch(str(p["name"]), instrument_label(str(p["name"])),
                               float(p["x"]), float(p["y"]), others)

    for p in training_points:
        if str(p.get("name")) == name:
            return match(p)
    query = _words(name)
    if not query:
        return None
    hits = []
    for i, p in enumerate(training_points):
        words = _words(_program(p))
        if all(any(w.startswith(q) for w in words) for q in query):
            hits.append((_order(p, i, all(q in words for q in query)), p))
    if not hits:
        return None
    hits.sort(key=lambda h: h[0])
    best = hits[0][1]
    others = tuple(dict.fromkeys(_program(p) for _, p in hits[1:]
                                 if _program(p) != _program(best)))[:MAX_OTHERS]
    return match(best, others)


def instrument_words(training_points: Sequence[dict[str, Any]]) -> list[str]:
    """The words `at WORD` finds an instrument by (tab completion offers them after the
    point names): each program name's words of three letters or more, sorted."""
    words = {w for p in training_points for w in _words(_program(p))
             if len(w) >= 3 and not w.isdigit()}
    return sorted(words)
