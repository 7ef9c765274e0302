"""The engine's views: its state as a snapshot (built where it is shown, never in the audio
hook; the figures other objects own read outside the engine's lock), and the front-end words
submitted as lines. A part of the Engine (a mixin)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pgesam_live import faults
from pgesam_live.vocab.commands import Command
from pgesam_live.vocab.views import FRONT_END_WORDS, EngineView, Reply, answer, status_line

if TYPE_CHECKING:
    from pgesam_live.engine.scheduler import Scheduler

SETTLE_TIMEOUT_S = 0.5  # Engine.settle: the longest a view waits for queued commands
SETTLE_QUIET_S = 0.05  # ... and how long without an audio block before it stops waiting


class StateViews:
    """Engine methods for views (see the module docstring)."""

    _lock: threading.RLock
    _applied: threading.Condition
    _queue: list[tuple[float, int, Command, str, Any]]
    _block_thread: int | None
    _stats: dict[str, Callable[[], int]]
    bookmarks: dict[str, tuple[float, float]]
    current_point_name: Callable[[], str | None]  # (names.py)
    gain: float
    model: Any
    scheduler: Scheduler
    voices: Any
    cache: Any
    renderer: Any
    clock: Any

    # -- read-only views ---------------------------------------------------------------------
    def _info(self, c: Command) -> Reply:
        """A front-end word submitted as a line: its answer (vocab/views.py) as the reply."""
        if c.name not in FRONT_END_WORDS:
            return Reply(False, f"{c.name} is a REPL word; it does nothing from here")
        a = answer(cast(EngineView, self), c)  # (the Engine is one)
        if c.name == "status":  # one line here; the snapshot rides along
            return Reply(True, status_line(a.data), a.data)
        return Reply(True, a.text)

    def snapshot(self) -> dict[str, Any]:
        """The state, once the immediate commands already accepted have been applied. Never
        called in the audio hook; the figures of the cache, the renderer and the voices are
        read outside the engine's lock, so a view never holds up an audio block for them."""
        self.settle()
        outside = self._outside_stats()
        with self._lock:
            return {**self._state_locked(), **outside}

    def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until the immediate commands already accepted are applied (the next audio
        block, normally a few ms), so that a view taken next (status, map, points) shows what
        the lines before it did. Gives up when no block comes within SETTLE_QUIET_S (nothing
        drives the engine: an offline bounce between its blocks) or after `timeout_s`."""
        if threading.get_ident() == self._block_thread:
            return  # asked from inside a block (a listener): waiting would stall the audio
        end = time.monotonic() + timeout_s
        with self._applied:
            while any(e[0] == -math.inf for e in self._queue):
                left = end - time.monotonic()
                if left <= 0 or not self._applied.wait(min(left, SETTLE_QUIET_S)):
                    return

    def _outside_stats(self) -> dict[str, Any]:
        """The figures other objects own (their own locks; not the engine's)."""
        cache = self.cache.stats()
        voices = self.voices.stats()
        return {
            "voices_in_use": self.voices.in_use(),
            "voices_total": voices["voices"],
            "voices_stolen": voices.get("stolen", 0),
            "cache_fill": cache.get("fill", 0.0),
            "cache_notes": cache.get("entries", 0),
            "renders_pending": self.renderer.pending,
            **{name: _safe_count(fn) for name, fn in self._stats.items()},
        }

    def _state_locked(self) -> dict[str, Any]:
        """The engine's own state (lock held)."""
        st = self.scheduler.status()
        x, y = self.scheduler.current_point()
        return {
            "time_s": round(self.clock.time_s(), 4),
            # The tempo set last (what `tempo` asked for; it takes effect on the coming beat),
            # and the one playing now.
            "tempo_bpm": self.scheduler.tempo.last_bpm,
            "tempo_now_bpm": st["tempo_bpm"],
            # Before a fresh clock's first beat (a `seq` or `load` on an idle engine starts
            # its beat 0 a moment ahead, for the renders) the beat is 0, not negative.
            "beat": max(0.0, round(st["beat"], 3)),
            "point": [round(x, 4), round(y, 4)],
            "point_name": self.current_point_name(),
            "gain": self.gain,
            "late_notes": st["late"],
            "fallbacks": st["fallbacks"],
            "held_notes": st["held"],  # held notes handed over (a key, a length, a gate)
            "held_now": self.scheduler.held_keys(),  # the keys held down now
            # notes started from their head while the rest was rendered (render/stream.py)
            "streamed_notes": st["streamed"],
            "following": self.scheduler.followers(),  # held keys following the point
            "lookahead_s": st["lookahead_s"],
            "sequences": st["sequences"],
            "patch": st["patch"],
            "bookmarks": {k: [round(v[0], 4), round(v[1], 4)] for k, v in self.bookmarks.items()},
            "model_id": self.model.model_id,
            "faults": faults.total(),  # errors caught and carried on with (faults.py)
        }


def _safe_count(fn: Callable[[], int]) -> int:
    try:
        return int(fn())
    except Exception as exc:  # a front end's counter never breaks the state
        faults.record("engine: a front end's counter", exc)
        return -1
