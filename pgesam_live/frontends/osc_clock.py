"""OSC time tags -> engine time: a bundle whose time tag is in the future plays at
``engine now + (timetag - wall now)``; an immediate or past one plays now; one more than
``max_ahead_s`` ahead is clock skew: played now and counted, never held.

The engine-minus-wall offset is read once per datagram (messages with one time tag get one
engine time and keep their order) and smoothed, so timed bundles sent apart keep their
spacing to the sample; a jump (a stall, a restart) is taken at once. Thread-safe.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

OFFSET_SMOOTHING = 0.05  # weight of a new engine-minus-wall reading
OFFSET_JUMP_S = 0.05     # a reading this far off is a jump, taken at once
NOW_WITHIN_S = 0.0005    # a time tag this near (or past) plays now

SCHEDULED = "scheduled"
SKEWED = "skewed"


class TimetagClock:
    """Engine times for OSC time tags (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset_s: float | None = None  # engine time - wall time, smoothed

    def engine_offset_s(self, engine_now_s: float, wall_now: float) -> float:
        """Engine time minus wall time, smoothed (a jump is taken at once)."""
        raw = float(engine_now_s) - wall_now
        with self._lock:
            if self._offset_s is None or abs(raw - self._offset_s) > OFFSET_JUMP_S:
                self._offset_s = raw
            else:
                self._offset_s += OFFSET_SMOOTHING * (raw - self._offset_s)
            return self._offset_s

    def at_times(self, timetags: Sequence[float | None], wall_now: float, max_ahead_s: float,
                 engine_time_s: Callable[[], float]
                 ) -> list[tuple[float | None, str | None]]:
        """For each message's time tag (None: immediate), the engine time to act at (None:
        now) and what was decided (SCHEDULED, SKEWED, or None: now). ``engine_time_s`` is
        read once, and only when some tag is to be scheduled."""
        offset_s = self.engine_offset_s(engine_time_s(), wall_now) if any(
            t is not None and NOW_WITHIN_S < t - wall_now <= max_ahead_s for t in timetags) \
            else 0.0
        out: list[tuple[float | None, str | None]] = []
        for timetag in timetags:
            ahead_s = -math.inf if timetag is None else timetag - wall_now
            if ahead_s > max_ahead_s:
                out.append((None, SKEWED))  # clock skew: play now, never hold
            elif timetag is not None and ahead_s > NOW_WITHIN_S:
                out.append((timetag + offset_s, SCHEDULED))
            else:
                out.append((None, None))
        return out
