"""The one batcher: render requests by earliest deadline, taken in batches of one seed (the
seed is part of a note's key; one batched render shares it). The synthesis process and the
in-process renderer both take their batches here, so they batch alike (and a bounce,
deterministic, gives the same batches for the same requests)."""

from __future__ import annotations

import heapq
from collections.abc import Collection
from dataclasses import replace

from pgesam_live.render.keys import NoteKey
from pgesam_live.render.messages import RenderRequest

BATCH_MAX = 25  # one pitch bank per batch: the batched render is the efficient unit


class Batcher:
    """A deadline queue of RenderRequests."""

    def __init__(self) -> None:
        self._heap: list[RenderRequest] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, req: RenderRequest) -> None:
        """Queue `req`; a request for a key already queued keeps one of the two: the earlier
        deadline, streamed if either is (a note someone now waits for)."""
        for i, old in enumerate(self._heap):
            if old.key == req.key:
                if req.deadline_s < old.deadline_s or (req.stream and not old.stream):
                    keep = replace(req, deadline_s=min(req.deadline_s, old.deadline_s),
                                   stream=req.stream or old.stream)
                    self._heap[i] = keep
                    heapq.heapify(self._heap)
                return
        heapq.heappush(self._heap, req)

    def drop(self, keys: Collection[NoteKey]) -> None:
        """Forget the requests for `keys` (cancelled)."""
        drop = set(keys)
        self._heap = [r for r in self._heap if r.key not in drop]
        heapq.heapify(self._heap)

    def first(self) -> RenderRequest:
        """The earliest request (the queue is not empty)."""
        return self._heap[0]

    def next_batch(self, max_n: int = BATCH_MAX) -> list[RenderRequest]:
        """The earliest request and, up to `max_n` in all, the next earliest of its seed; the
        others stay queued. Empty when nothing is queued."""
        if not self._heap:
            return []
        first = heapq.heappop(self._heap)
        batch, rest = [first], list[RenderRequest]()
        while self._heap and len(batch) < max_n:
            r = heapq.heappop(self._heap)
            (batch if r.key.seed == first.key.seed else rest).append(r)
        for r in rest:
            heapq.heappush(self._heap, r)
        return batch
