"""Rendering in this process, on demand: the offline bounce and replay (`InlineRenderer`,
batched by the same batcher as the synthesis process), and the cache as a NoteSource that
renders a missing note on the spot (`OnDemandSource`; it blocks, so offline only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pgesam_live.errors import PgesamError
from pgesam_live.render.batcher import Batcher
from pgesam_live.render.cache import RenderCache
from pgesam_live.render.dsp import normalise_peak
from pgesam_live.render.keys import NoteKey
from pgesam_live.render.messages import RenderRequest


class InlineRenderer:
    """Renders in this process, on demand: the offline bounce and replay use it.

    Requests are queued; `ensure(key)` renders the queue (earliest deadlines first, in batches
    of one seed) until `key` is cached. Deterministic: the same requests in the same order
    give the same batches, so two bounces are byte-identical.
    """

    def __init__(self, synth: Any, cache: RenderCache,
                 on_ready: Callable[[NoteKey], None] | None = None) -> None:
        self.synth = synth
        self.cache = cache
        self.on_ready = on_ready
        self._todo = Batcher()
        self._queued: set[NoteKey] = set()
        self._seq = 0
        self.rendered = 0
        self.failed = 0  # notes the model refused (e.g. a pitch outside its range)
        self.model_id = synth.model_id
        self.sample_rate = synth.sample_rate

    def request(self, key: NoteKey, deadline_s: float, speculative: bool = False,
                cancellable: bool = False, stream: bool = False) -> bool:
        # (Offline nothing is cancelled or streamed: a note renders on demand when it plays.)
        if key in self._queued or key in self.cache:
            return False
        self._seq += 1
        self._todo.push(RenderRequest(deadline_s, self._seq, key))
        self._queued.add(key)
        return True

    def cancel(self, keys: list[NoteKey]) -> None:
        """Nothing is cancelled offline: a note renders on demand when it plays."""

    @property
    def pending(self) -> int:
        return len(self._queued)

    def ensure(self, key: NoteKey) -> None:
        """Render queued notes (and `key`) until `key` is in the cache."""
        if key in self.cache:
            return
        if key not in self._queued:
            self.request(key, -math.inf)
        while key not in self.cache and self._todo:
            batch = self._todo.next_batch()
            try:
                self._render(batch[0].key.seed, [r for r in batch if r.key not in self.cache])
            finally:
                for r in batch:
                    self._queued.discard(r.key)

    def _render(self, seed: int, todo: list[RenderRequest]) -> None:
        """One batch; if the model refuses it, each note alone, so one bad note (counted in
        `failed`, left uncached: the scheduler counts it as skipped) loses no other."""
        if not todo:
            return
        try:
            pts = np.array([[r.x, r.y] for r in todo], dtype=np.float32)
            pitches = np.array([r.key.pitch for r in todo], dtype=np.int64)
            audio = normalise_peak(self.synth.render(pts, pitches, seed=seed))
        except PgesamError:
            if len(todo) == 1:
                self.failed += 1
                return
            for r in todo:
                self._render(seed, [r])
            return
        for r, a in zip(todo, audio, strict=True):
            self.cache.put(r.key, np.asarray(a, dtype=np.float32))
            self.rendered += 1
            if self.on_ready is not None:
                self.on_ready(r.key)

    def drain(self) -> None:
        """Render everything queued."""
        while self._todo:
            self.ensure(self._todo.first().key)


class OnDemandSource:
    """The cache as the scheduler's NoteSource, rendering a missing note on the spot (offline
    only: it blocks). Nothing is ever late in a bounce."""

    def __init__(self, cache: RenderCache, renderer: InlineRenderer) -> None:
        self.cache = cache
        self.renderer = renderer

    def key(self, x: float, y: float, pitch: int, seed: int) -> NoteKey:
        return self.cache.key(x, y, pitch, seed)

    def get(self, key: NoteKey) -> np.ndarray | None:
        self.renderer.ensure(key)
        return self.cache.get(key)

    def nearest_pitch(self, key: NoteKey, max_semitones: int = 3) -> Any:
        return self.cache.nearest_pitch(key, max_semitones)

    def nearest_point(self, key: NoteKey) -> Any:
        return self.cache.nearest_point(key)

    def count_late(self) -> None:
        self.cache.count_late()

    def count_fallback(self) -> None:
        self.cache.count_fallback()
