"""Where a command comes from (a journal line's `src`) and what each source may do.

A policy, not string comparisons spread over the engine and the front ends: a source that
reaches the instrument over a network (OSC beyond loopback with --osc-host, a web page) loads
patches only from the patch folder; the terminal's own words (`quit`, `keys`) are the
terminal's only. The engine applies `confined_loads` (engine/door.py); every front end asks
`terminal_word_refusal` (frontends/seam.py's run_line)."""

from __future__ import annotations

from dataclasses import dataclass

#: Words only the terminal says: `quit` ends the session, `keys` turns its keyboard into an
#: instrument (a mode of the REPL's prompt).
TERMINAL_WORDS = ("quit", "keys")


@dataclass(frozen=True)
class Source:
    name: str
    confined_loads: bool = False  # `load` only of patches under the patch folder
    ends_session: bool = False    # the terminal: may say `quit` and `keys`
    said: str = "from here"       # how a refusal names it: "over OSC", "from the web page"


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("repl", ends_session=True, said="from the terminal"),
    Source("osc", confined_loads=True, said="over OSC"),
    Source("midi", said="from MIDI"),
    Source("patch", said="from a patch"),
    Source("web", confined_loads=True, said="from the web page"),
)}

# An unknown name (a test's, a future front end's) is treated as a network one: confined.
_UNKNOWN = Source("?", confined_loads=True)


def source(name: str) -> Source:
    """The policy of the source `name`."""
    return SOURCES.get(name, _UNKNOWN)


def terminal_word_refusal(word: str, src: str) -> str | None:
    """Why `word` may not be said from `src` (None: it may)."""
    if word not in TERMINAL_WORDS or source(src).ends_session:
        return None
    what = "it ends the instrument only from its terminal (or SIGTERM)" if word == "quit" \
        else "it plays the terminal's keyboard (the web page has its own: keys a w s e d ...)"
    return f"`{word}` is not available {source(src).said}: {what}"
