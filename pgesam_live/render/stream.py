"""Streamed notes: a note never rendered starts from its first frames while the rest is
generated (issue 16's "a note from nothing").

The synthesis process renders a short *head* first (`Synth.render_heads`: the first
HEAD_FRAMES frames, attending to the rest of the note at every 16th frame only: ~8 ms on one
CPU thread against ~50 ms for the whole pass, and within a fraction of a dB of what the whole
pass gives those frames) and sends its audio up to a *seam*; then it renders the whole note,
joins head and note in the frame domain before the seam's frame (`Synth.stitch_frames`: a
crossfade of the frames, so f0 and phase run on, nothing to click) and sends the joined
note, whose samples before the seam are the head's own. A voice plays a `StreamPlayhead`:
the head while that is all there is, the joined note (looped and released as a held note, or
played out as a one-shot) once it arrives; the cache receives the whole note rendered as
always, for every later play.

Level: a note plays at NOTE_PEAK, but a head does not know the note's peak for sure. It plays
at its own peak's gain, lowered by as much as the head's context frames say the note gets
louder later (a swell); what that estimate misses, the gain eases out over LEVEL_EASE_S after
the seam, so the note never overshoots its playing level.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from pgesam_live.render.dsp import NOTE_PEAK
from pgesam_live.render.loop import Playhead, Sustain

HEAD_FRAMES = 32  # a head: 0.43 s at 75 frames/s, rendered in ~10 ms on one thread
JOIN_MARGIN_FRAMES = 4  # the head's last frames (least like the whole note's) are not used
XFADE_FRAMES = 8  # frames crossfaded from the head into the whole note
LEVEL_EASE_S = 0.2
RELEASE_FADE_S = 0.03  # a key let go before the note has arrived: the pool's one-shot fade


def join_frame(n_head: int) -> int:
    """The first frame of the crossfade for a head of n_head frames."""
    return max(1, n_head - JOIN_MARGIN_FRAMES - XFADE_FRAMES)


def seam_sample(n_head: int, hop: int) -> int:
    """Samples of a head (of n_head frames) that the joined note repeats exactly."""
    return max(0, (join_frame(n_head) - 1) * hop)


def peak_gain(audio: np.ndarray, peak: float = NOTE_PEAK) -> float:
    """The gain that plays `audio` at `peak` (1 for silence)."""
    m = float(np.abs(audio).max()) if len(audio) else 0.0
    return peak / m if m > 1e-6 else 1.0


def level_joined(joined: np.ndarray, head_gain: float, seam: int, sample_rate: int,
                 peak: float = NOTE_PEAK) -> np.ndarray:
    """The joined note at its playing level: head_gain before the seam, then easing over
    LEVEL_EASE_S to the note's own peak gain where that is lower (see the module
    docstring). float32 [N] -> [N]."""
    x = np.asarray(joined, dtype=np.float32)
    g_note = min(head_gain, peak_gain(x, peak))
    gain = np.full(len(x), g_note, dtype=np.float32)
    gain[:seam] = head_gain
    n = min(len(x) - seam, max(1, int(LEVEL_EASE_S * sample_rate)))
    if n > 0:
        ease = np.linspace(head_gain, g_note, n, dtype=np.float32)
        # ... and never above the playing level on the way (a peak inside the ease: the
        # gain follows the loudest sample so far, a limiter with no attack time).
        loudest = np.maximum.accumulate(np.abs(x[seam:seam + n]))
        cap = peak / np.maximum(loudest, 1e-9)
        gain[seam:seam + n] = np.minimum(ease, cap)
    return x * gain


class NoteStream:
    """One streamed note as the engine sees it: its head (at the playing level, the pool's
    rate: `prepare` converts), then, once the process sends it, the joined note. Written by
    the render client's thread, read by voices in the audio hook.

    head [seam] float32; pitch: the note's MIDI pitch (its loop is found near its f0);
    on_starve: told (in the audio hook) when a voice runs past the head before the note."""

    def __init__(self, head: np.ndarray, pitch: int, sample_rate: int,
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                 on_starve: Callable[[], object] | None = None) -> None:
        self.prepare = prepare
        self.on_starve = on_starve
        self.pitch = int(pitch)
        self.sample_rate = int(sample_rate)
        self.head = self._prep(head)
        self.note: np.ndarray | None = None
        self.sustain: Sustain | None = None
        self.failed = False
        self.starved = 0  # voices that ran past the head before the note came (silence)
        self._lock = threading.Lock()

    def _prep(self, audio: np.ndarray) -> np.ndarray:
        a = np.asarray(audio, dtype=np.float32)
        return np.asarray(self.prepare(a), dtype=np.float32) if self.prepare else a

    @property
    def complete(self) -> bool:
        return self.note is not None

    def finish(self, joined: np.ndarray) -> None:
        """The joined note (at its playing level, the model's rate) has arrived: its loop is
        found here (off the audio thread), then voices switch to it."""
        note = self._prep(joined)
        f0_hz = 440.0 * 2.0 ** ((self.pitch - 69) / 12.0)
        sustain = Sustain.analyse(note, self.sample_rate, f0_hz, hold_s=None)
        with self._lock:
            self.sustain = sustain
            self.note = note

    def fail(self) -> None:
        """The note will not come (its render failed, or the process died and it is being
        rendered again): voices fade out at the end of the head."""
        if self.note is None:
            self.failed = True


class StreamPlayhead:
    """A voice's view of a NoteStream, with the pool's playhead interface (render/loop.py's
    Playhead: ``read``, ``release``, ``follow``, ``end``, ``released_at``). hold: loop the
    sustain until released (a held note, a note of a length); else a one-shot that plays the
    whole note (a release before its end fades it as the pool's one-shots are faded)."""

    def __init__(self, stream: NoteStream, hold: bool) -> None:
        self.stream = stream
        self.hold = bool(hold)
        self.sample_rate = stream.sample_rate
        self.released_at: int | None = None
        self._inner: Playhead | None = None
        self._fade_at: int | None = None  # a release handled here (no note yet, a one-shot)
        self._starved = False
        # A follow asked before the note came (sample, sustain, crossfade): applied at the
        # first read once it is here, from that read's first sample on.
        self._pending_follow: tuple[int, Sustain, float | None] | None = None

    def _ready(self) -> bool:
        s = self.stream
        if s.failed and s.note is None and self._fade_at is None:
            # No note will come: the head fades out at its end (no click), as a release.
            fade = max(1, int(RELEASE_FADE_S * self.sample_rate))
            self._fade_at = max(0, len(s.head) - fade)
            if self.released_at is None:
                self.released_at = self._fade_at
        if self._inner is None and self.hold and s.sustain is not None:
            self._inner = Playhead(s.sustain)
            if self.released_at is not None and self._fade_at is None:
                self._inner.release(self.released_at)
        return s.note is not None

    @property
    def end(self) -> int | None:
        """Samples since the onset after which the note is silent; None while unknown."""
        fade = max(1, int(RELEASE_FADE_S * self.sample_rate))
        ready = self._ready()
        if self._fade_at is not None:
            return self._fade_at + fade
        if ready:
            if self._inner is not None:
                return self._inner.end
            assert self.stream.note is not None
            return len(self.stream.note)
        return None

    def read(self, n0: int, count: int) -> np.ndarray:
        """Samples n0 .. n0 + count since the onset: float32 [count]."""
        s = self.stream
        if self._ready():
            if self._inner is not None and self._fade_at is None:
                if self._pending_follow is not None:
                    n, sustain, xfade_s = self._pending_follow
                    self._pending_follow = None
                    self.follow(max(n, n0), sustain, xfade_s, read_from=n0)
                return self._inner.read(n0, count)
            note = s.note
            assert note is not None
            out = np.zeros(count, dtype=np.float32)
            a, b = max(0, n0), min(len(note), n0 + count)
            if a < b:
                out[a - n0: b - n0] = note[a:b]
        else:
            out = np.zeros(count, dtype=np.float32)
            head = s.head
            a, b = max(0, n0), min(len(head), n0 + count)
            if a < b:
                out[a - n0: b - n0] = head[a:b]
            if n0 + count > len(head) and not self._starved and not s.failed:
                self._starved = True
                s.starved += 1
                if s.on_starve is not None:
                    s.on_starve()
        return self._faded(out, n0)

    def _faded(self, out: np.ndarray, n0: int) -> np.ndarray:
        if self._fade_at is None:
            return out
        fade = max(1, int(RELEASE_FADE_S * self.sample_rate))
        k = np.arange(n0, n0 + len(out)) - self._fade_at
        w = np.clip(1.0 - (k + 1) / fade, 0.0, 1.0)
        return (out * w).astype(np.float32)

    def release(self, n: int) -> None:
        """Let go at sample n: the held note's own release once the note is here; a short
        fade from the head (the note not here yet) or from a one-shot."""
        if self.released_at is not None:
            return
        self.released_at = int(n)
        if self._ready() and self._inner is not None:
            self._inner.release(n)
            self.released_at = self._inner.released_at
        else:
            self._fade_at = int(n)

    def follow(self, n: int, sustain: Sustain, xfade_s: float | None = None,
               read_from: int | None = None) -> int | None:
        """Move to another point's sustain from sample n (a held note whose note has come).
        Asked before the note has come, the head plays on and the move waits: it is made at
        the first read once the note is here (the latest move asked wins; None is returned,
        as nothing already read changes). Ignored for one-shots and once released."""
        if not self.hold or self._fade_at is not None or self.released_at is not None:
            return None
        if not self._ready() or self._inner is None:
            self._pending_follow = (int(n), sustain, xfade_s)
            return None
        if xfade_s is None:
            return self._inner.follow(n, sustain, read_from=read_from)
        return self._inner.follow(n, sustain, xfade_s, read_from=read_from)


__all__ = ["HEAD_FRAMES", "NoteStream", "StreamPlayhead", "join_frame", "level_joined",
           "peak_gain", "seam_sample"]
