"""A note's audio at the time it plays: the rendered note, its model-edge note re-pitched
when the pitch lies beyond the model's range, or, when nothing was rendered in time, an
explicit fallback (counted late): the nearest cached pitch re-pitched, the nearest cached
point, or, last, the nearest cached pitch anywhere up to an octave away, re-pitched.

Runs on the audio thread (inside the scheduler's tick); reads the note source only. The
re-pitch of a note beyond the range is prepared off the audio thread when a preparer is
attached (engine/repitch.py: live); the hook then only looks it up, and re-pitches (counted
in ``repitched_in_hook``) only when it was not ready in time, or when no preparer is attached
(offline, where the source renders on demand anyway). A late note's fallback re-pitch still
runs in the hook: which cached note it borrows is known only when the note is due.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from pgesam_live.engine.counters import SchedulerCounters
from pgesam_live.engine.ports import MAX_FALLBACK_SEMITONES, NoteSource
from pgesam_live.engine.repitch import RepitchMemo, RepitchPreparer
from pgesam_live.notes import rendered_pitch
from pgesam_live.patches.model import XY

LAST_FALLBACK_SEMITONES = 12  # a late note with nothing near: a pitch up to an octave away

RepitchFn = Callable[[np.ndarray, float], np.ndarray]


class Fallbacks:
    """The audio for a note, with its counted fallbacks (see the module docstring)."""

    def __init__(self, source: NoteSource, counters: SchedulerCounters, repitch_fn: RepitchFn,
                 pitch_range: tuple[int, int] | None) -> None:
        self.source = source
        self.counters = counters
        self.repitch_fn = repitch_fn
        # The model's rendered range: a pitch beyond it plays its nearest edge re-pitched.
        self.pitch_range = pitch_range
        self.memo = RepitchMemo()
        self.preparer: RepitchPreparer | None = None  # attach_preparer
        self.repitched_in_hook = 0  # beyond-range notes re-pitched in the hook (not ready)

    def attach_preparer(self, peek: Callable[[Any], np.ndarray | None],
                        on_prepared: Callable[[np.ndarray], object] | None = None
                        ) -> RepitchPreparer:
        """Re-pitch notes beyond the range off the audio thread (live): ``peek(key)`` reads
        an edge note from memory; ``on_prepared(audio)`` hears of each re-pitched one."""
        self.preparer = RepitchPreparer(self.memo, self.repitch_fn, peek, on_prepared)
        return self.preparer

    def want(self, key: Hashable, semitones: int) -> None:
        """The edge note ``key`` is asked for a pitch ``semitones`` away (beyond the range):
        have it re-pitched ahead, off the audio thread (no-op without a preparer)."""
        if semitones and self.preparer is not None:
            self.preparer.want(key, semitones)

    def audio_for(self, xy: XY, pitch: int, seed: int,
                  request_now: Callable[[Hashable], object]) -> np.ndarray | None:
        """The note's audio, or a counted fallback, or None (skipped, counted). A note not
        rendered in time is asked for at once through ``request_now(key)``, so that the next
        time it is there."""
        rp = rendered_pitch(pitch, self.pitch_range)
        key = self.source.key(xy[0], xy[1], rp, seed)
        audio = self.source.get(key)
        if audio is not None:
            return audio if rp == pitch else self.beyond_range(key, audio, pitch - rp)
        self.counters.late += 1
        self.source.count_late()
        request_now(key)
        self.want(key, pitch - rp)
        near = self.source.nearest_pitch(key, max_semitones=MAX_FALLBACK_SEMITONES)
        if near is not None:
            near_key, near_audio = near
            self.counters.fallback_pitch += 1
            self.source.count_fallback()
            return self.repitch_fn(near_audio, float(pitch - near_key.pitch))
        near = self.source.nearest_point(key)
        if near is not None:
            self.counters.fallback_point += 1
            self.source.count_fallback()
            return near[1]
        # Last: the nearest cached pitch anywhere, up to an octave away, re-pitched (a chord
        # right after a load, before any of its notes is rendered, still sounds).
        lo, hi = self.pitch_range if self.pitch_range is not None else (0, 127)
        for d in sorted(range(-LAST_FALLBACK_SEMITONES, LAST_FALLBACK_SEMITONES + 1),
                        key=lambda d: (abs(d), d)):
            if d == 0 or not lo <= rp + d <= hi:
                continue
            near = self.source.nearest_point(self.source.key(xy[0], xy[1], rp + d, seed))
            if near is not None:
                self.counters.fallback_point += 1
                self.source.count_fallback()
                return self.repitch_fn(near[1], float(pitch - (rp + d)))
        self.counters.skipped += 1
        return None

    def beyond_range(self, key: Hashable, audio: np.ndarray, semitones: int) -> np.ndarray:
        """A note beyond the model's range: its edge note re-pitched (memoised, so a riff
        on a low note resamples once, not in every block that plays it; prepared off the
        audio thread when a preparer is attached)."""
        memo = (key, semitones)
        out = self.memo.get(memo)
        if out is None:
            if self.preparer is not None:
                self.repitched_in_hook += 1  # not ready in time: done here, as without one
            out = self.memo.add(memo, self.repitch_fn(audio, float(semitones)))
        return out
