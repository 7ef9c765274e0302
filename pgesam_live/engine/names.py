"""The names a command may use, checked against the state it will meet: points (a patch's,
bookmarks, the demo patches', then the model's training instruments: vocab/instruments.py),
a patch's sequences, the running sequences, as the immediate commands already queued will
leave them (`mark a` then `at a`, `seq s ...` then `stop s` pass at once). A part of the
Engine (a mixin): it reads the engine's state under its lock."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

from pgesam_live.errors import CommandError
from pgesam_live.notes import pitch_range_message, playable_range
from pgesam_live.patches.model import Patch, Sequence
from pgesam_live.vocab.commands import Command
from pgesam_live.vocab.instruments import InstrumentMatch, find_instrument

if TYPE_CHECKING:
    from pgesam_live.engine.scheduler import Scheduler


# The current point keeps its name while it stays within this of where it was named (map units;
# `status` shows points to 0.01).
NAME_HOLDS_WITHIN = 5e-4


class NameChecks:
    """Engine methods for names (see the module docstring)."""

    _lock: threading.RLock
    _queue: list[tuple[float, int, Command, str, Any]]
    bookmarks: dict[str, tuple[float, float]]
    point_name: str | None
    point_name_xy: tuple[float, float] | None
    model: Any
    scheduler: Scheduler
    voices: Any

    def _queued_immediate(self) -> list[tuple[float, int, Command, str, Any]]:
        """The immediate commands queued and not applied yet, in the order they apply (lock
        held): what the line checks simulate."""
        return sorted((e for e in self._queue if e[0] == -math.inf), key=lambda e: e[1])

    def _known_names(self) -> tuple[set[str], set[str]]:
        """Point names and running sequences outside any patch, as the immediate commands
        already queued will leave them: what a patch loaded now may name (a patch's own
        sequences end at the swap; those of `seq` and `start` are the performer's and
        play on)."""
        with self._lock:
            points = {*self.bookmarks, *self.model.named_points}
            sequences = set(self.scheduler.live_sequences())
            for _, _, q, _, prepared in self._queued_immediate():
                name = str(q.args.get("name", ""))
                if q.name == "mark":
                    points.add(name)
                elif q.name == "seq" and isinstance(prepared, Sequence) and \
                        not any(prepared.pattern):
                    sequences.discard(name)  # rests only: it ends that one
                elif q.name in ("seq", "start"):  # (a started one is the performer's too)
                    sequences.add(name)
                elif q.name == "stop":
                    sequences.discard(name)
                elif q.name in ("hush", "panic"):
                    sequences.clear()
        return points, sequences

    def _check_state(self, c: Command, prepared: Any = None) -> None:
        """Check an immediate `c`'s names (points, patch sequences, running sequences) against
        the state the immediate commands already queued will leave: `mark a` then `at a`, or
        `seq s ...` then `stop s`, pass at once (lock held). A `seq` of rests only must name
        a running sequence (it silences that one from its next bar)."""
        silent_seq = c.name == "seq" and isinstance(prepared, Sequence) and \
            not any(prepared.pattern)
        if c.name not in ("at", "start", "stop", "mark") and not silent_seq or \
                (c.name == "at" and "name" not in c.args):
            return
        sched = self.scheduler
        current = sched.patch
        marks = set(self.bookmarks)
        pending = sched.pending_patch  # a load waiting for its bar (replaced by a later load)
        pending_off: set[str] = set()  # its sequences stopped before they start
        running = set(sched.running_sequences(include_pending=False))
        for _, _, q, _, prepared in self._queued_immediate():
            name = str(q.args.get("name", ""))
            if q.name == "mark":
                marks.add(name)
            elif q.name == "load" and isinstance(prepared, Patch):
                pending, pending_off = prepared, set()
            elif q.name in ("seq", "start"):
                running.add(name)
            elif q.name == "stop":
                running.discard(name)
                pending_off.add(name)
            elif q.name in ("hush", "panic"):  # a pending patch is installed, nothing starts
                running.clear()
                if pending is not None:
                    current, pending, pending_off = pending, None, set()
        sequences = set(current.sequences) if current is not None else set()
        points = marks | set(self.model.named_points) | \
            (set(current.points) if current is not None else set())
        if pending is not None:
            sequences |= set(pending.sequences)
            points |= set(pending.points)
            running |= set(pending.sequences) - pending_off
        name = c.args["name"]
        if c.name == "mark":
            patch_points: dict[str, tuple[float, float]] = {}
            for patch in (current, pending):
                if patch is not None:
                    patch_points.update(patch.points)
            self._mark_clash(name, patch_points)
            return
        if c.name == "at" and name.isdigit():
            order = list(dict.fromkeys([*self.bookmarks, *(
                str(q.args.get("name", "")) for _, _, q, _, _ in self._queued_immediate()
                if q.name == "mark")]))
            self._bookmark_by_digit(name, order)
            return
        if c.name == "at" and name not in points and \
                find_instrument(name, self.model.training_points) is None:
            raise CommandError(self._no_point(name, sorted(points)))
        if c.name == "start" and name not in sequences:
            have = ", ".join(sorted(sequences)) or (
                "no patch loaded" if current is None and pending is None else "it has none")
            raise CommandError(f"start: no sequence {name!r} in the patch ({have})")
        if c.name == "stop" and name not in running:
            have = ", ".join(sorted(running)) or "none"
            raise CommandError(f"stop: no sequence {name!r} is running (running: {have})")
        if silent_seq and name not in running:
            raise CommandError(f"seq {name}: rests only, and no sequence {name!r} is running: "
                               "nothing would sound (rests only silence a running sequence "
                               "from its next bar; give at least one note)")

    def _check_pitches(self, c: Command) -> None:
        a = c.args
        pitches = a.get("pitches") or ([a["pitch"]] if "pitch" in a else [])
        if c.name == "prerender":
            # What the model renders (and answers /pgesam/ready for): notes beyond its range
            # are played from its edge notes, which the bank holds.
            lo, hi = self.model.pitch_range
            for p in (a.get("low"), a.get("high")):
                if p is not None and not lo <= p <= hi:
                    raise CommandError(f"prerender: pitch {p} is outside the model's rendered "
                                       f"range {lo}..{hi} (notes beyond it play its edge "
                                       "notes re-pitched: prerender those)")
            return
        n_voices = self.voices.stats().get("voices", 0)
        if c.name == "play" and n_voices and len(pitches) > n_voices:
            raise CommandError(f"play: {len(pitches)} notes at once; the voice pool has "
                               f"{n_voices} (more would steal each other)")
        lo, hi = playable_range(self.model.pitch_range)
        for p in pitches:
            if c.name != "release" and not lo <= p <= hi:
                raise CommandError(pitch_range_message(c.name, p, self.model.pitch_range))

    def _resolve(self, c: Command) -> Any:
        """The state-dependent part of a command: a point name's coordinates, a patch
        sequence, a running sequence. Raises CommandError naming what exists."""
        a = c.args
        if c.name == "at" and "name" in a:
            try:
                return self.resolve_point(a["name"])
            except CommandError as e:  # said as every other refusal is: with its word
                raise CommandError(str(e) if str(e).startswith("at: ") else f"at: {e}") from None
        if c.name == "start":
            # A patch loaded but waiting for its bar first, then the playing one.
            for patch in (self.scheduler.pending_patch, self.scheduler.patch):
                if patch is not None and a["name"] in patch.sequences:
                    return patch.sequences[a["name"]]
            if self.scheduler.patch is None and self.scheduler.pending_patch is None:
                raise CommandError(f"start: no patch is loaded, so no sequence "
                                   f"{a['name']!r} to start (`load PATCH` first, or make one "
                                   f"with `seq {a['name']} \"NOTES\" STEP`)")
            have = ", ".join(self.sequence_names()) or "it has none"
            raise CommandError(f"start: no sequence {a['name']!r} in the patch ({have})")
        if c.name == "stop" and a["name"] not in self.scheduler.running_sequences():
            running = ", ".join(self.scheduler.running_sequences()) or "none"
            raise CommandError(f"stop: no sequence {a['name']!r} is running (running: {running})")
        return None

    def _bookmark_by_digit(self, digit: str, order: list[str]) -> str:
        """Bookmark number `digit` (1..9) as the terminal map draws it: the bookmarks in the
        order they were first made."""
        n = int(digit)
        if not 1 <= n <= len(order):
            have = ", ".join(f"{i + 1} {m}" for i, m in enumerate(order[:9])) or \
                "none yet (`mark NAME` makes one)"
            raise CommandError(f"at: no bookmark {n} on the map; bookmarks: {have}")
        return order[n - 1]

    def resolve_point(self, name: str) -> tuple[float, float]:
        """A point name: the patch's points (a patch means its own), a bookmark, or the
        demo patches' named points. A digit 1..9 is the bookmark the map draws with it (a
        bookmark's own place, even when a patch point of its name hides it from `at NAME`).

        Precedence (what `points` shows too): the loaded patch's points, then bookmarks,
        then the demo patches' named points, then the model's training instruments (an
        instrument's name, or a word of its program: `piano`)."""
        if name.isdigit():
            x, y = self.bookmarks[self._bookmark_by_digit(name, list(self.bookmarks))]
            return float(x), float(y)
        named = self._named_point(name)
        if named is not None:
            return named
        inst = find_instrument(name, self.model.training_points)
        if inst is not None:
            return inst.x, inst.y
        raise CommandError(self._no_point(name, self.point_names()))

    def _named_point(self, name: str) -> tuple[float, float] | None:
        """A name's place in the patch's points, the bookmarks or the demo points (in that
        order), else None."""
        for table in (self._patch_points(), self.bookmarks, self.model.named_points):
            if name in table:
                x, y = table[name]
                return float(x), float(y)
        return None

    def _no_point(self, name: str, known: list[str]) -> str:
        have = ", ".join(known) or "none yet (`mark NAME` makes one)"
        inst = "; or a training instrument (`at piano`, `at violin`: a word of its program)" \
            if self.model.training_points else ""
        return f"no point named {name!r}; known: {have}{inst}"

    def instrument_of(self, name: str) -> InstrumentMatch | None:
        """The training instrument `at NAME` goes to, when no patch point, bookmark or demo
        point has that name."""
        if name.isdigit() or self._named_point(name) is not None:
            return None
        return find_instrument(name, self.model.training_points)

    def _patch_points(self) -> dict[str, tuple[float, float]]:
        """The playing patch's points, and a pending one's (which win)."""
        points: dict[str, tuple[float, float]] = {}
        for patch in (self.scheduler.patch, self.scheduler.pending_patch):
            if patch is not None:
                points.update(patch.points)
        return points

    def _mark_clash(self, name: str, patch_points: dict[str, tuple[float, float]]) -> None:
        """A bookmark may not take the name of the loaded patch's point (the patch's own
        `at NAME` means its point, so the bookmark could never be reached)."""
        if name in patch_points:
            x, y = patch_points[name]
            raise CommandError(f"mark: {name!r} is a point of the loaded patch ({x:+.2f}, "
                               f"{y:+.2f}); choose another name (e.g. {name}2)")

    def name_point(self, name: str | None, xy: tuple[float, float] | None = None) -> None:
        """The current point now goes by `name` (set at `xy`), or by none."""
        self.point_name, self.point_name_xy = name, (xy if name is not None else None)

    def current_point_name(self) -> str | None:
        """The name the current point goes by, while the point is still where that name
        put it (a glide under way when `mark` named it, or a patch's, moves it on)."""
        if self.point_name is None or self.point_name_xy is None:
            return None
        x, y = self.scheduler.current_point()
        nx, ny = self.point_name_xy
        return self.point_name if max(abs(x - nx), abs(y - ny)) <= NAME_HOLDS_WITHIN else None

    def point_names(self) -> list[str]:
        names = dict.fromkeys([*self.bookmarks, *self._patch_points(), *self.model.named_points])
        return list(names)

    def sequence_names(self) -> list[str]:
        names: dict[str, None] = {}
        for patch in (self.scheduler.pending_patch, self.scheduler.patch):
            names.update(dict.fromkeys(patch.sequences if patch is not None else {}))
        names.update(dict.fromkeys(self.scheduler.running_sequences()))
        return list(names)
