"""The scheduler's render-request tracking: which notes it has asked the renderer for, by
when, and which of them a move of the performer's point has made stale (cancelled).

A key is asked for once until its deadline passes (`prune`); a looping pattern asks again on
its next pass and the requester coalesces it against the cache. Requests made at the
performer's point (a note without its own timbre) carry the point's *generation*, bumped by
every move; `cancel_superseded` cancels those of older generations not asked for again since,
so a stream of moves (an XY pad while a sequence plays) never piles renders up behind the
ones that will play. A key also wanted by a note with its own timbre is *pinned*: never
cancelled.

Runs on the audio thread (inside the scheduler's tick): dictionaries only, no locks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

from pgesam_live.engine.counters import SchedulerCounters
from pgesam_live.engine.ports import NoteSource, RenderRequester
from pgesam_live.patches.model import XY

PRUNE_OVER = 256  # more tracked requests than this: prune even if none has expired


class RenderRequests:
    """Render requests the scheduler has made, and their cancellation when superseded."""

    def __init__(self, source: NoteSource, requester: RenderRequester,
                 counters: SchedulerCounters) -> None:
        self.source = source
        self.requester = requester
        self.counters = counters
        self._requested: dict[Hashable, float] = {}
        # Requests made at the performer's point, by the point's generation (bumped by every
        # move): a move's request_ahead cancels those of older generations not asked again.
        self._cp_keys: dict[Hashable, int] = {}
        self._cp_gen = 0
        self._cp_judged = 0  # the generation cancel_superseded last judged
        self._pinned: dict[Hashable, float] = {}  # asked for by notes with their own timbre

    def request(self, key: Hashable, deadline_s: float, current_point: bool = False) -> bool:
        """Ask for ``key`` by ``deadline_s`` (engine seconds), once until the deadline passes.
        ``current_point``: asked for at the performer's point, superseded when it moves.
        True when the requester was asked now."""
        if current_point:  # asked for where the performer's point is: superseded when it moves
            self._cp_keys[key] = self._cp_gen
        else:  # a note with its own timbre needs it wherever the performer goes: never cancelled
            self._pinned[key] = max(deadline_s, self._pinned.get(key, -math.inf))
        if key in self._requested:
            return False
        self._requested[key] = deadline_s
        self.counters.requests += 1
        self.requester.request(key, deadline_s)
        return True

    def point_moved(self) -> None:
        """The performer's point moved: what was asked for at it is judged again."""
        self._cp_gen += 1

    def cancel_superseded(self, current_point: Callable[[], XY]) -> None:
        """Renders asked for at the performer's point before it moved, and not asked for
        again since (by a note still due there): cancelled. ``current_point`` is called only
        when there is something to judge."""
        if self._cp_judged == self._cp_gen:
            return  # the point has not moved since: nothing new to judge (every block)
        self._cp_judged = self._cp_gen
        stale = [k for k, gen in self._cp_keys.items() if gen < self._cp_gen]
        if not stale:
            return
        for k in stale:
            del self._cp_keys[k]
        x, y = current_point()
        # Kept: what a note with its own timbre also wants, and what lies at the point the
        # performer is on (a hush re-states the point without moving it).
        stale = [k for k in stale if k not in self._pinned and
                 k != self.source.key(x, y, k.pitch, k.seed)]  # type: ignore[attr-defined]
        if not stale:
            return
        for k in stale:
            self._requested.pop(k, None)
        cancel = getattr(self.requester, "cancel", None)
        if cancel is not None:
            cancel(stale)

    def prune(self, now_s: float) -> None:
        """Forget requests whose deadline has passed: a looping pattern asks again next pass
        (the requester coalesces it against the cache), and the memory stays small."""
        if len(self._requested) > PRUNE_OVER or any(d < now_s for d in self._requested.values()):
            self._requested = {k: d for k, d in self._requested.items() if d >= now_s}
            self._pinned = {k: d for k, d in self._pinned.items() if d >= now_s}
            # (_cp_keys stay until the point moves: a render past its deadline may still be
            # queued in the worker, and a move cancels it; they are one move's worth.)
