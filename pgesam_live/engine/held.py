"""Held notes in the engine: the scheduler hands a held note's audio (a cached render, or its
fallback) here, and it reaches the voice pool as a playhead (render/loop.py) that loops the
note's sustain until the key is let go and then plays the note's own release.

A note's loop is found once (`Sustain.analyse`, a few ms) and remembered by the audio array's
identity, like the resampled notes: `warm(audio, pitch)` does it ahead in the thread that
cached the note (the renderer's result thread), so the audio hook only looks it up; a note
not prepared in time is analysed in the hook and counted (`analysed_in_hook`).

`follow(tag, audio)` moves the held notes of a key to another point's render of the same
pitch (a crossfade, aligned to the sounding waveform): the timbre follows the point.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from pgesam_live.render.loop import Playhead, Sustain
from pgesam_live.render.stream import NoteStream, StreamPlayhead

MEMO_MAX = 256  # notes whose loops are remembered (a few pitch banks)


def f0_of(pitch: int) -> float:
    return 440.0 * 2.0 ** ((int(pitch) - 69) / 12.0)


class HeldNotes:
    """The engine's held-note side of the voice sink.

    pool: the voice pool (``play_held``, ``follow``). out_rate: the pool's rate; `prepare`
    turns a note at the model's rate into the pool's (the resampler's lookup), identity when
    the rates agree."""

    def __init__(self, pool: Any, out_rate: int,
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.pool = pool
        self.out_rate = int(out_rate)
        self.prepare = prepare
        self._memo: OrderedDict[int, tuple[np.ndarray, Sustain]] = OrderedDict()
        self._lock = threading.Lock()
        self.analysed_in_hook = 0
        self.analysed = 0

    def sustain(self, audio: np.ndarray, pitch: int, in_hook: bool = True) -> Sustain:
        """The note's Sustain (memoised by the array's identity)."""
        with self._lock:
            hit = self._memo.get(id(audio))
            if hit is not None and hit[0] is audio:
                self._memo.move_to_end(id(audio))
                return hit[1]
        out = self.prepare(audio) if self.prepare is not None else audio
        s = Sustain.analyse(out, self.out_rate, f0_of(pitch), hold_s=None)
        with self._lock:
            self.analysed += 1
            if in_hook:
                self.analysed_in_hook += 1
            self._memo[id(audio)] = (audio, s)
            while len(self._memo) > MEMO_MAX:
                self._memo.popitem(last=False)
        return s

    def warm(self, audio: np.ndarray, pitch: int) -> None:
        """Find a note's loop ahead (any thread but the audio one)."""
        self.sustain(audio, pitch, in_hook=False)

    def play_held(self, audio: np.ndarray, start_s: float | None, velocity: float, pan: float,
                  tag: Hashable | None, pitch: int, release_at_s: float | None = None) -> int:
        """A held note: it sounds until ``release(tag)``, or until release_at_s (a note of a
        length), then plays its own release."""
        return int(self.pool.play_held(Playhead(self.sustain(audio, pitch)), start_s,
                                       velocity, pan, tag, release_at_s=release_at_s))

    def play_stream(self, stream: NoteStream, start_s: float | None, velocity: float,
                    pan: float, tag: Hashable | None, hold: bool,
                    release_at_s: float | None = None) -> int:
        """A note streaming in (render/stream.py): its head now, the note when it comes; hold:
        loop its sustain until released (else a one-shot)."""
        return int(self.pool.play_held(StreamPlayhead(stream, hold), start_s, velocity, pan,
                                       tag, release_at_s=release_at_s))

    def follow(self, tag: Hashable, audio: np.ndarray, pitch: int,
               at_s: float | None = None) -> None:
        """The held notes of ``tag`` move to ``audio`` (the same pitch at another point)."""
        self.pool.follow(tag, self.sustain(audio, pitch), at_s)

    def stats(self) -> dict[str, int]:
        return {"held_analysed": self.analysed, "held_analysed_in_hook": self.analysed_in_hook}


__all__ = ["HeldNotes", "f0_of"]
