"""The voice pool: sample-accurate one-shot playback of rendered notes, built once at boot.

Per voice: a DataTable big enough for the longest note plus one block, a TableRead that plays
it once, and a Pan; all voices are summed by one Mix, then a master limiter. Nothing pyo is
allocated per note: a note copies its samples into its voice's table through the numpy view
that ``getBuffer()`` shares with pyo, then restarts the reader.

Sample-accurate onsets. pyo starts a reader only on block boundaries, so the pool activates a
note from its pre-block hook in the block that contains the note's start sample and writes the
samples into the table after ``offset`` zeros (the sub-block delay). The hook runs with a high
priority, after the scheduler's, so a note handed over for this very block still starts on time.

The envelope lives in the table, not in pyo objects: velocity gain and the release fade are
applied while copying (sample-exact, free, deterministic). Consequences:
- velocity -> gain is velocity squared (40 log10 v dB, the General MIDI curve: 0.5 is -12 dB),
  and velocity 0 is silent (``velocity_gain``);
- ``length_s`` ends the note with a ~30 ms linear fade starting at ``length_s``;
- ``release(tag, at_s)`` ends the notes played with that tag before the call (a held key: the
  engine tags notes played now with their pitch) with the same fade from ``at_s`` (to the
  sample; None: the next block); a note of that tag played after the call is not touched;
- stealing a voice that still sounds keeps the old note's continuation up to the new onset and
  fades it over 5 ms under the new note (no click, nothing extra to allocate); during the block
  of the switch the old tail takes the new note's pan, which is inaudible in 5 ms;
- ``panic()`` rewrites every sounding table from its current read position: a fade to zero
  over the next block, then the readers stop.

Held notes (``play_held``) have no length: a *playhead* (render/loop.py's Playhead: any object
with ``read(n0, count)``, ``release(n)``, ``follow(n, other)`` and ``end``; samples are a pure
function of the index n since the onset) is written ahead of the reader, HELD_AHEAD_S at a
time, a few hundred samples per block; when the table runs out the voice is re-anchored at a
block boundary (what is written ahead moves to index 0 and the reader restarts there, as a
note's activation does). ``release(tag)`` lets a held note go: its playhead's own release
(the rendered release segment) is written from that sample instead of a fade; ``follow(tag,
other)`` rewrites what lies ahead with a crossfade into another playhead's material. Nothing
here allocates pyo objects, and what runs in the hook is numpy on a few thousand samples.

Pan is equal power (pyo Pan, spread 0): centre = -3 dB per channel, hard left/right = 0 dB.
The limiter is a zero-latency compressor (pyo Compress in `outputAmp` mode driving a gain, since
Compress's own audio path always adds its look-ahead delay, at least one sample) followed by a
Clip at 0.98 that catches the attack overshoot: a chord never goes above 0 dBFS.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgesam_live.audio.server import AudioEngine
from pgesam_live.errors import AudioError, ConfigError

os.environ.setdefault("PYO_GUI_WX", "0")
import pyo  # noqa: E402  (PYO_GUI_WX must be set before pyo is imported)

RELEASE_S = 0.030
STEAL_FADE_S = 0.005
LIMIT_THRESH_DB = -1.0
LIMIT_CLIP = 0.98
HELD_AHEAD_S = 0.05  # a held voice keeps this much written ahead of the block being played
POOL_HOOK_PRIORITY = 1000  # after every other hook: the scheduler hands notes in before us
HELD_FOREVER = 2**62  # a held note's end sample until it is released


def velocity_gain(velocity: float) -> float:
    """Linear gain for a velocity in 0..1 (clamped): velocity squared, i.e. 40 log10(v) dB,
    the General MIDI curve (0.5 -> -12 dB, 0.1 -> -40 dB; MIDI 64 of 127 -> -12 dB); velocity 0
    is silence (as MIDI's note on with velocity 0 is no note)."""
    v = min(1.0, max(0.0, float(velocity)))
    return v * v


@dataclass
class _Note:
    data: np.ndarray  # float32 [N], gain and release already applied
    start_sample: int | None  # engine sample; None = the next block
    pan: float  # -1..1
    booked_sample: int  # for stealing order: when this note (would) start
    tag: Hashable | None = None  # what release() names it by (a held key's pitch)
    serial: int = 0  # the order of play() calls: a release ends notes played before it
    head: Any = None  # a held note's playhead (data is then empty)
    gain: float = 1.0  # a held note's gain, applied as it is written
    release_at: int | None = None  # a held note's own release time (a length), engine samples


@dataclass
class _Voice:
    index: int
    table: pyo.DataTable
    buf: np.ndarray  # float32 [table_len], shares memory with the table
    reader: pyo.TableRead
    panner: pyo.Pan
    playing: bool = False
    table_start: int = 0  # engine sample at which table index 0 plays
    end_sample: int = 0  # engine sample from which this voice is silent
    start_sample: int = 0  # engine sample of the current note's onset
    written_end: int = 0  # table indices >= this are known zero
    pending: _Note | None = None
    tag: Hashable | None = None  # the sounding note's tag
    serial: int = 0  # the sounding note's play() order
    head: Any = None  # a held note's playhead, while it is written ahead
    gain: float = 1.0
    onset: int = 0  # engine sample of the held note's index 0
    release_at: int | None = None  # when the held note lets go by itself (a length)


class VoicePool:
    """A fixed pool of one-shot voices on an AudioEngine (booted here if it is not yet).
    max_note_s: the longest note (a 4 s one-shot re-pitched an octave down lasts 8 s)."""

    def __init__(self, engine: AudioEngine, n_voices: int = 32, max_note_s: float = 8.5,
                 limiter: bool = True) -> None:
        if n_voices < 1 or max_note_s <= 0:
            raise ConfigError(f"voice pool needs n_voices >= 1 and max_note_s > 0 "
                              f"(got {n_voices}, {max_note_s})")
        engine.boot()
        self.engine = engine
        self.n_voices = int(n_voices)
        self.sample_rate = engine.sample_rate
        self.block = engine.buffer_size
        self.max_note_samples = int(round(max_note_s * self.sample_rate))
        self.table_len = self.max_note_samples + self.block
        self.release_samples = max(1, int(round(RELEASE_S * self.sample_rate)))
        self.steal_fade_samples = max(1, int(round(STEAL_FADE_S * self.sample_rate)))
        self.stolen = 0
        self.played = 0
        self.late_starts = 0  # notes activated after their start sample had passed
        self.truncated = 0  # notes longer than max_note_s (cut with a release fade)
        self._lock = threading.Lock()
        self._panic = False
        # Releases not applied yet: (sample from which to fade, tag, serial of the last note
        # played before the release).
        self._releases: list[tuple[int, Hashable, int]] = []
        # Timbre moves for held notes not applied yet: (sample, tag, the other material).
        self._follows: list[tuple[int, Hashable, Any]] = []
        self.held_ahead = max(self.block, int(round(HELD_AHEAD_S * self.sample_rate)))
        self.held_played = 0
        self.reanchors = 0  # held voices moved back to their table's start
        self.follows = 0  # timbre moves applied to held notes
        self._voices: list[_Voice] = []
        for i in range(self.n_voices):
            table = pyo.DataTable(size=self.table_len, chnls=1)
            buf = np.asarray(table.getBuffer())
            buf[:] = 0.0
            reader = pyo.TableRead(table, freq=table.getRate(), loop=0, interp=1)
            reader.stop()  # silent until a note starts; stopped readers cost nothing
            panner = pyo.Pan(reader, outs=engine.n_channels, pan=0.5, spread=0.0)
            self._voices.append(_Voice(i, table, buf, reader, panner))
        self._mix = pyo.Mix([v.panner for v in self._voices], voices=engine.n_channels)
        self._chain: list[pyo.PyoObject] = [self._mix]  # keep every pyo object referenced
        out: pyo.PyoObject = self._mix
        if limiter:
            amp = pyo.Compress(self._mix, thresh=LIMIT_THRESH_DB, ratio=100.0, risetime=0.0002,
                               falltime=0.2, lookahead=5.0, knee=0.0, outputAmp=True)
            limited = self._mix * amp
            clip = pyo.Clip(limited, min=-LIMIT_CLIP, max=LIMIT_CLIP)
            self._chain += [amp, limited, clip]
            out = clip
        out.out()
        self.output = out
        engine.add_hook(self._on_block, priority=POOL_HOOK_PRIORITY)

    # ------------------------------------------------------------------ public
    def play(self, samples: np.ndarray, start_s: float | None = None, velocity: float = 1.0,
             pan: float = 0.0, length_s: float | None = None,
             tag: Hashable | None = None) -> int:
        """Schedule one note; returns the voice index.

        samples: float32 [N] mono at the server's rate. start_s: engine time of the first
        sample (None = the next block; a time already past starts at the next block and is
        counted in ``late_starts``). velocity 0..1 through ``velocity_gain``. pan -1 (left)
        .. 1 (right). length_s: the note ends with a RELEASE_S fade from length_s on
        (None = the whole one-shot). tag: a name for ``release`` (None: only length_s ends it).
        """
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ConfigError(f"a note is mono [N] float32, got shape {x.shape}: pass one channel")
        if length_s is not None and length_s < 0:
            raise ConfigError(f"length_s must be >= 0 (got {length_s})")
        data = self._shape(x, velocity_gain(velocity), length_s)
        start = None if start_s is None else int(round(float(start_s) * self.sample_rate))
        p = min(1.0, max(-1.0, float(pan)))
        with self._lock:
            now = self.engine.time_samples()
            booked = now if start is None else max(start, now)
            note = _Note(data, start, p, booked, tag, serial=self.played + 1)
            v = self._pick_voice(booked)
            v.pending = note
            self.played += 1
            return v.index

    def play_held(self, playhead: Any, start_s: float | None = None, velocity: float = 1.0,
                  pan: float = 0.0, tag: Hashable | None = None,
                  release_at_s: float | None = None) -> int:
        """Schedule a held note; returns the voice index. playhead: its material (see the
        module docstring); it sounds until ``release(tag)`` or engine time release_at_s (a
        note of a length; then its own release) or until its material ends (a decaying
        sound). start_s, velocity, pan, tag as ``play``."""
        for name in ("read", "release", "end"):
            if not hasattr(playhead, name):
                raise ConfigError(f"play_held needs a playhead (render.loop.Playhead), got "
                                  f"{type(playhead).__name__} without .{name}")
        start = None if start_s is None else int(round(float(start_s) * self.sample_rate))
        p = min(1.0, max(-1.0, float(pan)))
        with self._lock:
            now = self.engine.time_samples()
            booked = now if start is None else max(start, now)
            note = _Note(np.zeros(0, np.float32), start, p, booked, tag,
                         serial=self.played + 1, head=playhead, gain=velocity_gain(velocity),
                         release_at=None if release_at_s is None
                         else int(round(float(release_at_s) * self.sample_rate)))
            v = self._pick_voice(booked)
            v.pending = note
            self.played += 1
            self.held_played += 1
            return v.index

    def follow(self, tag: Hashable, material: Any, at_s: float | None = None) -> None:
        """Held notes of ``tag`` sounding at ``at_s`` (None: the next block) move to
        ``material`` (their playhead's ``follow``: a crossfade into another point's sustain);
        one-shots and released notes are not touched."""
        with self._lock:
            now = self.engine.time_samples()
            at = now if at_s is None else max(now, int(round(float(at_s) * self.sample_rate)))
            self._follows.append((at, tag, material))

    def held_tags(self) -> list[Hashable]:
        """Tags of the held notes sounding or about to (not released yet)."""
        with self._lock:
            out = [v.tag for v in self._voices if v.head is not None and v.tag is not None
                   and v.head.released_at is None]
            out += [v.pending.tag for v in self._voices if v.pending is not None
                    and v.pending.head is not None and v.pending.tag is not None]
            return out

    def release_all(self) -> int:
        """Hush's part in the pool: drop notes not started yet, let sounding notes ring.

        Returns how many pending notes were dropped. (Stopping sequences is the scheduler's.)
        """
        with self._lock:
            n = 0
            for v in self._voices:
                if v.pending is not None:
                    v.pending = None
                    n += 1
            return n

    def release(self, tag: Hashable, at_s: float | None = None) -> None:
        """End the notes played with ``tag`` so far (a key let go): each fades out over
        RELEASE_S from engine time ``at_s`` (None: the next block). A note played so far that
        has not started by then starts and fades at once; one played after this call (the key
        struck again) is not touched."""
        with self._lock:
            now = self.engine.time_samples()
            at = now if at_s is None else max(now, int(round(float(at_s) * self.sample_rate)))
            self._releases.append((at, tag, self.played))

    def drop_pending(self, tag: Hashable) -> int:
        """Drop the notes played with ``tag`` that have not started yet (a stopped
        sequence's notes inside the look-ahead); sounding ones ring on. Returns how many."""
        with self._lock:
            n = 0
            for v in self._voices:
                if v.pending is not None and v.pending.tag == tag:
                    v.pending = None
                    n += 1
            return n

    def panic(self) -> None:
        """Silence now: pending notes are dropped, everything sounding fades out over the next
        block (no click) and the readers stop."""
        with self._lock:
            for v in self._voices:
                v.pending = None
            self._releases = []
            self._follows = []
            self._panic = True

    def set_gain(self, gain: float) -> None:
        """Master gain (linear), before the limiter: every voice, sounding notes too."""
        self._mix.mul = float(gain)

    def in_use(self) -> int:
        """Voices sounding now or holding a note about to start."""
        now = self.engine.time_samples()
        with self._lock:
            return sum(1 for v in self._voices
                       if v.pending is not None or (v.playing and v.end_sample > now))

    def stats(self) -> dict[str, int]:
        return {"voices": self.n_voices, "in_use": self.in_use(), "played": self.played,
                "stolen": self.stolen, "late_starts": self.late_starts,
                "truncated": self.truncated, "held_played": self.held_played,
                "reanchors": self.reanchors, "follows": self.follows}

    # ------------------------------------------------------------------ internals
    def _shape(self, x: np.ndarray, gain: float, length_s: float | None) -> np.ndarray:
        """Gain + release fade, in the caller's thread so the audio hook only copies."""
        n = len(x)
        cut = n
        if length_s is not None:
            cut = int(round(length_s * self.sample_rate))
        if cut + self.release_samples > self.max_note_samples and n > self.max_note_samples:
            with self._lock:
                self.truncated += 1
            cut = min(cut, self.max_note_samples - self.release_samples)
        if cut < n:
            end = min(n, cut + self.release_samples)
            out = x[:end] * np.float32(gain)
            ramp = np.linspace(1.0, 0.0, self.release_samples + 1, dtype=np.float32)[1:]
            out[cut:end] *= ramp[: end - cut]
            return out
        return x * np.float32(gain)

    def _pick_voice(self, booked: int) -> _Voice:
        """A voice free at `booked` (silent longest first), else steal the oldest note; a
        note still held (a key down, a drone under `note P V hold`) only when every voice
        holds one, as synths keep held keys over ringing one-shots."""
        free = [v for v in self._voices if v.pending is None
                and (not v.playing or v.end_sample <= booked)]
        if free:
            return min(free, key=lambda v: (v.end_sample if v.playing else -1, v.index))
        self.stolen += 1

        def age(v: _Voice) -> int:
            return v.pending.booked_sample if v.pending is not None else v.start_sample

        def held(v: _Voice) -> bool:
            if v.pending is not None:
                return v.pending.head is not None
            return v.head is not None and v.head.released_at is None

        return min(self._voices, key=lambda v: (held(v), age(v), v.index))

    def _on_block(self, t_s: float) -> None:
        block_start = int(round(t_s * self.sample_rate))
        block_end = block_start + self.block
        with self._lock:
            if self._panic:
                self._panic = False
                self._fade_all(block_start)
            for v in self._voices:
                note = v.pending
                due = note is not None and (note.start_sample is None
                                            or note.start_sample < block_end)
                if note is not None and due:
                    v.pending = None
                    self._activate(v, note, block_start)
                elif v.playing and v.end_sample <= block_start:
                    v.reader.stop()
                    v.playing = False
            releases = [r for r in self._releases if r[0] < block_end]
            if releases:
                self._releases = [r for r in self._releases if r[0] >= block_end]
                for at, tag, serial in releases:
                    for v in self._voices:
                        if v.tag == tag and v.serial <= serial and v.playing \
                                and v.end_sample > at:
                            if v.head is not None:
                                self._release_held(v, max(at, v.start_sample, block_start),
                                                   block_start)
                            else:
                                self._fade(v, max(at, v.start_sample), self.release_samples)
                            v.tag = None
            follows = [f for f in self._follows if f[0] < block_end]
            if follows:
                self._follows = [f for f in self._follows if f[0] >= block_end]
                for at, tag, material in follows:
                    for v in self._voices:
                        if v.tag == tag and v.head is not None and v.playing:
                            self._follow_held(v, max(at, v.start_sample, block_start),
                                              material)
            for v in self._voices:
                if v.head is not None and v.playing:
                    if v.release_at is not None and v.release_at < block_end:
                        at, v.release_at = v.release_at, None
                        if v.head.released_at is None:
                            self._release_held(v, max(at, v.start_sample, block_start),
                                               block_start)
                        if v.head is None:
                            continue
                    self._fill(v, block_start, block_end)

    def _fade_all(self, block_start: int) -> None:
        for v in self._voices:
            if v.playing and v.end_sample > block_start:
                self._fade(v, block_start, self.block)

    # -- held voices (in the hook) ------------------------------------------------------
    def _reanchor(self, v: _Voice, block_start: int) -> None:
        """Move what is written from this block on to the table's index 0 and restart the
        reader there (with this block, as an activation does)."""
        pos = block_start - v.table_start
        if pos <= 0:
            return
        keep = v.buf[pos: v.written_end].copy()
        v.buf[: len(keep)] = keep
        v.buf[len(keep): v.written_end] = 0.0
        v.written_end = len(keep)
        v.table_start = block_start
        v.reader.play()
        self.reanchors += 1

    def _write_held(self, v: _Voice, until: int, block_start: int) -> None:
        """Write the playhead's samples from the written end up to engine sample `until`."""
        head = v.head
        end = head.end
        if end is not None:
            until = min(until, v.onset + end)
        if until - v.table_start > self.table_len:
            self._reanchor(v, block_start)
            until = min(until, v.table_start + self.table_len)
        a = v.table_start + v.written_end
        if until > a:
            v.buf[v.written_end: v.written_end + (until - a)] = \
                head.read(a - v.onset, until - a) * np.float32(v.gain)
            v.written_end += until - a
        if end is None:
            v.end_sample = HELD_FOREVER  # (it may have followed a decaying point, and back)
        else:
            v.end_sample = v.onset + end
            if v.table_start + v.written_end >= v.end_sample:
                v.head = None  # all of it is written: it plays out as a one-shot

    def _fill(self, v: _Voice, block_start: int, block_end: int) -> None:
        if v.table_start + v.written_end < block_end + self.held_ahead:
            self._write_held(v, block_end + 2 * self.held_ahead, block_start)

    def _truncate(self, v: _Voice, at: int) -> None:
        """Forget what is written from engine sample `at` on (it will be written again)."""
        pos = max(0, at - v.table_start)
        if pos < v.written_end:
            v.buf[pos: v.written_end] = 0.0
            v.written_end = pos

    def _release_held(self, v: _Voice, at: int, block_start: int) -> None:
        head = v.head
        head.release(at - v.onset)
        self._truncate(v, v.onset + head.released_at)
        end = head.end
        if end is not None:
            self._write_held(v, v.onset + end, block_start)

    def _follow_held(self, v: _Voice, at: int, material: Any) -> None:
        # (what this voice has not written yet is rendered with the moved parts)
        n = v.head.follow(at - v.onset, material,
                          read_from=min(at, v.table_start + v.written_end) - v.onset)
        if n is None:
            return
        # Rewritten from where the move starts (after an earlier move's crossfade): what
        # lies before it is written already and stays as it is.
        self._truncate(v, v.onset + n)
        self.follows += 1

    def _fade(self, v: _Voice, from_sample: int, n: int) -> None:
        """Rewrite a sounding voice's table: a linear fade to zero over `n` samples from
        engine sample `from_sample` (in this block or later), silence after."""
        v.head = None  # a held note faded (panic) is not written on
        ramp = np.linspace(1.0, 0.0, n + 1, dtype=np.float32)[1:]
        pos = from_sample - v.table_start
        seg = v.buf[pos: pos + n]
        seg *= ramp[: len(seg)]
        v.buf[pos + len(seg): v.written_end] = 0.0
        v.written_end = min(v.written_end, pos + len(seg))
        v.end_sample = min(v.end_sample, from_sample + n)

    def _activate(self, v: _Voice, note: _Note, block_start: int) -> None:
        if note.start_sample is None or note.start_sample < block_start:
            if note.start_sample is not None:
                self.late_starts += 1
            offset = 0
        else:
            offset = note.start_sample - block_start
        data = note.data
        if note.head is not None:
            # A held note: its first samples now, the rest as it plays (_fill).
            data = note.head.read(0, self.held_ahead + self.block) * np.float32(note.gain)
        n = len(data)
        fade = self.steal_fade_samples
        tail: np.ndarray | None = None
        if v.playing and v.end_sample > block_start:
            # Still sounding: keep its continuation up to the new onset, then fade it under.
            pos = block_start - v.table_start
            tail = v.buf[pos: min(pos + offset + fade, self.table_len)].copy()
        buf = v.buf
        buf[:offset] = 0.0
        buf[offset: offset + n] = data
        new_end = offset + n
        if tail is not None:
            k = min(offset, len(tail))
            buf[:k] = tail[:k]
            rest = tail[offset:]
            if len(rest):
                ramp = np.linspace(1.0, 0.0, fade + 1, dtype=np.float32)[1: len(rest) + 1]
                buf[offset: offset + len(rest)] += rest * ramp
                new_end = max(new_end, offset + len(rest))
        if v.written_end > new_end:
            buf[new_end: v.written_end] = 0.0
        v.written_end = new_end
        v.panner.setPan((note.pan + 1.0) / 2.0)
        v.table_start = block_start
        v.tag = note.tag
        v.serial = note.serial
        v.start_sample = block_start + offset
        v.end_sample = block_start + new_end
        v.head, v.gain, v.onset = note.head, note.gain, block_start + offset
        v.release_at = note.release_at
        if note.head is not None:
            end = note.head.end
            v.end_sample = HELD_FOREVER if end is None else block_start + offset + end
        v.playing = True
        v.reader.play()  # restarts at table index 0 with this block


# ---------------------------------------------------------------------- benches
def bench_voices_cpu_pct(n: int = 64, seconds: float = 4.0, sample_rate: int = 24000,
                         buffer_size: int = 256) -> float:
    """Share of one core (percent) to compute audio with n voices sounding (manual server).

    Builds its own offline engine: call it when no other pyo server lives in this process.
    """
    engine = AudioEngine("offline", sample_rate=sample_rate, buffer_size=buffer_size)
    try:
        engine.boot()
        pool = VoicePool(engine, n_voices=n, max_note_s=seconds + 1.0)
        rng = np.random.default_rng(0)
        note = (0.3 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)
        engine.run_blocks(2)
        for i in range(n):
            pool.play(note, start_s=engine.time_s() + i / sample_rate, velocity=0.7,
                      pan=(i % 7) / 3.0 - 1.0)
        n_blocks = int(seconds * sample_rate / buffer_size) - 2
        engine.run_blocks(1)  # activation happens here; measure steady sounding
        if pool.in_use() != n:
            raise AudioError(f"bench: expected {n} voices sounding, got {pool.in_use()}")
        t0 = time.thread_time()
        for _ in range(n_blocks):
            engine.server.process()
        cpu_s = time.thread_time() - t0
        return 100.0 * cpu_s / (n_blocks * buffer_size / sample_rate)
    finally:
        engine.close()


def bench_trigger_latency_ms(n_notes: int = 40, sample_rate: int = 24000,
                             buffer_size: int = 256, seed: int = 0) -> dict[str, float]:
    """Cache hit -> first sample in the output, on a manual server paced in real time.

    A note (already in memory, i.e. a cache hit) is handed to ``VoicePool.play(start_s=None)``
    at a random moment; the latency is from that call to the moment its first non-zero sample
    is due at the output: the wall-clock due time of its block plus its index in the block (or
    the moment the block was actually computed, if that was later). A real device adds its own
    output buffer on top. Returns mean / p95 / max in ms.
    """
    engine = AudioEngine("none", sample_rate=sample_rate, buffer_size=buffer_size)
    lat: list[float] = []
    found = threading.Event()
    state: dict[str, float] = {"t_call": 0.0}

    def tap(block: np.ndarray, t_s: float) -> None:
        if found.is_set() or state["t_call"] == 0.0:
            return
        nz = np.flatnonzero(np.abs(block).max(axis=1) > 0.0)
        if len(nz):
            assert engine.t0_wall is not None
            due = engine.t0_wall + t_s + nz[0] / sample_rate
            out_wall = max(due, time.perf_counter())
            state["latency"] = out_wall - state["t_call"]
            found.set()

    try:
        engine.boot()
        pool = VoicePool(engine, n_voices=8, max_note_s=0.2)
        click = np.full(int(0.01 * sample_rate), 0.5, dtype=np.float32)
        engine.add_tap(tap)
        engine.start()
        rng = np.random.default_rng(seed)
        time.sleep(0.05)
        for _ in range(n_notes):
            time.sleep(0.03 + float(rng.uniform(0.0, engine.block_s)))  # previous note is over
            found.clear()
            state["t_call"] = time.perf_counter()
            pool.play(click, None, velocity=1.0)
            if not found.wait(1.0):
                raise AudioError("bench: a triggered note never reached the output")
            lat.append(1000.0 * state["latency"])
            state["t_call"] = 0.0
    finally:
        engine.close()
    a = np.asarray(lat)
    return {"mean_ms": float(a.mean()), "p95_ms": float(np.percentile(a, 95)),
            "max_ms": float(a.max()), "n": float(len(a))}
