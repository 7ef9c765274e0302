"""The musical clock: logical time in beats over engine time in seconds, look-ahead
scheduling, render requests ahead of deadlines (tracked by engine/requests.py), and the
notes' audio with fallbacks for late renders (engine/fallback.py).

Time is injected: the engine calls ``tick(now_s)`` before every audio block (any rate
works), so tests and the offline bounce drive the same code with a fake clock. Nothing here
reads a wall clock or draws a random number: the same calls at the same engine times give the
same sink calls, which the offline bounce and session replay rely on.

How a tick works. Everything that happens in musical time (sequence steps, patch events,
timed patch commands, a patch swap) is an item on a *stream*. A tick fires, in (beat,
priority, stream order) order, every item whose engine time lies before ``now_s +
lookahead_s``; each note goes to ``sink.play`` with its exact engine time. The latest time
fired is the *committed horizon*: nothing before it can change any more, so tempo changes,
patch swaps and sequence starts are quantised to a beat or bar at or after it, and
``quantum="now"`` means "at the horizon". Render requests go out for everything due within
``request_ahead_beats`` (one bar by default) beyond the horizon, each once, with the time the
note is needed (its start minus the look-ahead) as the deadline.

A 4/4 bar is assumed throughout (``BEATS_PER_BAR``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgesam_live.engine.counters import SchedulerCounters
from pgesam_live.engine.fallback import Fallbacks
from pgesam_live.engine.ports import NoteSource, RenderRequester, VoiceSink
from pgesam_live.engine.requests import RenderRequests
from pgesam_live.engine.streams import (
    HUSH_KEEPS,
    CommandStream,
    EventStream,
    Note,
    PointSegment,
    SequenceStream,
    Stream,
    SwapStream,
)
from pgesam_live.engine.tempo import BEATS_PER_BAR, TempoMap
from pgesam_live.errors import CommandError
from pgesam_live.notes import rendered_pitch
from pgesam_live.patches.model import XY, Patch, PatchCommand, Sequence
from pgesam_live.render.dsp import repitch
from pgesam_live.vocab.commands import (
    LOOKAHEAD_MAX_S,
    LOOKAHEAD_MIN_S,
    TEMPO_MAX_BPM,
    TEMPO_MIN_BPM,
    XY_LIMIT,
)

log = logging.getLogger(__name__)

QUANTA = ("now", "beat", "bar")
_EPS_BEATS = 1e-9          # a horizon within this of a grid line counts as on it
KEEP_GRID_BARS = 2  # after the last sequence ends, new ones join its grid this long
_GLIDE_SAMPLE_BEATS = 0.25  # pre-render a gliding point every quarter beat
_RECENT_PITCHES = 8        # pitches pre-rendered along a glide / at a new point


# ----------------------------------------------------------------------------- scheduler


@dataclass
class _HeldNote:
    """A note held now (`note P V hold|follow`, a MIDI or web key), until its release."""

    key: Hashable | None  # the render it sounds now; None: a fallback stands in for it
    xy: XY  # the point it was played at
    mode: str  # "hold" or "follow" (asked for this note)
    own_point: bool  # played at its own point (`note_at`): `follow on` leaves it there
    follows: bool = False  # its timbre follows the point while it sounds


class Scheduler:
    """Musical time over engine time. See the module docstring for the tick model.

    ``command_runner`` receives a patch's ``commands:`` (PatchCommand, parsed) at their time
    (during a tick); it may call back into this scheduler but must not call ``tick``.
    ``preroll_s`` delays beat 0 of a fresh clock past the horizon, so a patch loaded from
    silence gets time to render its first notes (0 = start at the horizon)."""

    def __init__(
        self,
        sink: VoiceSink,
        source: NoteSource,
        requester: RenderRequester,
        tempo_bpm: float = 120.0,
        lookahead_s: float = 0.2,
        sample_rate: int = 24000,
        *,
        command_runner: Callable[[PatchCommand], object] | None = None,
        request_ahead_beats: float = float(BEATS_PER_BAR),
        preroll_s: float = 0.0,
        repitch_fn: Callable[[np.ndarray, float], np.ndarray] = repitch,
        seed: int = 0,
        pitch_range: tuple[int, int] | None = None,
    ) -> None:
        _check_tempo(tempo_bpm)
        _check_lookahead(lookahead_s)
        self.sink = sink
        self.source = source
        self.requester = requester
        self.sample_rate = sample_rate  # the output rate, reported in status
        self.command_runner = command_runner
        self.request_ahead_beats = request_ahead_beats
        self.preroll_s = preroll_s
        self.seed = seed
        self.lookahead_s = lookahead_s
        self.tempo = TempoMap(tempo_bpm, 0.0)
        self.patch: Patch | None = None
        self._now_s = 0.0
        self._committed_s = 0.0
        self._action_s: float | None = None  # the time of the item firing now (in a tick)
        self._streams: list[Stream] = []
        self._sequences: dict[str, SequenceStream] = {}
        self._swap: SwapStream | None = None
        self._swap_tempo: tuple[float, float] | None = None
        # (tempo before, patch tempo) of a load on a fresh clock, until its swap
        self._swap_restore_bpm: tuple[float, float] | None = None
        self._last_busy_s = -math.inf  # the horizon when something was last scheduled
        self._order = 0
        self._points = [PointSegment(0.0, 0.0, (0.0, 0.0), (0.0, 0.0))]
        # Notes played now, and key releases (velocity None), in the order they came.
        self._immediate: list[tuple[tuple[int, ...], float | None, float | None, XY | None,
                                    str | None]] = []
        # Held notes (engine/held.py): set by the engine. `held_lengths`: a note with a length
        # (a `note` length, `play len`, a sequence's gate) is a held note released at its end
        # (its own release), not a one-shot cut with a fade. `follow_point`: every held note
        # follows the point (the setting; `note P V follow` asks for it per note).
        self.held: Any = None
        self.held_lengths = False
        self.follow_point = False
        # Held notes (not released yet) by pitch: those that follow the point, and those
        # started on a fallback, move to their render when it comes (_follow_point).
        self._held_notes: dict[int, _HeldNote] = {}
        self._follow_asked: set[Hashable] = set()
        self._recent_pitches: dict[int, None] = {}
        self.counters = SchedulerCounters()
        self.requests = RenderRequests(source, requester, self.counters)
        # The model's rendered range: a pitch beyond it plays its nearest edge re-pitched.
        self.fallbacks = Fallbacks(source, self.counters, repitch_fn, pitch_range)

    # -- time

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    @contextmanager
    def acting_at(self, t_s: float | None) -> Iterator[None]:
        """Run a timed command (a journal line, an OSC bundle) at its exact time: a note it
        plays starts on that sample, a point it sets moves there. None: as soon as possible
        (the next tick), as an immediate command."""
        if t_s is None:
            yield
            return
        prev, self._action_s = self._action_s, float(t_s)
        try:
            yield
        finally:
            self._action_s = prev

    def _now_or_action_s(self) -> float:
        return self._action_s if self._action_s is not None else self._now_s

    def now_or_action_s(self) -> float:
        """The time the command being applied acts at: its own (a timed or patch line),
        else the current block's."""
        return self._now_or_action_s()

    def committed_beat(self) -> float:
        return self.tempo.s_to_beat(self._committed_s)

    def _quantise(self, quantum: str) -> float:
        if quantum not in QUANTA:
            raise CommandError(f"quantum {quantum!r}: use one of {', '.join(QUANTA)}")
        beat = self.committed_beat()
        if quantum == "beat":
            return float(math.ceil(beat - _EPS_BEATS))
        if quantum == "bar":
            return float(math.ceil((beat - _EPS_BEATS) / BEATS_PER_BAR) * BEATS_PER_BAR)
        return beat

    def is_playing(self) -> bool:
        """True while a sequence, event, timed command or patch swap is still to come."""
        return self._swap is not None or any(s.next_beat() is not None for s in self._streams)

    def _start_beat(self, quantum: str) -> float:
        """The beat something new starts: quantised on a running clock (one that played
        within the last KEEP_GRID_BARS bars too: stop a loop, start another, and it lands on
        the same grid); on a silent one the clock restarts so that beat 0 is at the horizon
        (plus the pre-roll)."""
        bar_s = BEATS_PER_BAR * 60.0 / self.tempo.last_bpm
        recent = self._committed_s - self._last_busy_s <= KEEP_GRID_BARS * bar_s
        if not self.is_playing() and not recent:
            self._streams = []
            self._sequences = {}
            self.tempo.reset(self.tempo.last_bpm, self._committed_s + self.preroll_s)
            return 0.0
        return self._quantise(quantum)

    # -- the tick

    def tick(self, now_s: float) -> None:
        """Advance to engine time ``now_s``: hand every note starting before ``now_s +
        lookahead_s`` to the sink, run timed commands and swaps, and request renders ahead.
        A clock that steps back is held at its latest time."""
        now_s = max(now_s, self._now_s)
        self._now_s = now_s
        self._flush_immediate(now_s)
        if self._held_notes:
            self._follow_point(now_s)
        horizon_s = now_s + self.lookahead_s
        while True:
            target_beat = self.tempo.s_to_beat(horizon_s)
            best: Stream | None = None
            best_key: tuple[float, int, int] | None = None
            for s in (*self._streams, *([self._swap] if self._swap else [])):
                b = s.next_beat()
                if b is None:
                    continue
                key = (b, s.prio, s.order)
                if best_key is None or key < best_key:
                    best, best_key = s, key
            if best is None or best_key is None or best_key[0] >= target_beat:
                break
            item_s = self.tempo.beat_to_s(best_key[0])
            self._committed_s = max(self._committed_s, item_s)
            self._action_s = max(item_s, now_s)
            try:
                best.fire(self)
            except Exception as exc:  # the clock never dies on one bad event
                self._count_error(f"{type(exc).__name__}: {exc}")
            finally:
                self._action_s = None
        self._committed_s = max(self._committed_s, horizon_s)
        if self.is_playing():
            self._last_busy_s = self._committed_s
        self._streams = [s for s in self._streams if s.next_beat() is not None]
        self._sequences = {n: s for n, s in self._sequences.items() if s in self._streams}
        self._request_ahead()
        self.requests.prune(now_s)

    def _count_error(self, text: str) -> None:
        self.counters.errors += 1
        self.counters.recent_errors = (self.counters.recent_errors + [text])[-5:]
        log.warning("scheduler: %s", text)

    def _flush_immediate(self, now_s: float) -> None:
        pending, self._immediate = self._immediate, []
        for pitches, velocity, length_beats, point, mode in pending:
            try:
                if velocity is None:
                    self._held_notes.pop(pitches[0], None)
                    self.sink.release(pitches[0], now_s)
                else:
                    self._play_at(now_s, pitches, velocity, length_beats, point, self.seed,
                                  held=True, mode=mode)
            except Exception as exc:
                self._count_error(f"{type(exc).__name__}: {exc}")

    def _play_note(self, note: Note, seed: int, tag: Hashable | None = None) -> None:
        start_s = self.tempo.beat_to_s(note.beat)
        self._play_at(start_s, note.pitches, note.velocity, note.length_beats, note.xy, seed,
                      beat=note.beat, tag=tag)

    def _play_at(self, start_s: float, pitches: tuple[int, ...], velocity: float,
                 length_beats: float | None, xy: XY | None, seed: int,
                 beat: float | None = None, held: bool = False,
                 tag: Hashable | None = None, mode: str | None = None) -> None:
        """Hand notes to the sink; `held` ones (played now, not by a sequence) are tagged
        with their pitch, so that `release` can end them; a sequence's with ("seq", name),
        so that `stop` can drop those not started yet. mode "hold" / "follow": a held note
        (until `release`; "follow": its timbre follows the point while it sounds)."""
        own_point = xy is not None
        if xy is None:
            xy = self.point_at(start_s)
        length_s = None
        if length_beats is not None:
            b0 = self.tempo.s_to_beat(start_s) if beat is None else beat
            length_s = self.tempo.beat_to_s(b0 + length_beats) - start_s
        for pitch in pitches:
            self._recent_pitches.pop(pitch, None)
            self._recent_pitches[pitch] = None
            if len(self._recent_pitches) > _RECENT_PITCHES:
                del self._recent_pitches[next(iter(self._recent_pitches))]
            holding = held and mode in ("hold", "follow") and length_s is None
            # `release P` ends held notes and notes of a length; a one-shot plays the model's
            # whole note (a key-up of P elsewhere does not cut it).
            note_tag = pitch if held and (holding or length_s) else tag
            stream = self._stream_for(xy, pitch, seed)
            if stream is not None and self.held is not None:
                # Not rendered yet, but its head is here: it starts from that (render/stream.py).
                self.held.play_stream(stream, start_s, velocity, 0.0, note_tag,
                                      hold=holding or bool(length_s),
                                      release_at_s=None if holding or not length_s
                                      else start_s + length_s)
                if holding:
                    self._hold(pitch, self.source.key(xy[0], xy[1], pitch, seed), xy,
                               str(mode), own_point)
                self.counters.held += int(holding or bool(length_s))
                self.counters.streamed += 1
                self.counters.notes += 1
                continue
            late_before = self.counters.late
            audio = self.fallbacks.audio_for(xy, pitch, seed, self._request_late)
            if audio is None:
                continue
            exact = self.counters.late == late_before  # not a fallback's stand-in
            if self.held is not None and (holding or (self.held_lengths and length_s)):
                self.held.play_held(audio, start_s, velocity, 0.0, note_tag, pitch,
                                    release_at_s=None if holding or length_s is None
                                    else start_s + length_s)
                if holding:
                    rp = rendered_pitch(pitch, self.pitch_range)
                    self._hold(pitch, self.source.key(xy[0], xy[1], rp, seed) if exact
                               else None, xy, str(mode), own_point)
                self.counters.held += 1
            else:
                self.sink.play(audio, start_s, velocity, 0.0, length_s, tag=note_tag)
            self.counters.notes += 1

    def _stream_for(self, xy: XY, pitch: int, seed: int) -> Any:
        """The note's NoteStream when it is not cached but its head has come (a live source
        only), else None."""
        stream_of = getattr(self.source, "stream", None)
        if stream_of is None or rendered_pitch(pitch, self.pitch_range) != pitch:
            return None
        return stream_of(self.source.key(xy[0], xy[1], pitch, seed))

    def _run_command(self, command: PatchCommand) -> None:
        if self.command_runner is None:
            self._count_error(f"no command runner for patch command {command.line!r}")
            return
        self.command_runner(command)

    # -- render requests

    @property
    def pitch_range(self) -> tuple[int, int] | None:
        """The model's rendered range (a pitch beyond it plays its edge re-pitched)."""
        return self.fallbacks.pitch_range

    def _request(self, key: Hashable, deadline_s: float, current_point: bool = False,
                 semitones: int = 0) -> None:
        """Ask for ``key`` by ``deadline_s``; ``semitones`` != 0: for a pitch that far beyond
        the model's range (``key`` is its edge note), re-pitched ahead off the audio thread."""
        self.requests.request(key, deadline_s, current_point)
        if semitones:
            self.fallbacks.want(key, semitones)

    def _request_late(self, key: Hashable) -> None:
        # A note due now and not rendered: asked for now, so that the next time it is there.
        self._request(key, self._now_or_action_s())

    def _request_note(self, note: Note, seed: int) -> None:
        start_s = self.tempo.beat_to_s(note.beat)
        xy = note.xy if note.xy is not None else self.point_at(start_s)
        for pitch in note.pitches:
            rp = rendered_pitch(pitch, self.pitch_range)
            key = self.source.key(xy[0], xy[1], rp, seed)
            self._request(key, start_s - self.lookahead_s, current_point=note.xy is None,
                          semitones=pitch - rp)

    def _request_ahead(self) -> None:
        until_beat = self.committed_beat() + self.request_ahead_beats
        # The playing patch ends at a pending swap: do not render what will never play.
        swap_beat = self._swap.origin_beat if self._swap is not None else math.inf
        for s in (*self._streams, *([self._swap] if self._swap else [])):
            until = min(until_beat, swap_beat) if s.owner == "patch" else until_beat
            for note in s.peek_notes(until):
                self._request_note(note, s.seed)
        self.requests.cancel_superseded(self.current_point)

    def _rewind_current_point_requests(self) -> None:
        for s in (*self._streams, *(self._swap.streams if self._swap else [])):
            if s.uses_current_point:
                s.rewind_requests()

    # -- the performer's point

    def point_at(self, t_s: float) -> XY:
        """The performer's current point at engine time ``t_s``."""
        seg = self._points[0]
        for p in self._points:
            if p.t0_s <= t_s:
                seg = p
            else:
                break
        return seg.at(t_s)

    def recent_pitches(self) -> list[int]:
        """The last pitches played, most recent last."""
        return list(self._recent_pitches)

    def current_point(self) -> XY:
        return self.point_at(self._now_s)

    def _add_point_segment(self, seg: PointSegment) -> None:
        # Keep the segment in force now and those after it; later edits replace the future.
        self.requests.point_moved()  # what was asked for at the point is judged again
        keep = [p for p in self._points if p.t0_s < seg.t0_s]
        current = [p for p in keep if p.t0_s <= self._now_s]
        self._points = current[-1:] + [p for p in keep if p.t0_s > self._now_s] + [seg]
        self._rewind_current_point_requests()

    def set_point(self, x: float, y: float, request_recent: bool = True) -> None:
        """Jump the current point (at the time of the command firing, else now) and ask for
        the recently played pitches there (unless the caller pre-renders the point itself)."""
        xy = _check_xy(x, y)
        t_s = self._now_or_action_s()
        self._add_point_segment(PointSegment(t_s, t_s, xy, xy))
        for pitch in self._recent_pitches if request_recent else ():
            rp = rendered_pitch(pitch, self.pitch_range)
            key = self.source.key(xy[0], xy[1], rp, self.seed)
            self._request(key, t_s, current_point=True, semitones=pitch - rp)
        self._request_ahead()

    def glide(self, x: float, y: float, beats: float) -> None:
        """Move the current point to (x, y) over ``beats`` (linear in time), from where it is
        now; renders along the path are requested at once for the recent pitches."""
        end = _check_xy(x, y)
        if beats <= 0:
            self.set_point(*end)
            return
        t0_s = self._now_or_action_s()
        b0 = self.tempo.s_to_beat(t0_s)
        t1_s = self.tempo.beat_to_s(b0 + beats)
        start = self.point_at(t0_s)
        self._add_point_segment(PointSegment(t0_s, t1_s, start, end))
        n = max(1, int(math.ceil(beats / _GLIDE_SAMPLE_BEATS)))
        for i in range(n + 1):
            t_s = self.tempo.beat_to_s(b0 + min(beats, i * _GLIDE_SAMPLE_BEATS))
            xy = self.point_at(t_s)
            for pitch in self._recent_pitches:
                rp = rendered_pitch(pitch, self.pitch_range)
                key = self.source.key(xy[0], xy[1], rp, self.seed)
                self._request(key, t_s - self.lookahead_s, semitones=pitch - rp)
        self._request_ahead()

    # -- tempo and look-ahead

    def set_tempo(self, bpm: float, quantum: str = "beat") -> float:
        """Change tempo at the next beat (or bar, or the horizon for "now"), keeping every
        earlier beat where it was. Returns the beat the change takes effect."""
        _check_tempo(bpm)
        beat = self.tempo.set(self._quantise(quantum), bpm)  # (pre-roll: from beat 0)
        self._request_ahead()
        return beat

    def set_lookahead(self, lookahead_s: float) -> None:
        """Change the look-ahead live; what is already scheduled stays."""
        _check_lookahead(lookahead_s)
        self.lookahead_s = float(lookahead_s)

    # -- patches and sequences

    def load_patch(self, patch: Patch, quantum: str = "bar") -> float:
        """Play ``patch`` from the next bar (replacing the playing one there), or from beat 0
        of a fresh clock when nothing plays. Returns the beat it starts. A second load before
        the swap replaces the pending one."""
        if quantum not in QUANTA:
            raise CommandError(f"quantum {quantum!r}: use one of {', '.join(QUANTA)}")
        self._cancel_swap()
        beat = self._start_beat(quantum)
        if beat == 0.0 and not self.is_playing():
            # A cancelled swap restores the tempo, unless it was changed since.
            self._swap_restore_bpm = (self.tempo.last_bpm, float(patch.tempo_bpm))
            self.tempo.reset(patch.tempo_bpm, self.tempo.origin_s)
        else:
            self.tempo.set(beat, patch.tempo_bpm)
            self._swap_tempo = (beat, patch.tempo_bpm)
        streams: list[Stream] = []
        for seq in patch.sequences.values():
            streams.append(SequenceStream(self._next_order(), beat, patch.seed, seq, "patch"))
        if patch.events:
            streams.append(EventStream(self._next_order(), beat, patch.seed, patch.events))
        # A patch that plays now is installed now, and its leading load-time settings (`at
        # glass`, `mark`, `tempo`...) apply now: the performer's next line comes after them,
        # as lines apply in order; what sounds waits for beat 0 (the pre-roll).
        now = beat == 0.0
        commands = patch.commands
        n = 0
        while now and n < len(commands) and commands[n].at_beats is None \
                and commands[n].parsed().name in HUSH_KEEPS:
            n += 1
        if commands[n:]:
            streams.append(CommandStream(self._next_order(), beat, patch.seed, commands[n:]))
        swap = SwapStream(self._next_order(), beat, patch, streams)
        if now:
            swap.done = True
            self._install_patch(swap)  # (no swap pending: nothing to cancel)
            for c in commands[:n]:
                self._run_command(c)
        else:
            self._swap = swap
        self._request_ahead()
        return beat

    def _cancel_swap(self) -> None:
        if self._swap is not None:
            if self._swap_tempo is not None:
                self.tempo.remove(*self._swap_tempo)
            if self._swap_restore_bpm is not None and \
                    self.tempo.changes == [(0.0, self._swap_restore_bpm[1])]:
                self.tempo.reset(self._swap_restore_bpm[0], self.tempo.origin_s)
            self._swap = None
            self._swap_tempo = None
            self._swap_restore_bpm = None

    def _install_patch(self, swap: SwapStream) -> None:
        self._swap = None
        self._swap_tempo = None
        self._swap_restore_bpm = None
        self._streams = [s for s in self._streams if s.owner != "patch"]
        self._sequences = {n: s for n, s in self._sequences.items() if s.owner != "patch"}
        self.patch = swap.patch
        self.seed = swap.patch.seed
        for s in swap.streams:
            if isinstance(s, SequenceStream):
                old = self._sequences.get(s.seq.name)
                if old is not None:
                    old.end_beat = min(old.end_beat, s.origin_beat)
                self._sequences[s.seq.name] = s
            self._streams.append(s)

    def start_sequence(self, name: str, seq: Sequence, quantum: str = "bar") -> float:
        """Start ``seq`` as ``name`` at the next bar (on a fresh clock: beat 0 now); a
        sequence of that name already running stops there. Returns the start beat."""
        beat = self._start_beat(quantum)
        old = self._sequences.get(name)
        if old is not None:
            old.end_beat = min(old.end_beat, beat)
        stream = SequenceStream(self._next_order(), beat, self.seed, seq, "live")
        self._streams.append(stream)
        self._sequences[name] = stream
        self._request_ahead()
        return beat

    def stop_sequence(self, name: str) -> None:
        """Stop a sequence now: its notes not started yet are dropped, sounding ones ring on;
        one of a pending patch's is taken out of it, so it never starts."""
        stream = self._sequences.pop(name, None)
        swap = self._swap
        queued = [s for s in swap.streams if isinstance(s, SequenceStream)
                  and s.seq.name == name] if swap is not None else []
        if stream is None and not queued:
            running = ", ".join(self.running_sequences()) or "none"
            raise CommandError(f"no sequence {name!r} is running; running: {running}")
        if swap is not None and queued:
            swap.streams = [s for s in swap.streams if s not in queued]
        if stream is not None:
            # Every stream of that name: one being replaced at the next bar plays until then.
            ending = [s for s in self._streams
                      if isinstance(s, SequenceStream) and s.seq.name == name]
            for s in ending:
                s.end_beat = min(s.end_beat, self.committed_beat())
            self._streams = [s for s in self._streams if s not in ending]
            # Its notes inside the look-ahead, handed over but not started, never start.
            self.sink.drop_pending(("seq", name))

    def running_sequences(self, include_pending: bool = True) -> list[str]:
        """Sequences playing or about to (a pending patch's start at its swap)."""
        names = [n for n, s in self._sequences.items() if s.next_beat() is not None]
        if self._swap is not None and include_pending:
            names += [s.seq.name for s in self._swap.streams
                      if isinstance(s, SequenceStream) and s.seq.name not in names]
        return names

    def live_sequences(self) -> list[str]:
        """Running sequences started by `seq` (not a patch's): they outlive a patch swap."""
        return [n for n, s in self._sequences.items()
                if s.owner == "live" and s.next_beat() is not None]

    @property
    def pending_patch(self) -> Patch | None:
        """A loaded patch waiting for its bar (its points and sequences can be used now)."""
        return self._swap.patch if self._swap is not None else None

    def hush(self) -> None:
        """Stop every sequence, event, timed command and glide; notes already handed to the
        sink ring on. A patch loaded but waiting for its bar stays loaded (its points,
        sequences, seed and tempo from that bar) with nothing of it started (`start NAME`
        plays its sequences); of its load-time commands the settings (HUSH_KEEPS) run now."""
        settings: list[PatchCommand] = []

        def keep_settings(commands: tuple[PatchCommand, ...]) -> None:
            for c in commands:
                word = c.parsed().name
                if c.at_beats is not None:
                    continue
                if word == "load":
                    break  # what follows may be the other patch's
                if word in HUSH_KEEPS:
                    settings.append(c)

        if self._swap is not None:
            keep_settings(self._swap.patch.commands)
            self._swap.streams = []
            self._install_patch(self._swap)
        # A patch installed at its load, in its pre-roll: its load-time settings not run yet.
        for st in self._streams:
            if isinstance(st, CommandStream) and st.next_beat() is not None:
                keep_settings(st.commands[st.i:])
        self._streams = []
        self._sequences = {}
        here = self.point_at(self._now_or_action_s())
        t_s = self._now_or_action_s()
        self._add_point_segment(PointSegment(t_s, t_s, here, here))
        for c in settings:  # the installed patch's load-time settings (`at glass`) hold
            self._run_command(c)

    def beats_for_s(self, length_s: float, now_s: float) -> float:
        """`length_s` seconds as beats from where a note played now starts (a patch
        command's exact time, else `now_s`), through the tempo map with its changes to come."""
        t0_s = self._action_s if self._action_s is not None else now_s
        return self.tempo.s_to_beat(t0_s + length_s) - self.tempo.s_to_beat(t0_s)

    def play_now(self, pitches: list[int] | tuple[int, ...], velocity: float = 0.8,
                 length_beats: float | None = None, point: XY | None = None,
                 mode: str | None = None) -> None:
        """Play notes as soon as possible: at the next tick's ``now_s`` (or, from a patch
        command, at that command's exact time). ``point`` None = the current point. mode
        None: a one-shot (or a note of ``length_beats``); "hold": held until ``release``;
        "follow": held, its timbre following the point."""
        if mode not in (None, "hold", "follow"):
            raise CommandError(f"note mode {mode!r}: use hold or follow (or none: a one-shot)")
        if mode is not None and length_beats is not None:
            raise CommandError("a held note has no length: give a length or hold, not both")
        if not pitches:
            raise CommandError("play needs at least one pitch (e.g. play C4 E4)")
        pitches = list(dict.fromkeys(pitches))  # C#4 Db4 is one key: it sounds once
        for p in pitches:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 127:
                raise CommandError(f"pitch {p!r}: use a MIDI number 0..127 or a note name")
        if not 0.0 <= velocity <= 1.0:
            raise CommandError(f"velocity {velocity}: use 0..1")
        if length_beats is not None and length_beats <= 0:
            raise CommandError(f"length {length_beats}: use beats > 0")
        if point is not None:
            point = _check_xy(*point)
        if self._action_s is not None:
            self._play_at(self._action_s, tuple(pitches), velocity, length_beats, point,
                          self.seed, held=True, mode=mode)
        else:
            self._immediate.append((tuple(pitches), velocity, length_beats, point, mode))

    def release(self, pitch: int) -> None:
        """End the notes of ``pitch`` played now (a key let go, `release`), after any played
        before it; sequence notes are not touched."""
        if self._action_s is not None:  # a patch's or a timed command's: at its time
            self._held_notes.pop(int(pitch), None)
            self.sink.release(int(pitch), self._action_s)
        else:
            self._immediate.append(((int(pitch),), None, None, None, None))

    def _hold(self, pitch: int, key: Hashable | None, xy: XY, mode: str,
              own_point: bool) -> None:
        """Record a held note (key None: a fallback stands in until its render comes)."""
        self._held_notes[pitch] = _HeldNote(
            key, xy, mode, own_point,
            follows=mode == "follow" or (self.follow_point and not own_point))

    def set_follow(self, on: bool) -> None:
        """`follow on|off`: the held notes sounding now and those played later follow the
        point (on), or only those played `note P V follow` (off: each stays where it is).
        A note played at its own point (`note_at`) stays there."""
        self.follow_point = bool(on)
        for n in self._held_notes.values():
            if n.mode != "follow" and not n.own_point:
                n.follows = self.follow_point

    def _follow_point(self, now_s: float) -> None:
        """Held notes that follow the point: where the point has moved to another cached
        render of their pitch, they crossfade into it; one not rendered yet is asked for
        (now) and followed when it is there. A held note started on a fallback crossfades
        into its own render (at its point, or the point it follows) when that comes."""
        point = self.point_at(now_s)
        for pitch, n in list(self._held_notes.items()):
            if not n.follows and n.key is not None:
                continue
            xy = point if n.follows else n.xy
            rp = rendered_pitch(pitch, self.pitch_range)
            new = self.source.key(xy[0], xy[1], rp, self.seed)
            if new == n.key:
                continue
            audio = self.source.get(new)
            if audio is None:
                if new not in self._follow_asked:
                    self._follow_asked.add(new)
                    self._request(new, now_s)
                continue
            self._follow_asked.discard(new)
            if rp != pitch:
                audio = self.fallbacks.beyond_range(new, audio, pitch - rp)
            try:
                self.held.follow(pitch, audio, pitch, now_s)
            except Exception as exc:  # one bad note never stops the clock
                self._count_error(f"follow: {type(exc).__name__}: {exc}")
            n.key = new

    def forget_followers(self) -> None:
        """Nothing is held or follows the point any more (panic), and notes played in this
        block but not yet handed to the sink are dropped: `note` then `panic` pasted
        together end in silence, as the same lines at one time in a replay do."""
        self._held_notes = {}
        self._follow_asked = set()
        self._immediate = []

    def held_keys(self) -> list[int]:
        """Pitches held now (a key down, `note P V hold` not yet released)."""
        return sorted(self._held_notes)

    def followers(self) -> list[int]:
        """Pitches of the held notes following the point."""
        return sorted(p for p, n in self._held_notes.items() if n.follows)

    # -- read-only view

    def status(self) -> dict[str, Any]:
        beat = self.tempo.s_to_beat(self._now_s)
        c = self.counters
        return {
            "tempo_bpm": self.tempo.bpm_at(beat),
            "beat": beat,
            "bar": int(math.floor(beat / BEATS_PER_BAR)) + 1,
            "sequences": self.running_sequences(),
            "point": self.current_point(),
            "patch": self.patch.path if self.patch is not None else None,
            "pending_patch": self._swap.patch.path if self._swap is not None else None,
            "lookahead_s": self.lookahead_s,
            "sample_rate": self.sample_rate,
            "notes": c.notes,
            "late": c.late,
            "fallbacks": c.fallback_pitch + c.fallback_point,
            "skipped": c.skipped,
            "held": c.held,
            "streamed": c.streamed,
            "requests": c.requests,
            "errors": c.errors,
        }


def _check_tempo(bpm: float) -> None:
    if isinstance(bpm, bool) or not isinstance(bpm, int | float) or not (
        TEMPO_MIN_BPM <= bpm <= TEMPO_MAX_BPM
    ):
        raise CommandError(f"tempo {bpm}: use {TEMPO_MIN_BPM:g}..{TEMPO_MAX_BPM:g} bpm")


def _check_lookahead(lookahead_s: float) -> None:
    if not LOOKAHEAD_MIN_S <= lookahead_s <= LOOKAHEAD_MAX_S:
        raise CommandError(
            f"lookahead {lookahead_s} s: use {LOOKAHEAD_MIN_S:g}..{LOOKAHEAD_MAX_S:g} s"
        )


def _check_xy(x: float, y: float) -> XY:
    if not (abs(x) <= XY_LIMIT and abs(y) <= XY_LIMIT):
        raise CommandError(f"point ({x}, {y}): x and y lie in [-{XY_LIMIT}, {XY_LIMIT}]")
    return (float(x), float(y))
