"""The scheduler's counters, shared by its parts (the clock, request tracking, fallbacks) and
read by status and the bench."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SchedulerCounters:
    notes: int = 0          # notes handed to the sink (fallbacks included)
    late: int = 0           # notes whose render was not ready when due (every fallback case)
    fallback_pitch: int = 0
    fallback_point: int = 0
    skipped: int = 0
    held: int = 0           # held notes (until a release, or a length's end) handed over
    streamed: int = 0       # notes started from their first rendered frames (streaming)
    errors: int = 0         # exceptions caught per event (logged)
    requests: int = 0
    recent_errors: list[str] = field(default_factory=list)
