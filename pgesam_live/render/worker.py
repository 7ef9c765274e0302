"""The synthesis worker: a separate process (spawn) that owns the model.

torch runs there so it never takes the GIL from the clock, the REPL or OSC. The engine side,
`WorkerClient`, sends `RenderRequest`s with deadlines (engine seconds); the worker drains its
queue, serves the earliest deadlines first in batches, and sends each note back. Duplicates are
coalesced against the cache and the pending set. If the process dies, the client restarts it
and re-queues what was pending; notes already cached keep playing meanwhile.
"""

from __future__ import annotations

import heapq
import logging
import math
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgesam_live.errors import PgesamError
from pgesam_live.render.cache import NoteKey, RenderCache

log = logging.getLogger(__name__)

BATCH_MAX = 25  # one pitch bank per batch: the batched render is the efficient unit
INFLIGHT_MAX = 2 * BATCH_MAX  # speculative requests wait in the client beyond this
SPECULATIVE_MAX = 4 * BATCH_MAX  # held speculative requests; the oldest are dropped


NOTE_PEAK = 0.5  # every rendered note is played at this peak (-6 dBFS), as the authors' demo


def normalise_peak(audio: np.ndarray, peak: float = NOTE_PEAK) -> np.ndarray:
    """Scale each note to `peak`: float32 [B, N] -> [B, N]. The model renders notes at the
    data set's recorded levels (peaks 0.02-0.26); a performer wants every point and pitch
    at a playing level, and velocity then shapes it. Silent rows stay silent."""
    a = np.asarray(audio, dtype=np.float32)
    peaks = np.abs(a).max(axis=-1, keepdims=True)
    return np.where(peaks > 1e-6, a * (peak / np.maximum(peaks, 1e-6)), a).astype(np.float32)


@dataclass(frozen=True, order=True)
class RenderRequest:
    """One note to render; ordered by deadline (engine seconds), then by a sequence number."""

    deadline_s: float
    seq: int
    key: NoteKey
    x: float
    y: float


