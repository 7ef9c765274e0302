"""/pgesam/ready bookkeeping: who asked for which renders (a /pgesam/prerender), answered once
per note when the engine says it is cached. Not thread-safe on its own: OscCore calls it
under its lock."""

from __future__ import annotations

from dataclasses import dataclass, field

Addr = tuple[str, int]
MAX_OPEN = 256  # open requests kept (the oldest go first)


@dataclass
class ReadyRequest:
    addr: Addr
    x: float
    y: float
    low: int
    high: int
    expires_s: float
    answered: set[int] = field(default_factory=set)  # one /pgesam/ready per note

    def done(self) -> bool:
        return len(self.answered) >= self.high - self.low + 1


class ReadyTracker:
    """Open prerender requests; `cached` turns a cached note into the replies it owes."""

    def __init__(self, tolerance: float, ttl_s: float) -> None:
        self.tolerance = tolerance  # the render cache's x, y quantum
        self.ttl_s = ttl_s
        self.open: list[ReadyRequest] = []

    def remember(self, addr: Addr, x: float, y: float, low: int, high: int, now: float) -> None:
        self.open = [r for r in self.open if r.expires_s > now][-(MAX_OPEN - 1):]
        self.open.append(ReadyRequest(addr, x, y, low, high, now + self.ttl_s))

    def cached(self, x: float, y: float, pitch: int) -> list[tuple[Addr, list[float | int]]]:
        """(sender, [x, y, pitch] as it asked) for every open request this note answers."""
        out: list[tuple[Addr, list[float | int]]] = []
        for r in self.open:
            if abs(r.x - x) <= self.tolerance and abs(r.y - y) <= self.tolerance and \
                    r.low <= pitch <= r.high and pitch not in r.answered:
                r.answered.add(pitch)
                out.append((r.addr, [r.x, r.y, pitch]))
        self.open = [r for r in self.open if not r.done()]
        return out
