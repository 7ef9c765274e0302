"""OSC subscribers: the controllers that said /pgesam/hello, and the engine state pushed to
them on change, at most ``push_hz`` times a second each, latest value wins, never echoing a
controller's own change back to it; while any listens, a point that moves by itself (a
glide) is pushed too, with the pad's own /pgesam/xy so a TouchOSC pad follows it.
Thread-safe: engine events arrive from any thread."""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pgesam_live.vocab.views import EngineView, flatten_state

Addr = tuple[str, int]
OscReply = tuple[Addr, str, list[Any]]


@dataclass
class Controller:
    last_push_s: float = -math.inf
    pending: dict[str, Any] | None = None


class StatePushes:
    """Controllers and their rate-limited state pushes (see the module docstring)."""

    def __init__(self, engine: EngineView, stats: Counter[str]) -> None:
        self.engine = engine
        self.stats = stats
        self._lock = threading.Lock()
        self.controllers: dict[Addr, Controller] = {}
        # the point last pushed to controllers: a glide moves it with no command to push
        self._pushed_point: Any = None
        self._point_check_s = -math.inf

    def hello(self, addr: Addr, max_controllers: int) -> bool:
        """Register ``addr`` (again is fine); False when there are too many already."""
        with self._lock:
            if addr not in self.controllers and len(self.controllers) >= max_controllers:
                return False
            self.controllers.setdefault(addr, Controller())
            return True

    def greeted(self, snap: dict[str, Any]) -> list[Any]:
        """The state a new controller gets at once (it knows the point from here on)."""
        with self._lock:
            if self._pushed_point is None:
                self._pushed_point = snap.get("point")
        return flatten_state(snap)

    def bye(self, addr: Addr) -> None:
        with self._lock:
            self.controllers.pop(addr, None)

    def state_changed(self, snap: dict[str, Any], causer: Addr | None) -> bool:
        """An engine "state" event: pending for every controller but the one that caused
        it. True when some controller has a push to come."""
        woke = False
        with self._lock:
            self._pushed_point = snap.get("point")  # known to all: causer and pushed
            for addr, ctl in self.controllers.items():
                if addr != causer:   # never echo a controller's own change back to it
                    ctl.pending = snap
                    woke = True
        return woke

    def poll(self, now: float, push_hz: float) -> list[OscReply]:
        """The pushes due now."""
        min_gap_s = 1.0 / push_hz
        self._follow_point(now, min_gap_s)
        due: list[tuple[Addr, dict[str, Any]]] = []
        with self._lock:
            for addr, ctl in self.controllers.items():
                if ctl.pending is not None and now - ctl.last_push_s >= min_gap_s:
                    due.append((addr, ctl.pending))
                    ctl.pending = None
                    ctl.last_push_s = now
                    self.stats["pushes"] += 1
        replies: list[OscReply] = []
        if due:
            # The state is built here, in this thread, at most push_hz times a second: the
            # engine's events only say that (and where the point) it changed.
            base = self.engine.snapshot()
            for addr, change in due:
                replies += self._push(addr, {**base, **change})
        return replies

    def _follow_point(self, now: float, gap_s: float) -> None:
        """While controllers listen, push the state when the point moves by itself (a glide,
        a trajectory): an XY pad follows it."""
        with self._lock:
            if not self.controllers or now - self._point_check_s < gap_s:
                return
            self._point_check_s = now
        snap = self.engine.snapshot()
        with self._lock:
            if snap.get("point") == self._pushed_point:
                return
            self._pushed_point = snap.get("point")
            for ctl in self.controllers.values():
                if ctl.pending is None:
                    ctl.pending = snap

    @staticmethod
    def _push(addr: Addr, snap: dict[str, Any]) -> list[OscReply]:
        out: list[OscReply] = [(addr, "/pgesam/state", flatten_state(snap))]
        point = snap.get("point")
        if isinstance(point, list | tuple) and len(point) == 2:
            # the pad's own address, so a TouchOSC XY pad follows the point with no scripting
            u = min(1.0, max(0.0, (float(point[0]) + 1.0) / 2.0))
            v = min(1.0, max(0.0, (float(point[1]) + 1.0) / 2.0))
            out.append((addr, "/pgesam/xy", [u, v]))
        return out

    def next_due(self, push_hz: float) -> list[float]:
        """Clock times of the next pushes with work (and of the point watch)."""
        gap = 1.0 / push_hz
        with self._lock:
            due = [c.last_push_s + gap for c in self.controllers.values()
                   if c.pending is not None]
            if self.controllers:  # watch the point (see _follow_point)
                due.append(self._point_check_s + gap)
        return due
