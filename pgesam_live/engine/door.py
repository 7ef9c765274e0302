"""The engine: the one door into the performance.

Every change (from the REPL, OSC, MIDI, a patch or a journal) enters through `Engine.submit`,
which parses and validates at once (the reply says what is wrong) and queues the command. The
queue is drained by the audio block hook, so commands are applied between blocks, in order,
at a known engine time: that time is journalled, and replaying a journal applies each command
before the same block. The scheduler then ticks in the same hook and the voice pool copies the
notes due in the block (sample-accurate).

Thread model: front ends call `submit` from their threads; the hook runs in the audio thread
(our real-time thread for record/none, pyo's for portaudio/jack, the caller's for offline).
One lock guards the engine state; nothing slow (no render, no file I/O but the journal line)
happens under it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pgesam_live import faults
from pgesam_live.engine.exports import Exports
from pgesam_live.engine.handlers import HANDLERS
from pgesam_live.engine.held import HeldNotes
from pgesam_live.engine.names import NameChecks
from pgesam_live.engine.repitch import RepitchPreparer
from pgesam_live.engine.scheduler import Scheduler
from pgesam_live.engine.state import StateViews
from pgesam_live.errors import CommandError, PgesamError
from pgesam_live.notes import rendered_pitch
from pgesam_live.patches.files import find_patch
from pgesam_live.patches.model import Patch, PatchCommand, make_sequence
from pgesam_live.patches.schema import PatchValidationError, load_patch, load_target_errors
from pgesam_live.render.cache import AudioThreadSource, RenderCache
from pgesam_live.render.keys import NoteKey
from pgesam_live.vocab.commands import (
    COMMANDS,
    DEFAULT_STEP_BEATS,
    Command,
    PitchRangeError,
    parse_line,
    validate,
)
from pgesam_live.vocab.mapview import region_of
from pgesam_live.vocab.sources import source
from pgesam_live.vocab.views import Reply

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], None]
BANK_STAGGER_S = 0.05  # deadline spacing of a new point's pitch bank: nearest pitches first
# A point must rest this long before its pitch bank is asked for: a pad or MIDI controller
# streaming moves at 60 Hz must not flood the renderer with banks nobody will play.
BANK_SETTLE_S = 0.12
WAIT_FOR_RENDER_S = 1.5  # see Engine.wait_for_render_s
NOTE_WORDS = ("play", "note", "note_at")
TIME_EPS_S = 1e-5  # well under a sample at any rate; larger than the journal's rounding


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know of the model (the worker process owns the model)."""

    model_id: str
    codec: str
    sample_rate: int
    pitch_range: tuple[int, int]
    training_points: list[dict[str, Any]] = field(default_factory=list)
    named_points: dict[str, tuple[float, float]] = field(default_factory=dict)


class Renderer(Protocol):
    """The worker client (live) or an in-process renderer (offline). A speculative request
    (a point's pitch bank) may be dropped when newer ones supersede it."""

    def request(self, key: NoteKey, deadline_s: float, speculative: bool = False,
                cancellable: bool = False, stream: bool = False) -> bool: ...

    def cancel(self, keys: list[NoteKey]) -> None: ...

    @property
    def pending(self) -> int: ...


class Sink(Protocol):
    def play(self, samples: np.ndarray, start_s: float | None = None, velocity: float = 1.0,
             pan: float = 0.0, length_s: float | None = None,
             tag: Hashable | None = None) -> int: ...

    def release(self, tag: Hashable, at_s: float | None = None) -> None: ...

    def drop_pending(self, tag: Hashable) -> int: ...

    def release_all(self) -> int: ...

    def panic(self) -> None: ...

    def in_use(self) -> int: ...

    def stats(self) -> dict[str, int]: ...


class Clock(Protocol):
    def time_s(self) -> float: ...

    @property
    def block_s(self) -> float: ...


