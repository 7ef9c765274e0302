"""Notes beyond the model's range, re-pitched off the audio thread.

A pitch beyond the model's range plays its nearest edge note re-pitched (engine/fallback.py).
Re-pitching a 4 s note takes about 2 ms: too slow for the audio hook. So when the scheduler
asks for an edge note on behalf of a pitch beyond it, it also tells the `RepitchPreparer`
(``want``, cheap, on the audio thread); the preparer's own thread re-pitches the edge note as
soon as it is in memory (at once when it already is, else when the renderer or the cache's
loader says it landed: ``ready``), into the `RepitchMemo` the hook reads. A note whose
re-pitch is not ready when it plays is re-pitched in the hook as before (counted in
``Fallbacks.repitched_in_hook``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REPITCH_MEMO = 64    # notes beyond the model's range kept re-pitched
WAITING_MAX = 256    # wanted re-pitches whose edge note is not rendered yet (oldest dropped)

RepitchFn = Callable[[np.ndarray, float], np.ndarray]
MemoKey = tuple[Hashable, int]  # (the edge note's key, semitones from it)


class RepitchMemo:
    """Re-pitched notes by (edge key, semitones), LRU. Thread-safe; the lock guards the
    dictionary only (never held while re-pitching)."""

    def __init__(self, max_entries: int = REPITCH_MEMO) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._notes: OrderedDict[MemoKey, np.ndarray] = OrderedDict()

    def get(self, memo: MemoKey) -> np.ndarray | None:
        with self._lock:
            out = self._notes.get(memo)
            if out is not None:
                self._notes.move_to_end(memo)
            return out

    def __contains__(self, memo: object) -> bool:
        with self._lock:
            return memo in self._notes

    def add(self, memo: MemoKey, out: np.ndarray) -> np.ndarray:
        """Keep ``out`` unless one is kept already; returns the one kept (so a note played
        twice is the same array: the resampling sink's memo knows it by identity)."""
        with self._lock:
            kept = self._notes.get(memo)
            if kept is not None:
                return kept
            self._notes[memo] = out
            if len(self._notes) > self.max_entries:
                self._notes.popitem(last=False)
            return out


class RepitchPreparer:
    """Re-pitches wanted edge notes on a thread of its own (see the module docstring).

    ``peek(key)``: the edge note from memory, or None (no counting, no disk read).
    ``on_prepared(audio)``: called on the preparer's thread with each new re-pitched note
    (the engine resamples it there when the output rate differs)."""

    def __init__(self, memo: RepitchMemo, repitch_fn: RepitchFn,
                 peek: Callable[[Any], np.ndarray | None],
                 on_prepared: Callable[[np.ndarray], object] | None = None) -> None:
        self.memo = memo
        self.repitch_fn = repitch_fn
        self.peek = peek
        self.on_prepared = on_prepared
        self._wanted: set[MemoKey] = set()  # asked for, not in the memo yet
        self._todo: queue.SimpleQueue[tuple[str, Hashable, int] | None] = queue.SimpleQueue()
        self._waiting: OrderedDict[Hashable, set[int]] = OrderedDict()  # (preparer thread)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.prepared = 0
        self.errors = 0

    def want(self, key: Hashable, semitones: int) -> None:
        """The edge note ``key`` will play ``semitones`` away (the audio thread: cheap)."""
        memo = (key, semitones)
        if memo in self._wanted or memo in self.memo:
            return
        self._wanted.add(memo)
        self._post(("want", key, semitones))

    def ready(self, key: Hashable) -> None:
        """``key`` is in memory now (the renderer's result thread, the cache's loader)."""
        if self._wanted:  # else nothing waits for it
            self._post(("ready", key, 0))

    def start(self) -> None:
        """Start the thread now (the engine calls this when it is built, so the audio thread
        never starts one; _post restarts it only if it died)."""
        self._ensure_thread()

    def _post(self, item: tuple[str, Hashable, int]) -> None:
        self._todo.put(item)
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._loop, name="repitch",
                                                    daemon=True)
                    self._thread.start()

    def close(self) -> None:
        """Stop the thread (what it is re-pitching is finished first)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._todo.put(None)
            thread.join(timeout=2.0)

    def _loop(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            kind, key, semitones = item
            try:
                if kind == "want":
                    self._waiting.setdefault(key, set()).add(semitones)
                    while len(self._waiting) > WAITING_MAX:
                        old, dropped = self._waiting.popitem(last=False)
                        self._wanted.difference_update((old, s) for s in dropped)
                elif key not in self._waiting:
                    continue
                self._prepare(key)
            except Exception:  # the thread lives on: logged, counted (the hook re-pitches)
                log.exception("repitch: preparing %s failed", key)
                self.errors += 1
                self._wanted.difference_update((key, s) for s in self._waiting.pop(key, ()))

    def _prepare(self, key: Hashable) -> None:
        audio = self.peek(key)
        if audio is None:
            return  # not rendered yet: done when it lands (ready)
        for semitones in sorted(self._waiting.pop(key, ())):
            memo = (key, semitones)
            if memo not in self.memo:
                out = self.memo.add(memo, self.repitch_fn(audio, float(semitones)))
                self.prepared += 1
                if self.on_prepared is not None:
                    self.on_prepared(out)
            self._wanted.discard(memo)