def _worker_main(model: str, device: str, req_q: Any, res_q: Any, n_threads: int) -> None:
    """Process entry: load the model once, then render batches of the earliest deadlines."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    # Ctrl-C in the terminal reaches the whole process group: the instrument shuts down and
    # stops this process (a None on the queue); a traceback from here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Before torch: the Synth reads this when it sets the process's threads.
    os.environ["PGESAM_TORCH_THREADS"] = str(max(1, n_threads))
    from pgesam_live.model.synth import Synth  # noqa: PLC0415  (only the worker pays for torch)

    try:
        synth = Synth.load(model, device=device)
    except Exception as e:  # report why, then exit: the client shows it
        res_q.put(("fatal", f"{type(e).__name__}: {e}"))
        return
    res_q.put(("ready", synth.model_id, synth.sample_rate, str(synth.device)))
    heap: list[RenderRequest] = []
    while True:
        block = not heap
        try:
            while True:
                item = req_q.get(block=block, timeout=0.5 if block else None)
                block = False
                if item is None:
                    return
                if isinstance(item, tuple):  # ("cancel", keys): not wanted any more
                    drop = set(item[1])
                    heap = [r for r in heap if r.key not in drop]
                    heapq.heapify(heap)
                    continue
                heapq.heappush(heap, item)
        except queue.Empty:
            pass
        if not heap:
            continue
        # Earliest deadlines first; one batch shares a seed (the seed is part of the key).
        first = heapq.heappop(heap)
        batch = [first]
        rest: list[RenderRequest] = []
        while heap and len(batch) < BATCH_MAX:
            r = heapq.heappop(heap)
            (batch if r.key.seed == first.key.seed else rest).append(r)
        for r in rest:
            heapq.heappush(heap, r)
        try:
            pts = np.array([[r.x, r.y] for r in batch], dtype=np.float32)
            pitches = np.array([r.key.pitch for r in batch], dtype=np.int64)
            audio = normalise_peak(synth.render(pts, pitches, seed=first.key.seed))
            for r, a in zip(batch, audio, strict=True):
                res_q.put(("note", r.key, a))
        except Exception as e:  # one bad batch must not kill the worker
            for r in batch:
                res_q.put(("error", r.key, f"{type(e).__name__}: {e}"))


class WorkerClient:
    """Engine-side handle of the worker process. Thread-safe.

    `request()` is cheap and never blocks; results land in `cache` from a receiver thread,
    which then calls `on_ready(key)`. `start()` waits for the model to load.
    """

    def __init__(self, cache: RenderCache, model: str = "default", device: str = "auto",
                 on_ready: Callable[[NoteKey], None] | None = None,
                 on_message: Callable[[str], None] | None = None, n_threads: int = 1) -> None:
        self.cache = cache
        self.model = model
        self.device = device
        self.on_ready = on_ready
        self.on_message = on_message
        self.n_threads = n_threads
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._pending: dict[NoteKey, RenderRequest] = {}  # sent, not back yet
        # Speculative requests (a point's bank) held here until the worker has room, so a
        # stream of point moves cannot flood it; a newer point's bank supersedes older ones.
        self._spec: dict[NoteKey, RenderRequest] = {}
        self.dropped = 0
        self.cancelled = 0  # renders sent and then cancelled (the point moved on)
        self._cancellable: set[NoteKey] = set()  # pending keys only cancellable requests want
        self._seq = 0
        self._proc: Any = None
        self._req_q: Any = None
        self._res_q: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.model_id: str | None = None
        self.sample_rate: int | None = None
        self.device_name: str | None = None
        self.restarts = 0
        self.errors = 0
        self.rendered = 0
        self.status = "stopped"
        self._ready = threading.Event()

    # -- life cycle ------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> None:
        """Spawn the worker and wait until its model is loaded (raises on a fatal error)."""
        self._spawn()
        self._stop.clear()
        for target in (self._receive_loop, self._watch_loop):
            t = threading.Thread(target=target, daemon=True, name=f"worker-{target.__name__}")
            t.start()
            self._threads.append(t)
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the synthesis worker did not start within {timeout_s:.0f} s")
        if self.status.startswith("failed"):
            from pgesam_live.errors import CheckpointError  # noqa: PLC0415

            raise CheckpointError(self.status.removeprefix("failed: "))

    def _spawn(self) -> None:
        self._ready.clear()
        self._req_q = self._ctx.Queue()
        self._res_q = self._ctx.Queue()
        self._proc = self._ctx.Process(
            target=_worker_main, name="pgesam-worker", daemon=True,
            args=(self.model, self.device, self._req_q, self._res_q, self.n_threads))
        self._proc.start()
        self.status = "starting"

    def stop(self) -> None:
        """Stop the worker process and the helper threads (idempotent)."""
        self._stop.set()
        # The watchdog first: one that saw the worker alive just before _stop was set would
        # otherwise see it gone after the None below and spawn another, which would then
        # outlive the instrument.
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        self._threads = []
        proc, q = self._proc, self._req_q
        if proc is not None and proc.is_alive():
            try:
                q.put(None)
                proc.join(2.0)
            except (OSError, ValueError):
                pass
            if proc.is_alive():
                proc.kill()
        self.status = "stopped"

    def kill(self) -> None:
        """Kill the worker process abruptly (tests: the watchdog must bring it back)."""
        if self._proc is not None:
            self._proc.kill()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    # -- requests --------------------------------------------------------------------------
    def request(self, key: NoteKey, x: float, y: float, deadline_s: float,
                speculative: bool = False, cancellable: bool = False) -> bool:
        """Ask for a note by `deadline_s` (engine seconds). Returns False when coalesced
        (already cached, or already pending with an earlier or equal deadline).

        speculative: a pre-render nobody waits for yet; held back while the worker is busy
        and dropped when a newer point's speculative requests push it out.
        cancellable: `cancel` may take it back (the scheduler's look-ahead at the performer's
        point); a key also asked for without it (a prerender, a held note) is kept."""
        if key in self.cache:
            return False
        with self._lock:
            if cancellable:
                if key not in self._pending and key not in self._spec:
                    self._cancellable.add(key)
            else:
                self._cancellable.discard(key)
            old = self._pending.get(key)
            if old is not None and old.deadline_s <= deadline_s:
                return False
            self._seq += 1
            req = RenderRequest(deadline_s, self._seq, key, x, y)
            if speculative:
                if key in self._spec:
                    return False
                latest = next(reversed(self._spec.values()), None)
                if latest is not None and (latest.key.xq, latest.key.yq) != (key.xq, key.yq):
                    # A new point: the older points' banks not yet sent are superseded.
                    self.dropped += len(self._spec)
                    self._spec.clear()
                self._spec[key] = req
                while len(self._spec) > SPECULATIVE_MAX:
                    self._spec.pop(next(iter(self._spec)))
                    self.dropped += 1
                send: list[RenderRequest] = self._take_speculative()
            else:
                self._spec.pop(key, None)
                self._pending[key] = req
                send = [req]
            q = self._req_q
        self._send(q, send)
        return True

    def cancel(self, keys: list[NoteKey]) -> None:
        """Drop renders not wanted any more (asked for at a point the performer left): held
        ones here, sent ones in the worker's queue (one being rendered completes)."""
        with self._lock:
            keys = [k for k in keys if k in self._cancellable]
            self._cancellable.difference_update(keys)
            sent = [k for k in keys if self._pending.pop(k, None) is not None]
            self.cancelled += len(sent)
            q = self._req_q
        if sent:
            try:
                q.put(("cancel", sent))
            except (OSError, ValueError):  # the queue died with the worker: nothing to drop
                pass

    def _take_speculative(self) -> list[RenderRequest]:
        """Move held speculative requests to pending while the worker has room (lock held)."""
        out: list[RenderRequest] = []
        while self._spec and len(self._pending) < INFLIGHT_MAX:
            key = next(iter(self._spec))
            req = self._spec.pop(key)
            if key in self.cache:
                continue
            self._pending[key] = req
            out.append(req)
        return out

    @staticmethod
    def _send(q: Any, reqs: list[RenderRequest]) -> None:
        for req in reqs:
            try:
                q.put(req)
            except (OSError, ValueError):  # the queue died with the worker: the watchdog
                return                     # re-sends what is pending

    def _feed(self) -> None:
        with self._lock:
            send = self._take_speculative()
            q = self._req_q
        self._send(q, send)

    @property
    def pending(self) -> int:
        """Renders asked for and not yet cached (sent to the worker or held back)."""
        with self._lock:
            return len(self._pending) + len(self._spec)

    # -- threads ---------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            q = self._res_q
            try:
                msg = q.get(timeout=0.05)
            except queue.Empty:
                self._feed()
                continue
            except (OSError, ValueError, EOFError):
                time.sleep(0.05)
                continue
            kind = msg[0]
            if kind == "ready":
                _, self.model_id, self.sample_rate, self.device_name = msg
                self.status = "running"
                self._ready.set()
            elif kind == "fatal":
                self.status = f"failed: {msg[1]}"
                self._ready.set()
                self._say(f"synthesis worker failed: {msg[1]}")
            elif kind == "note":
                _, key, audio = msg
                self.cache.put(key, np.asarray(audio, dtype=np.float32))
                with self._lock:
                    self._pending.pop(key, None)
                    self._cancellable.discard(key)
                self.rendered += 1
                if self.on_ready is not None:
                    self.on_ready(key)
                self._feed()
            elif kind == "error":
                _, key, text = msg
                with self._lock:
                    self._pending.pop(key, None)
                    self._cancellable.discard(key)
                self.errors += 1
                self._say(f"render failed for pitch {key.pitch} at ({key.xq:.2f}, {key.yq:.2f}):"
                          f" {text}")

    def _watch_loop(self) -> None:
        while not self._stop.wait(0.25):
            if self.status.startswith("failed") or self.alive or self._stop.is_set():
                continue
            # The worker died: restart it and re-queue what was pending, earliest first.
            self.restarts += 1
            self.status = "restarting"
            self._say(f"synthesis worker died; restarting (restart {self.restarts})")
            self._spawn()
            with self._lock:
                todo = sorted(self._pending.values())
            for req in todo:
                self._req_q.put(req)

    def _say(self, text: str) -> None:
        log.warning(text)
        if self.on_message is not None:
            self.on_message(text)


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
        self._heap: list[RenderRequest] = []
        self._queued: set[NoteKey] = set()
        self._seq = 0
        self.rendered = 0
        self.failed = 0  # notes the model refused (e.g. a pitch outside its range)
        self.model_id = synth.model_id
        self.sample_rate = synth.sample_rate

    def request(self, key: NoteKey, x: float, y: float, deadline_s: float,
                speculative: bool = False, cancellable: bool = False) -> bool:
        # (Offline nothing is cancelled: a note renders on demand when it plays.)
        if key in self._queued or key in self.cache:
            return False
        self._seq += 1
        heapq.heappush(self._heap, RenderRequest(deadline_s, self._seq, key, x, y))
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
            self.request(key, key.xq, key.yq, -math.inf)
        while key not in self.cache and self._heap:
            first = heapq.heappop(self._heap)
            batch, rest = [first], list[RenderRequest]()
            while self._heap and len(batch) < BATCH_MAX:
                r = heapq.heappop(self._heap)
                (batch if r.key.seed == first.key.seed else rest).append(r)
            for r in rest:
                heapq.heappush(self._heap, r)
            try:
                self._render(first.key.seed, [r for r in batch if r.key not in self.cache])
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
        while self._heap:
            self.ensure(self._heap[0].key)


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