class _Requester:
    """Scheduler's RenderRequester -> the renderer, with cache keys."""

    def __init__(self, cache: RenderCache, renderer: Renderer) -> None:
        self.cache = cache
        self.renderer = renderer

    def request(self, key: NoteKey, deadline_s: float) -> None:
        self.renderer.request(key, deadline_s, cancellable=True)

    def cancel(self, keys: list[Any]) -> None:
        """Renders no longer wanted (the point moved on; offline renderers ignore it)."""
        self.renderer.cancel(keys)


STEAL_REPORT_S = 2.0  # voice steals are told at most this often


class _ResamplingSink:
    """Voice pool at another rate than the model's: each note resampled once (memoised), in
    the thread that cached it (`warm`: the renderer's result thread, the cache's loader), so
    the audio hook only looks it up; a note made in the hook (a re-pitched fallback) is
    resampled there."""

    MEMO_MAX = 512

    def __init__(self, pool: Sink, from_sr: int, to_sr: int) -> None:
        from pgesam_live.render.dsp import resample  # noqa: PLC0415

        self.pool, self.from_sr, self.to_sr, self._resample = pool, from_sr, to_sr, resample
        self._memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self.resampled_in_hook = 0

    def _remember(self, samples: np.ndarray, out: np.ndarray) -> None:
        with self._lock:
            if len(self._memo) > self.MEMO_MAX:
                self._memo.clear()
            self._memo[id(samples)] = (samples, out)

    def warm(self, samples: np.ndarray) -> None:
        """Resample a cached note ahead of its play (any thread but the audio one)."""
        with self._lock:
            hit = self._memo.get(id(samples))
        if hit is None or hit[0] is not samples:
            self._remember(samples, self._resample(samples, self.from_sr, self.to_sr))

    def resample_now(self, samples: np.ndarray) -> np.ndarray:
        """Samples at the output rate, not remembered (a streamed note's head and joined
        note: played once from a NoteStream)."""
        return self._resample(samples, self.from_sr, self.to_sr)

    def lookup(self, samples: np.ndarray) -> np.ndarray:
        """The note at the output rate (resampled here when it was not warmed)."""
        with self._lock:
            hit = self._memo.get(id(samples))
        if hit is None or hit[0] is not samples:
            self.resampled_in_hook += 1
            hit = (samples, self._resample(samples, self.from_sr, self.to_sr))
            self._remember(samples, hit[1])
        return hit[1]

    def play(self, samples: np.ndarray, start_s: float, velocity: float, pan: float,
             length_s: float | None, tag: Hashable | None = None) -> None:
        self.pool.play(self.lookup(samples), start_s, velocity, pan, length_s, tag)

    def release(self, tag: Hashable, at_s: float | None = None) -> None:
        self.pool.release(tag, at_s)

    def drop_pending(self, tag: Hashable) -> int:
        return self.pool.drop_pending(tag)


