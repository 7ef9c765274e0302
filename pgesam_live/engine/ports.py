"""What the scheduler plays through: the note source (the render cache, or an on-demand
renderer offline), the voice sink (the voice pool) and the render requester."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

import numpy as np

MAX_FALLBACK_SEMITONES = 3  # a late note borrows a cached pitch this near (re-pitched)


class NoteKeyLike(Hashable, Protocol):
    """A cache key: hashable, and it tells its pitch (the re-pitch fallback needs it)."""

    @property
    def pitch(self) -> int: ...


class NoteSource(Protocol):
    """Where rendered notes come from (the render cache). Audio is float32 mono [N] at the
    model's rate. ``nearest_pitch`` returns a cached note of the same point within
    ``max_semitones`` (its key tells its pitch), ``nearest_point`` the nearest cached point at
    the same pitch; both None when nothing fits. ``count_late``/``count_fallback`` keep the
    cache's counters in step with the scheduler's."""

    def key(self, x: float, y: float, pitch: int, seed: int) -> NoteKeyLike: ...

    def get(self, key: Any) -> np.ndarray | None: ...

    def nearest_pitch(
        self, key: Any, max_semitones: int = MAX_FALLBACK_SEMITONES
    ) -> tuple[NoteKeyLike, np.ndarray] | None: ...

    def nearest_point(self, key: Any) -> tuple[NoteKeyLike, np.ndarray] | None: ...

    def count_late(self) -> None: ...

    def count_fallback(self) -> None: ...


class VoiceSink(Protocol):
    """Where notes go (the voice pool). ``start_s`` is the exact engine time of the first
    sample; ``length_s`` None plays the whole one-shot, otherwise the note is released then."""

    def play(
        self, samples: np.ndarray, start_s: float, velocity: float, pan: float,
        length_s: float | None, tag: Hashable | None = None,
    ) -> None: ...

    def release(self, tag: Hashable, at_s: float | None = None) -> None:
        """End the notes played with ``tag`` so far (a short fade from ``at_s``)."""

    def drop_pending(self, tag: Hashable) -> int:
        """Drop the notes played with ``tag`` that have not started yet; how many."""


class RenderRequester(Protocol):
    """Where render requests go (the worker client). ``key`` is the note source's key (built
    once, by the scheduler); ``deadline_s`` is the engine time the scheduler will need the
    note; the requester coalesces duplicates against its cache."""

    def request(self, key: Any, deadline_s: float) -> None: ...


# ----------------------------------------------------------------------------- tempo map
