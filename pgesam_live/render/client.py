"""The engine's handle of the synthesis process (render/worker.py): `WorkerClient` sends
RenderRequests with deadlines (engine seconds), holds speculative ones back while the process is
busy, coalesces duplicates against the cache and the pending set, cancels what the performer
left behind, and restarts the process if it dies (re-queueing what was pending; notes already
cached keep playing meanwhile). Messages both ways are typed (render/messages.py).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pgesam_live.render.batcher import BATCH_MAX
from pgesam_live.render.cache import RenderCache
from pgesam_live.render.keys import NoteKey
from pgesam_live.render.messages import (
    Cancel,
    Failed,
    Fatal,
    Head,
    Joined,
    Ready,
    Rendered,
    RenderRequest,
    Stop,
)
from pgesam_live.render.stream import NoteStream
from pgesam_live.render.worker import worker_main

log = logging.getLogger(__name__)

INFLIGHT_MAX = 2 * BATCH_MAX  # speculative requests wait in the client beyond this
SPECULATIVE_MAX = 4 * BATCH_MAX  # held speculative requests; the oldest are dropped


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
        self.streamed = 0  # notes whose head came first (render/stream.py)
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
            target=worker_main, name="pgesam-worker", daemon=True,
            args=(self.model, self.device, self._req_q, self._res_q, self.n_threads,
                  os.getpid()))
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
                q.put(Stop())
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
    def request(self, key: NoteKey, deadline_s: float, speculative: bool = False,
                cancellable: bool = False, stream: bool = False) -> bool:
        """Ask for the note `key` (its point is the key's) by `deadline_s` (engine seconds).
        Returns False when coalesced
        (already cached, or already pending with an earlier or equal deadline).

        speculative: a pre-render nobody waits for yet; held back while the worker is busy
        and dropped when a newer point's speculative requests push it out.
        cancellable: `cancel` may take it back (the scheduler's look-ahead at the performer's
        point); a key also asked for without it (a prerender, a held note) is kept.
        stream: someone waits for it now: its head comes first (render/stream.py); a key
        pending without it is asked for again with it (the process keeps one)."""
        if key in self.cache:
            self.cache.prefetch(key)  # spilled: into memory before it plays (loader thread)
            return False
        with self._lock:
            if cancellable:
                if key not in self._pending and key not in self._spec:
                    self._cancellable.add(key)
            else:
                self._cancellable.discard(key)
            old = self._pending.get(key)
            if old is not None and old.deadline_s <= deadline_s and (old.stream or not stream):
                return False
            self._seq += 1
            req = RenderRequest(deadline_s, self._seq, key, stream=stream)
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
                q.put(Cancel(tuple(sent)))
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
            if isinstance(msg, Ready):
                self.model_id, self.sample_rate, self.device_name = \
                    msg.model_id, msg.sample_rate, msg.device
                self.status = "running"
                self._ready.set()
            elif isinstance(msg, Fatal):
                self.status = f"failed: {msg.text}"
                self._ready.set()
                self._say(f"synthesis worker failed: {msg.text}")
            elif isinstance(msg, Rendered):
                key = msg.key
                self.cache.put(key, np.asarray(msg.audio, dtype=np.float32))
                with self._lock:
                    self._pending.pop(key, None)
                    self._cancellable.discard(key)
                self.rendered += 1
                if self.on_ready is not None:
                    self.on_ready(key)
                self._feed()
            elif isinstance(msg, Head):
                self.cache.add_stream(msg.key, NoteStream(
                    msg.audio, msg.key.pitch, self.cache.stream_rate or self.sample_rate or 0,
                    self.cache.stream_prepare, self.cache.count_starved))
                self.streamed += 1
            elif isinstance(msg, Joined):
                st = self.cache.stream(msg.key)
                if st is not None:
                    st.finish(np.asarray(msg.audio, dtype=np.float32))
            elif isinstance(msg, Failed):
                key, text = msg.key, msg.text
                st = self.cache.drop_stream(key)
                if st is not None:
                    st.fail()
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