class Engine(NameChecks, StateViews, Exports):
    """The one door. See the module docstring."""

    def __init__(self, *, clock: Clock, voices: Sink, cache: RenderCache, renderer: Renderer,
                 model: ModelInfo, tempo_bpm: float = 120.0, lookahead_s: float = 0.2,
                 seed: int = 0, patch_dir: str | Path = "patches", out_sample_rate: int | None
                 = None, source: Any = None) -> None:
        self.clock = clock
        self.voices = voices
        self.cache = cache
        self.exports_started = []  # engine/exports.py
        self.renderer = renderer
        self.model = model
        self.patch_dir = Path(patch_dir)
        self.model_points = [(p["x"], p["y"], p.get("family", "")) for p in
                             model.training_points]
        self.map_region = region_of(self.model_points)  # what `xy U V` maps onto: the map's
        sink: Any = voices
        self._resampler: _ResamplingSink | None = None
        if out_sample_rate and out_sample_rate != model.sample_rate:
            sink = self._resampler = _ResamplingSink(voices, model.sample_rate,
                                                     out_sample_rate)
        # Live, the scheduler reads notes from memory only (a spilled one is read by the
        # cache's loader thread); offline, a source that renders on demand is given.
        self.scheduler = Scheduler(sink, source if source is not None else AudioThreadSource(cache),
                                   _Requester(cache, renderer), tempo_bpm=tempo_bpm,
                                   lookahead_s=lookahead_s, sample_rate=model.sample_rate,
                                   command_runner=self._run_patch_line, seed=seed,
                                   pitch_range=model.pitch_range)
        # Held notes (note P V hold, a length's note): loops in the pool, at its rate.
        self.held = HeldNotes(voices, out_sample_rate or model.sample_rate,
                              self._resampler.lookup if self._resampler is not None else None)
        self.scheduler.held = self.held
        # A streamed note's head reaches the voices at their rate (render/stream.py).
        cache.stream_rate = out_sample_rate or model.sample_rate
        if self._resampler is not None:
            cache.stream_prepare = self._resampler.resample_now
        self.scheduler.held_lengths = True
        self._repitcher: RepitchPreparer | None = None
        if source is None:
            # Live: a note beyond the model's range is re-pitched off the audio thread (and
            # resampled there too), the hook only looks it up.
            self._repitcher = self.scheduler.fallbacks.attach_preparer(
                cache.peek, self._resampler.warm if self._resampler is not None else None)
            self._repitcher.start()  # here, not lazily in the audio hook
        if self._resampler is not None or self._repitcher is not None:
            cache.on_loaded = self._warm_note  # a spilled note read back: prepared there
        self._lock = threading.RLock()
        self._applied = threading.Condition(self._lock)  # notified after every block
        self._block_thread: int | None = None  # the thread running on_block
        self._queue: list[tuple[float, int, Command, str, Any]] = []
        self._tags: dict[int, Hashable] = {}  # queue order -> the submitter's tag
        # queue order -> the command's journal text, made in the submitter's thread (not the
        # audio hook's)
        self._lines: dict[int, str] = {}
        self._order = itertools.count()
        self._listeners: list[Listener] = []
        self._stats: dict[str, Callable[[], int]] = {}
        self.bookmarks: dict[str, tuple[float, float]] = {}
        self.point_name: str | None = None  # (name_point, current_point_name)
        self.point_name_xy: tuple[float, float] | None = None
        self.gain = 1.0  # master gain (`gain`)
        self._steals_told = (0, -math.inf)  # voice steals reported so far, and when
        self.last_pitch = (model.pitch_range[0] + model.pitch_range[1]) // 2
        self.applied = 0
        self.rejected = 0
        self.apply_errors = 0
        self.prerender_banks = True  # offline bounces render only what they play
        self._bank_due: tuple[float, float, float] | None = None  # (x, y, engine time)
        # An immediate note not yet rendered waits this long for it (then falls back); 0 in
        # offline bounces, which render on demand.
        self.wait_for_render_s = WAIT_FOR_RENDER_S
        # Immediate notes waiting for their renders, with the engine time each began to wait.
        self._held: list[tuple[tuple[float, int, Command, str, Any], float]] = []
        self._time_s = 0.0

    # -- listeners -------------------------------------------------------------------------
    def add_stat(self, name: str, fn: Callable[[], int]) -> None:
        """A front end's counter shown in the state (`status`, /pgesam/state), e.g. the OSC
        bundles played now because their time tag lay too far ahead (clock skew)."""
        self._stats = {**self._stats, name: fn}

    def add_listener(self, fn: Listener) -> None:
        self._listeners = [*self._listeners, fn]

    def remove_listener(self, fn: Listener) -> None:
        self._listeners = [f for f in self._listeners if f is not fn]

    def emit(self, event: dict[str, Any]) -> None:
        for fn in self._listeners:
            try:
                fn(event)
            except Exception as exc:  # a broken listener never stops the engine
                faults.record(f"engine: listener {getattr(fn, '__qualname__', fn)!s}", exc)

    def message(self, text: str) -> None:
        """An engine message for the performer (the REPL prints it above the prompt)."""
        self.emit({"kind": "message", "text": text})

    def note_ready(self, key: NoteKey) -> None:
        """Called by the renderer when a note is cached (in its result thread)."""
        self._warm_note(key)
        self.emit({"kind": "ready", "x": key.xq, "y": key.yq, "pitch": key.pitch})

    def _warm_note(self, key: NoteKey) -> None:
        """At another output rate: resample a newly cached note here, not in the hook; and
        have the notes beyond the model's range that play it re-pitched (its own thread)."""
        if self._resampler is not None:
            audio = self.cache.peek(key)
            if audio is not None:
                self._resampler.warm(audio)
        if self._repitcher is not None:
            self._repitcher.ready(key)
        if self.scheduler.counters.held:
            # Held notes are being played (a MIDI keyboard, the web page's keys): find this
            # note's loop here, not in the audio hook when it is struck.
            audio = self.cache.peek(key)
            if audio is not None:
                try:
                    self.held.warm(audio, key.pitch)
                except Exception as exc:  # a note that cannot loop is analysed (and
                    faults.record("engine: a held note's loop", exc)  # fails) when played

    def close(self) -> None:
        """Stop the engine's own thread (the re-pitch preparer); idempotent."""
        if self._repitcher is not None:
            self._repitcher.close()

    # -- the door ---------------------------------------------------------------------------
    def submit(self, cmd: Command | str, src: str = "repl", at_s: float | None = None,
               tag: Hashable | None = None) -> Reply:
        """Parse, validate and queue one command (thread-safe; never raises for bad input).

        at_s: engine time to apply it (None = before the next block). tag: the front end's
        own name for this submission, copied into the "command" or "rejected" event its
        application emits (OSC finds the sender by it)."""
        try:
            command = parse_line(cmd) if isinstance(cmd, str) else validate(cmd)
            if not command.journal:
                return self._info(command)
            # Reading a patch file happens here, outside the lock the audio hook takes.
            # A timed load (a replay, a bundle) meets names that lines before it will make:
            # its commands' names are checked when they run.
            prepared = self._prepare(command, src, check_names=at_s is None)
            if command.name == "load" and isinstance(prepared, Patch):
                # Journalled as found, not as typed: portable to another working directory.
                command = Command("load", {"patch": self._patch_ref(prepared.path)})
            line = command.to_line()
            with self._lock:
                # A timed command is checked against the state it will meet when applied;
                # an immediate one is checked now (against the state the immediate commands
                # queued before it will leave), so the reply can say what is wrong.
                if at_s is None:
                    self._check_state(command, prepared)
                    if command.name in NOTE_WORDS and self.wait_for_render_s > 0:
                        # Asked for here, not in the next block: a note never rendered
                        # starts streaming (render/stream.py) a block sooner.
                        self._missing_renders(command, self._time_s)
                when = -math.inf if at_s is None else float(at_s)
                order = next(self._order)
                if tag is not None:
                    self._tags[order] = tag
                self._lines[order] = line
                heapq.heappush(self._queue, (when, order, command, src, prepared))
            return Reply(True, line)
        except PitchRangeError as e:
            self.rejected += 1
            return Reply(False, str(e.with_range(self.model.pitch_range)))
        except PgesamError as e:
            self.rejected += 1
            return Reply(False, str(e))
        except Exception as e:  # an internal error is one line, never a crash
            self.rejected += 1
            log.exception("submit failed for %r", cmd)
            return Reply(False, f"internal error: {type(e).__name__}: {e}")

    def time_s(self) -> float:
        return self.clock.time_s()

    def busy(self) -> bool:
        """Anything still to play: commands queued, sequences, events, a pending patch."""
        with self._lock:
            return bool(self._queue) or bool(self._held) or self.scheduler.is_playing()

    def on_block(self, t_s: float) -> None:
        """The audio hook: apply the commands due in this block, then tick the clock."""
        # Journal times are rounded to 1 us: a command belongs to the block its time falls in,
        # give or take a fraction of a sample.
        end_s = t_s + self.clock.block_s - TIME_EPS_S
        with self._lock:
            self._block_thread = threading.get_ident()
            self._time_s = t_s
            self._release_or_keep_held(t_s)
            while self._queue and self._queue[0][0] < end_s:
                entry = heapq.heappop(self._queue)
                if self._should_hold(entry, t_s):
                    self._held.append((entry, t_s))
                    continue
                # A timed command acts at its own time within this block (to the sample).
                at_s = None if entry[0] == -math.inf else max(entry[0], t_s)
                self._apply(entry[2], entry[3], entry[4], t_s, at_s,
                            tag=self._tags.pop(entry[1], None),
                            line=self._lines.pop(entry[1], None))
            if self._bank_due is not None and t_s >= self._bank_due[2]:
                x, y, _ = self._bank_due
                self._bank_due = None
                self._prerender_bank(x, y, None, None, deadline0_s=t_s, speculative=True)
            self.scheduler.tick(t_s)
            self._applied.notify_all()
        self._tell_steals(t_s)

    def _tell_steals(self, t_s: float) -> None:
        """Voices stolen since the last report, said at most every STEAL_REPORT_S."""
        stolen = getattr(self.voices, "stolen", 0)
        told, when = self._steals_told
        if isinstance(stolen, int) and stolen > told and t_s - when >= STEAL_REPORT_S:
            self._steals_told = (stolen, t_s)
            n = stolen - told
            self.message(f"voices: {n} note{'s' if n != 1 else ''} stolen (every voice was "
                         f"sounding; {stolen} in all): shorter notes (`len`, a sequence's "
                         "`gate`) or fewer at once")

    # An immediate note whose render is not cached yet waits for it (up to
    # `wait_for_render_s`; a streamed note only for its head, some 15 ms) instead of falling
    # back, but only while what the performer asked for after it is notes too (a chord, a
    # MIDI burst: each waits for its own render): anything else typed or sent after it
    # releases it at once (with the usual fallbacks), so a burst of commands never queues
    # behind a render; hush and panic drop it. It is journalled when it plays, so a replay
    # plays it then too.
    def _should_hold(self, entry: tuple[float, int, Command, str, Any], t_s: float) -> bool:
        when, _, c, _, _ = entry
        if when != -math.inf or c.name not in NOTE_WORDS or self.wait_for_render_s <= 0:
            return False
        if self._others_behind():
            return False  # more immediate commands behind it, not all notes
        return bool(self._missing_renders(c, t_s))

    def _others_behind(self) -> bool:
        """Immediate commands queued that are not notes."""
        return any(e[0] == -math.inf and e[2].name not in NOTE_WORDS for e in self._queue)

    def _release_or_keep_held(self, t_s: float) -> None:
        if not self._held:
            return
        behind = [e[2].name for e in self._queue if e[0] == -math.inf]
        if any(n in ("hush", "panic") for n in behind):
            for entry, _ in self._held:  # dropped: silenced before they sounded
                self._tags.pop(entry[1], None)
                self._lines.pop(entry[1], None)
            self._held = []
            return
        others = self._others_behind()
        keep = []
        for entry, since_s in self._held:
            waited = t_s - since_s >= self.wait_for_render_s
            if others or waited or not self._missing_renders(entry[2], t_s):
                self._apply(entry[2], entry[3], entry[4], t_s,
                            tag=self._tags.pop(entry[1], None),
                            line=self._lines.pop(entry[1], None))
            else:
                keep.append((entry, since_s))
        self._held = keep

    def _missing_renders(self, c: Command, t_s: float) -> list[NoteKey]:
        """The notes of a play/note/note_at command not in the cache (and asks for them)."""
        a = c.args
        x, y = (a["x"], a["y"]) if c.name == "note_at" else self.scheduler.point_at(t_s)
        pitches = a.get("pitches") or [a["pitch"]]
        keys = (self.cache.key(x, y, rendered_pitch(p, self.model.pitch_range),
                               self.scheduler.seed) for p in pitches)
        # (on disk: loaded; streaming in: its head plays while the rest renders)
        missing = [k for k in keys if not self.cache.in_memory(k) and self.cache.stream(k) is None]
        for k in missing:
            self.renderer.request(k, t_s, stream=True)
        return missing

    def _apply(self, command: Command, src: str, prepared: Any, t_s: float,
               at_s: float | None = None, tag: Hashable | None = None,
               line: str | None = None) -> None:
        """Apply in the block at `t_s`; a timed command at `at_s` (in this block), where it
        is also journalled, so a replay acts there too. ``line``: its journal text, made
        when it was submitted (not here, in the audio hook)."""
        if line is None:
            line = command.to_line()
        try:
            with self.scheduler.acting_at(at_s):
                HANDLERS[command.name](self, command.args, prepared)
        except Exception as e:  # per event: log, count, tell, carry on
            self.apply_errors += 1
            self.message(f"{line}: {e}")
            # For the front end that sent it (an OSC bundle's sender) and a replay's log.
            self.emit({"kind": "rejected", "t": t_s if at_s is None else at_s, "src": src,
                       "cmd": line, "text": str(e), "tag": tag})
            return
        self.applied += 1
        self.emit({"kind": "command", "t": t_s if at_s is None else at_s, "src": src,
                   "cmd": line, "tag": tag})
        # A change of state, not the state: listeners that show it (OSC pushes) build the
        # snapshot in their own thread. It carries the point this command leaves (a timed
        # move's at its own time), which OSC uses to keep a sender's change from echoing.
        x, y = self.scheduler.point_at(at_s) if at_s is not None else \
            self.scheduler.current_point()
        self.emit({"kind": "state", "point": [round(x, 4), round(y, 4)]})

    # -- validation against the state (in the caller's thread) -----------------------------
    def _prepare(self, c: Command, src: str = "repl", check_names: bool = False) -> Any:
        """Check `c` and compute what applying it needs (a loaded patch, a sequence). Over
        a network source (OSC, a web page: vocab/sources.py) a patch must lie in the patch
        folder. With
        `check_names` a patch's command lines are checked against the names that will exist
        when it loads (see _known_names)."""
        a = c.args
        if c.name == "load":
            points, sequences = self._known_names() if check_names else (None, [])
            patch = load_patch(find_patch(a["patch"], self.patch_dir,
                                          confined=source(src).confined_loads),
                               pitch_range=self.model.pitch_range,
                               known_points=points, known_sequences=sequences)
            # A live load: the patches its `load` lines play later must be there and valid
            # too (found as those lines, run as the patch's, will find them; their names are
            # checked when they load). A replayed load is taken as it was played: a nested
            # patch gone since fails when its line runs, named.
            bad = load_target_errors(patch, self.patch_dir, source("patch").confined_loads,
                                     self.model.pitch_range) if check_names else []
            if bad:
                raise PatchValidationError(bad)
            return patch
        if c.name == "seq":
            step = a.get("step") or DEFAULT_STEP_BEATS
            gate = a.get("gate")
            if a.get("len_beats") is not None:
                gate = a["len_beats"] / step
            timbre, timbre_name = self._seq_timbre(a.get("at"), check_names)
            return make_sequence(a["name"], a["notes"], step, velocity=a.get("vel", 0.8),
                                 gate=gate, timbre=timbre, timbre_name=timbre_name)
        self._check_pitches(c)
        return None

    def _seq_timbre(self, name: str | None, now: bool = True) -> tuple[Any, str | None]:
        """`seq ... at NAME`: a trajectory of the loaded patch, else a point (the current
        point when no `at`). A timed line's name (a replay's: lines before it, also timed,
        may mark it anew), and a name lines queued before it (`mark`) will make, are left to
        resolve when the line applies (timbre None, the name kept: engine/handlers.py
        do_seq)."""
        if name is None:
            return None, None
        if not now:  # a timed line: the names it sees are those of its own time
            return None, name
        for patch in (self.scheduler.pending_patch, self.scheduler.patch):
            if patch is not None and name in patch.trajectories:
                return patch.trajectories[name], name
        try:
            return self.resolve_point(name), name
        except CommandError:
            if now and name not in self._known_names()[0]:
                raise
            return None, name

    def _patch_ref(self, path: str) -> str:
        """A patch file as the journal names it: its name within the patch folder, else its
        absolute path."""
        p = Path(path).resolve()
        try:
            return str(p.relative_to(Path(self.patch_dir).resolve()))
        except ValueError:
            return str(p)

    # -- commands (applied in the audio hook) ----------------------------------------------

    def _set_point(self, x: float, y: float) -> None:
        # The bank (recent pitches first) once the point has settled; a moving point only
        # gets the notes its sequences actually play, which the scheduler asks for.
        self.scheduler.set_point(x, y, request_recent=not self.prerender_banks)
        if self.prerender_banks:
            self._bank_due = (x, y, self._time_s + BANK_SETTLE_S)

    def _prerender_bank(self, x: float, y: float, low: int | None, high: int | None,
                        deadline0_s: float, speculative: bool = False,
                        announce_cached: bool = False) -> None:
        """Ask for a point's pitch bank, the pitches nearest the last played first.
        announce_cached: notes already cached are announced ready at once (`prerender`:
        whoever asked waits for one /pgesam/ready per note) instead of asked for."""
        lo, hi = self.model.pitch_range
        low = lo if low is None else max(lo, low)
        high = hi if high is None else min(hi, high)
        recent = self.scheduler.recent_pitches()[::-1]  # most recent first
        order = sorted(range(low, high + 1), key=lambda p: (
            recent.index(p) if p in recent else len(recent), abs(p - self.last_pitch), p))
        for rank, pitch in enumerate(order):
            key = self.cache.key(x, y, pitch, self.scheduler.seed)
            if announce_cached and key in self.cache:
                self.note_ready(key)
                continue
            self.renderer.request(key, deadline0_s + rank * BANK_STAGGER_S,
                                  speculative=speculative)

    def _remember(self, pitches: list[int]) -> None:
        if pitches:
            self.last_pitch = int(pitches[-1])

    def _beats(self, length_s: float | None) -> float | None:
        """A note's length in seconds as beats from now, through the tempo map: a tempo
        change still to come (at the next beat) counts only from where it takes effect."""
        if length_s is None:
            return None
        return self.scheduler.beats_for_s(float(length_s), self._time_s)

    def _run_patch_line(self, patch_command: PatchCommand) -> None:
        """A patch's timed command (parsed at load), fired inside a tick at its exact time.
        Not journalled: replaying the journal's `load` fires it again."""
        line = patch_command.line
        try:
            command = patch_command.parsed()
            if not command.journal:
                return
            prepared = self._prepare(command)
            HANDLERS[command.name](self, command.args, prepared)
        except Exception as e:  # said as the performer's own refusals are, and skipped
            if not isinstance(e, PgesamError):
                log.exception("patch line %r failed", line)
            self.apply_errors += 1
            patch = self.scheduler.patch
            where = f"patch {Path(patch.path).name}" if patch is not None else "patch"
            self.message(f"{where}: `{line}`: {e}")
            self.emit({"kind": "rejected", "t": self._time_s, "src": "patch", "cmd": line,
                       "text": str(e)})


__all__ = ["COMMANDS", "Engine", "ModelInfo", "Reply"]
