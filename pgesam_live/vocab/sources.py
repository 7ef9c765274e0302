"""Where a command comes from (a journal line's `src`) and what each source may do.

A policy, not string comparisons spread over the engine: a source that reaches the
instrument over a network (OSC beyond loopback with --osc-host, a web page) loads patches
only from the patch folder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    name: str
    confined_loads: bool = False  # `load` only of patches under the patch folder
    ends_session: bool = False    # may say `quit` (the terminal only)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("repl", ends_session=True),
    Source("osc", confined_loads=True),
    Source("midi"),
    Source("patch"),
    Source("web", confined_loads=True),
)}

# An unknown name (a test's, a future front end's) is treated as a network one: confined.
_UNKNOWN = Source("?", confined_loads=True)


def source(name: str) -> Source:
    """The policy of the source `name`."""
    return SOURCES.get(name, _UNKNOWN)
