"""What plays in musical time: a stream yields items on beats (sequence steps, patch events,
timed patch commands, a patch swap); the scheduler fires them in (beat, priority, order)
order. Also the performer's point path (jumps and glides over engine time)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgesam_live.patches.model import XY, Event, Patch, PatchCommand, Sequence, timbre_at

if TYPE_CHECKING:
    from pgesam_live.engine.scheduler import Scheduler

# Priorities of items on the same beat: a patch swap first (it replaces what plays), then
# commands (a tempo or point change applies to the notes on its beat), then notes.
PRIO_SWAP, PRIO_COMMAND, PRIO_NOTE = 0, 1, 2


@dataclass
class Note:
    """A note item a stream yields: where in musical time, what, and how."""

    beat: float
    pitches: tuple[int, ...]
    velocity: float
    length_beats: float | None
    xy: XY | None  # None: the performer's current point at the onset


class Stream:
    """Items in musical time. ``next_beat`` None = exhausted; ``fire`` handles the next item
    and advances. ``peek_notes`` yields the notes due before a beat that were not peeked
    before (render requests), from ``req_pos``."""

    prio = PRIO_NOTE
    owner = "live"          # "patch" streams end at a patch swap or hush

    def __init__(self, order: int, origin_beat: float, seed: int) -> None:
        self.order = order
        self.origin_beat = origin_beat
        self.seed = seed
        self.end_beat = math.inf
        self.uses_current_point = False

    def next_beat(self) -> float | None:
        raise NotImplementedError

    def fire(self, sched: Scheduler) -> None:
        raise NotImplementedError

    def peek_notes(self, until_beat: float) -> Iterator[Note]:
        return iter(())

    def rewind_requests(self) -> None:
        """Forget what was requested (the current point moved: those renders are stale)."""


class SequenceStream(Stream):
    owner = "live"

    def __init__(self, order: int, origin_beat: float, seed: int, seq: Sequence,
                 owner: str) -> None:
        super().__init__(order, origin_beat, seed)
        self.seq = seq
        self.owner = owner
        # A pattern of rests only never sounds: treat it as finished at once.
        self.silent = not any(seq.pattern)
        self.n = 0 if self.silent else self._skip_rests(0)
        self.req_n = self.n
        self.uses_current_point = seq.timbre is None

    def _skip_rests(self, n: int) -> int:
        total = self.seq.total_steps
        # At most one pass of rests before a sounding step (the pattern has one).
        for _ in range(len(self.seq.pattern)):
            if total is not None and n >= total:
                return n
            if self.seq.step_at(n).pitches:
                return n
            n += 1
        return n

    def _beat_of(self, n: int) -> float | None:
        total = self.seq.total_steps
        if self.silent or (total is not None and n >= total):
            return None
        beat = self.origin_beat + self.seq.step_at(n).offset_beats
        return None if beat >= self.end_beat else beat

    def next_beat(self) -> float | None:
        return self._beat_of(self.n)

    def _note(self, n: int) -> Note:
        step = self.seq.step_at(n)
        return Note(
            beat=self.origin_beat + step.offset_beats, pitches=step.pitches,
            velocity=step.velocity, length_beats=step.length_beats,
            xy=self.seq.timbre_at(step.offset_beats),
        )

    def fire(self, sched: Scheduler) -> None:
        note = self._note(self.n)
        self.n = self._skip_rests(self.n + 1)
        self.req_n = max(self.req_n, self.n)
        sched._play_note(note, self.seed, tag=("seq", self.seq.name))

    def peek_notes(self, until_beat: float) -> Iterator[Note]:
        while True:
            beat = self._beat_of(self.req_n)
            if beat is None or beat >= until_beat:
                return
            note = self._note(self.req_n)
            self.req_n = self._skip_rests(self.req_n + 1)
            yield note

    def rewind_requests(self) -> None:
        self.req_n = self.n


class EventStream(Stream):
    owner = "patch"

    def __init__(self, order: int, origin_beat: float, seed: int,
                 events: tuple[Event, ...]) -> None:
        super().__init__(order, origin_beat, seed)
        self.events = events
        self.i = 0
        self.req_i = 0
        self.uses_current_point = any(e.timbre is None for e in events)

    def _beat_of(self, i: int) -> float | None:
        if i >= len(self.events):
            return None
        beat = self.origin_beat + self.events[i].at_beats
        return None if beat >= self.end_beat else beat

    def next_beat(self) -> float | None:
        return self._beat_of(self.i)

    def _note(self, i: int) -> Note:
        ev = self.events[i]
        xy = timbre_at(ev.timbre, ev.at_beats)
        return Note(beat=self.origin_beat + ev.at_beats, pitches=ev.pitches,
                     velocity=ev.velocity, length_beats=ev.length_beats, xy=xy)

    def fire(self, sched: Scheduler) -> None:
        note = self._note(self.i)
        self.i += 1
        self.req_i = max(self.req_i, self.i)
        sched._play_note(note, self.seed)

    def peek_notes(self, until_beat: float) -> Iterator[Note]:
        while True:
            beat = self._beat_of(self.req_i)
            if beat is None or beat >= until_beat:
                return
            note = self._note(self.req_i)
            self.req_i += 1
            yield note

    def rewind_requests(self) -> None:
        self.req_i = self.i


class CommandStream(Stream):
    prio = PRIO_COMMAND
    owner = "patch"

    def __init__(self, order: int, origin_beat: float, seed: int,
                 commands: tuple[PatchCommand, ...]) -> None:
        super().__init__(order, origin_beat, seed)
        self.commands = commands
        self.i = 0

    def next_beat(self) -> float | None:
        if self.i >= len(self.commands):
            return None
        beat = self.origin_beat + (self.commands[self.i].at_beats or 0.0)
        return None if beat >= self.end_beat else beat

    def fire(self, sched: Scheduler) -> None:
        cmd = self.commands[self.i]
        self.i += 1
        sched._run_command(cmd)


# A patch's load-time command lines that still run when a hush installs it before its bar:
# they set where and how it plays (the point, bookmarks, tempo, look-ahead, renders), not sound.
HUSH_KEEPS = frozenset({"at", "mark", "tempo", "lookahead", "prerender"})


class SwapStream(Stream):
    """A pending patch: at ``origin_beat`` the old patch's streams stop and these start."""

    prio = PRIO_SWAP
    owner = "swap"

    def __init__(self, order: int, origin_beat: float, patch: Patch,
                 streams: list[Stream]) -> None:
        super().__init__(order, origin_beat, patch.seed)
        self.patch = patch
        self.streams = streams
        self.done = False

    def next_beat(self) -> float | None:
        return None if self.done else self.origin_beat

    def fire(self, sched: Scheduler) -> None:
        self.done = True
        sched._install_patch(self)

    def peek_notes(self, until_beat: float) -> Iterator[Note]:
        for s in self.streams:
            yield from s.peek_notes(until_beat)


@dataclass
class PointSegment:
    """The performer's point from ``t0_s``: a glide from ``start`` to ``end`` reached at
    ``t1_s`` (t1_s == t0_s for a jump)."""

    t0_s: float
    t1_s: float
    start: XY
    end: XY

    def at(self, t_s: float) -> XY:
        if t_s >= self.t1_s or self.t1_s <= self.t0_s:
            return self.end
        u = max(0.0, (t_s - self.t0_s) / (self.t1_s - self.t0_s))
        return (self.start[0] + (self.end[0] - self.start[0]) * u,
                self.start[1] + (self.end[1] - self.start[1]) * u)
