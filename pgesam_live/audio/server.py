"""The pyo Server's life cycle, the audio backends of the contract and the block clock.

ENGINE TIME is the number of seconds of audio the server has been asked to compute since it
booted: ``blocks * buffer_size / sample_rate``. Every scheduled start in the live layer is an
absolute engine time, so a note's onset is a sample index, never a wall-clock guess.

Backends (``AudioEngine(backend=...)``):

- ``portaudio``: pyo drives a real output device. Booting pyo's portaudio backend on a machine
  with no sound card segfaults, so we count devices first and refuse with an AudioError.
- ``jack``: pyo's jack backend; an AudioError when no jack server answers.
- ``record``: a pyo *manual* server driven by our own real-time thread, one ``process()`` per
  block paced by the wall clock, writing every block to a WAV file (soundfile, same thread).
- ``none``: the same real-time thread, writing nothing (a clock for headless runs).
- ``offline``: a manual server advanced by the caller (``run_blocks`` / ``advance_to``), as fast
  as the CPU allows, byte-identical on repeat; ``render_to_array`` / ``save`` give the output.
- ``auto``: portaudio when a device and a default output exist, else ``record`` (and
  ``message`` holds the one line that says so; a library never prints).

Hooks: ``add_hook(fn, priority)`` registers ``fn(t_s)`` to run before every block with that
block's engine time. They run from pyo's per-block process callback (``Server.setCallback``)
in every backend: inside our thread for record/none/offline, inside pyo's audio callback for
portaudio/jack. A hook that raises is logged and counted, never allowed to stop the clock.
Lower priority runs first; the voice pool uses a high priority so the scheduler's hook, which
hands it notes for this very block, always runs before the pool activates them.

This module and voices.py are the only ones that import pyo.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pgesam_live.errors import AudioError, ConfigError
from pgesam_live.faults import logged
from pgesam_live.files import stamped_path
from pgesam_live.quiet import quiet_c_output, quiet_c_stderr

os.environ.setdefault("PYO_GUI_WX", "0")
import pyo  # noqa: E402  (PYO_GUI_WX must be set before pyo is imported)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "portaudio", "jack", "record", "none", "offline")
_MANUAL_BACKENDS = ("record", "none", "offline")

Hook = Callable[[float], None]
Tap = Callable[[np.ndarray, float], None]


def portaudio_output_available() -> tuple[bool, str]:
    """Whether pyo's portaudio backend can be booted safely here, and why not.

    Never boots anything: counting devices is the guard against pyo's no-sound-card segfault.
    """
    with quiet_c_stderr():
        try:
            n_devices = int(pyo.pa_count_devices())
            default_out = int(pyo.pa_get_default_output()) if n_devices > 0 else -1
        except Exception as e:  # a broken portaudio install: treat as "no device"
            return False, f"portaudio probe failed ({e})"
    if n_devices <= 0:
        return False, "no audio device found"
    if default_out < 0:
        return False, f"{n_devices} audio device(s) but no default output"
    return True, f"{n_devices} device(s), default output #{default_out}"


def default_record_path(folder: str | os.PathLike[str] = "sessions") -> Path:
    """`sessions/<YYYYmmdd-HHMMSS>.wav`, the contract's place for recordings (-2, -3.. when
    that name is taken: a recording never replaces another)."""
    return stamped_path(folder, ".wav", ".jsonl")


def repair_recordings(folder: str | os.PathLike[str]) -> list[str]:
    """Fix the WAV headers of recordings a crash left open (their RIFF and data sizes still
    say 0, though the samples are there), so every player reads them; a line for each."""
    import struct

    said: list[str] = []
    for path in sorted(Path(folder).glob("*.wav")):
        try:
            with open(path, "r+b") as f:
                head = f.read(12)
                if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                    continue
                size = path.stat().st_size
                pos, block_align, rate = 12, 1, 0
                while pos + 8 <= size:
                    f.seek(pos)
                    cid, clen = struct.unpack("<4sI", f.read(8))
                    if cid == b"fmt ":
                        fmt = f.read(16)
                        if len(fmt) == 16:
                            _, _, rate, _, block_align, _ = struct.unpack("<HHIIHH", fmt)
                    if cid == b"data":
                        have = (size - pos - 8) // max(1, block_align) * max(1, block_align)
                        if clen != have and (clen == 0 or pos + 8 + clen > size):
                            f.seek(pos + 4)
                            f.write(struct.pack("<I", have))
                            f.seek(4)
                            f.write(struct.pack("<I", pos + 8 + have - 8))
                            secs = have / max(1, block_align) / rate if rate else 0.0
                            said.append(f"repaired {path} ({secs:.1f} s): a session cut off "
                                        "by a crash")
                        break
                    pos += 8 + clen + (clen & 1)
        except OSError:
            continue
    return said


class AudioEngine:
    """pyo Server + backend + block clock. See the module docstring for the backends."""

    def __init__(
        self,
        backend: str = "auto",
        sample_rate: int = 24000,
        buffer_size: int = 256,
        n_channels: int = 2,
        record_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(
                f"unknown audio backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if sample_rate < 8000 or buffer_size < 16 or n_channels < 1:
            raise ConfigError(
                f"bad audio settings (sample_rate={sample_rate}, buffer_size={buffer_size}, "
                f"n_channels={n_channels}): use >= 8000 Hz, >= 16 samples, >= 1 channel"
            )
        self.requested_backend = backend
        self.backend = backend
        self.sample_rate = int(sample_rate)
        self.buffer_size = int(buffer_size)
        self.n_channels = int(n_channels)
        self.record_path: Path | None = Path(record_path) if record_path is not None else None
        self.message: str | None = None  # the one line `auto` has to say, if any
        self.underruns = 0  # blocks computed later than their wall-clock due time (rt thread)
        self.hook_errors = 0
        # Each block's callback time in seconds (hooks, pyo's computation, taps) on the
        # real-time and offline loops: the bench's audio-callback figure.
        self.block_times_s: deque[float] = deque(maxlen=1 << 16)
        self._blocks = 0
        self._hooks: list[tuple[int, int, Hook]] = []  # (priority, order, fn)
        self._hook_order = 0
        self._taps: list[Tap] = []
        self._server: pyo.Server | None = None
        self._out_view: np.ndarray | None = None  # numpy view on pyo's output buffer
        self._blocks_out: list[np.ndarray] = []  # offline: every output block [B, C]
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._wav = None  # soundfile.SoundFile while recording
        # Recorded blocks go to the file on a thread of their own, never the audio thread's.
        self._rec_q: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
        self._rec_thread: threading.Thread | None = None
        self.record_errors = 0
        self._started = False
        self._closed = False
        self.t0_wall: float | None = None  # perf_counter() of engine time 0 in rt modes
        self.thread_error: BaseException | None = None

    # ------------------------------------------------------------------ properties
    @property
    def block_s(self) -> float:
        return self.buffer_size / self.sample_rate

    @property
    def server(self) -> pyo.Server:
        if self._server is None:
            raise AudioError("the audio engine is not booted: call boot() first")
        return self._server

    @property
    def blocks(self) -> int:
        """Blocks whose pre-block hooks have run (the next block to compute has this index)."""
        return self._blocks

    def time_samples(self) -> int:
        """Engine time in samples: the first sample of the next block to be computed."""
        return self._blocks * self.buffer_size

    def time_s(self) -> float:
        """Engine time in seconds (see module docstring)."""
        return self._blocks * self.buffer_size / self.sample_rate

    @property
    def description(self) -> str:
        """One line for doctor/status: backend, rate, block, channels, where it records."""
        b = self.backend
        if b == "auto":
            b = "auto (not booted)"
        parts = [
            b,
            f"{self.sample_rate} Hz",
            f"{self.buffer_size}-sample blocks ({1000 * self.block_s:.1f} ms)",
            f"{self.n_channels} ch",
        ]
        if self.backend == "record" and self.record_path is not None:
            parts.append(f"recording to {self.record_path}")
        if self.underruns:
            parts.append(f"{self.underruns} underruns")
        return ", ".join(parts)

    # ------------------------------------------------------------------ life cycle
    def _resolve_backend(self) -> str:
        if self.requested_backend != "auto":
            return self.requested_backend
        ok, why = portaudio_output_available()
        if ok:
            return "portaudio"
        if self.record_path is None:
            self.record_path = default_record_path()
        self.message = f"no sound card ({why}): recording to {self.record_path} instead"
        log.info(self.message)
        return "record"

    def boot(self) -> AudioEngine:
        """Build and boot the pyo Server for the backend. Idempotent."""
        if self._server is not None:
            return self
        if self._closed:
            raise AudioError("this audio engine was closed: build a new AudioEngine")
        self.backend = self._resolve_backend()
        if self.backend == "portaudio":
            ok, why = portaudio_output_available()
            if not ok:
                raise AudioError(f"portaudio: {why}: use --audio record (or none)")
        audio = {"portaudio": "portaudio", "jack": "jack"}.get(self.backend, "manual")
        server = pyo.Server(
            sr=self.sample_rate,
            nchnls=self.n_channels,
            buffersize=self.buffer_size,
            duplex=0,
            audio=audio,
        )
        server.setVerbosity(1)  # errors only
        server.deactivateMidi()  # MIDI input is midi.py's job (mido), not pyo's
        if audio == "jack":
            # libjack would try to spawn jackd and retry for seconds; we ask the user instead.
            os.environ.setdefault("JACK_NO_START_SERVER", "1")
        with quiet_c_output() if audio == "jack" else contextlib.nullcontext():
            server.boot()
            booted = server.getIsBooted()
            if not booted:  # pyo says so on stdout, in four lines: ours below is the one
                with logged("audio: shutting a server that did not boot down"):
                    server.shutdown()
        if not booted:
            if self.backend == "jack":
                raise AudioError("jack: no jack server answered: start jackd "
                                 "(e.g. `jackd -d dummy`) or use --audio record")
            raise AudioError(f"{self.backend}: the pyo server did not boot: try --audio record")
        server.setCallback(self._on_block)
        self._server = server
        if audio == "manual":
            addr = int(server.getOutputAddr(), 16)
            ptr = ctypes.cast(addr, ctypes.POINTER(ctypes.c_float))
            # pyo's output buffer, interleaved frames: valid right after each process().
            self._out_view = np.ctypeslib.as_array(ptr, shape=(self.buffer_size * self.n_channels,))
        return self

    def start(self) -> AudioEngine:
        """Start the clock (and the real-time thread / the device). Idempotent."""
        if self._started:
            return self
        self.boot()
        if self.backend == "record":
            import soundfile as sf

            if self.record_path is None:
                self.record_path = default_record_path()
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._wav = sf.SoundFile(  # "x": never replaces another recording
                    str(self.record_path), "x", samplerate=self.sample_rate,
                    channels=self.n_channels, subtype="PCM_24", format="WAV",
                )
            except Exception as e:
                raise AudioError(
                    f"cannot write {self.record_path} ({e}): pass a writable record path") from e
            self._rec_thread = threading.Thread(target=self._record_loop, name="pgesam-record",
                                                daemon=True)
            self._rec_thread.start()
        self.server.start()
        self._started = True
        if self.backend in ("record", "none"):
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._rt_loop, name="pgesam-audio", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the clock and close the recording (a complete, valid WAV). Idempotent."""
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._server is not None and self._started:
            with logged("audio: stopping the server"):
                self._server.stop()
        self._started = False
        if self._rec_thread is not None:
            self._rec_q.put(None)  # after the blocks queued before it
            self._rec_thread.join(timeout=10.0)
            self._rec_thread = None
        if self._wav is not None:
            with logged("audio: closing the recording"):
                self._wav.close()
            self._wav = None

    def _record_loop(self) -> None:
        """Write the recorded blocks (record mode), off the audio thread."""
        while True:
            block = self._rec_q.get()
            if block is None:
                return
            try:
                if self._wav is not None:
                    self._wav.write(block)
            except Exception:  # a full disk: counted and logged, the performance goes on
                self.record_errors += 1
                if self.record_errors == 1:
                    log.exception("recording %s: cannot write", self.record_path)

    def close(self) -> None:
        """stop() and shut the pyo Server down (a process holds one server at a time)."""
        self.stop()
        if self._server is not None:
            with logged("audio: removing the block callback"):
                self._server.setCallback(None)
            with logged("audio: shutting the server down"):
                self._server.shutdown()
            self._server = None
            self._out_view = None
        self._closed = True

    def __enter__(self) -> AudioEngine:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hooks and taps
    def add_hook(self, fn: Hook, priority: int = 0) -> None:
        """Run fn(t_s) before every block (lower priority first; ties in order added)."""
        self._hook_order += 1
        self._hooks = sorted([*self._hooks, (priority, self._hook_order, fn)], key=lambda h: h[:2])

    def remove_hook(self, fn: Hook) -> None:
        self._hooks = [h for h in self._hooks if h[2] is not fn]

    def add_tap(self, fn: Tap) -> None:
        """Run fn(block [B, C] float32, t_s) after every block (manual backends only)."""
        self._taps = [*self._taps, fn]

    def remove_tap(self, fn: Tap) -> None:
        self._taps = [t for t in self._taps if t is not fn]

    def _on_block(self) -> None:
        # pyo's per-block callback, just before the block is computed.
        t_s = self._blocks * self.buffer_size / self.sample_rate
        for _, _, fn in self._hooks:  # the list is replaced, never mutated: safe to iterate
            try:
                fn(t_s)
            except Exception:
                self.hook_errors += 1
                log.exception("audio hook %r failed at t=%.4f s", fn, t_s)
        self._blocks += 1

    def _process_one(self, on_block: Hook | None = None) -> np.ndarray:
        """Compute one block on a manual server; returns a copy of it, [B, C] float32."""
        started = time.perf_counter()
        if on_block is not None:
            on_block(self.time_s())
        self.server.process()
        assert self._out_view is not None
        block = self._out_view.copy().reshape(self.buffer_size, self.n_channels)
        t_s = (self._blocks - 1) * self.block_s
        for tap in self._taps:
            try:
                tap(block, t_s)
            except Exception:
                self.hook_errors += 1
                log.exception("audio tap %r failed", tap)
        self.block_times_s.append(time.perf_counter() - started)
        return block

    # ------------------------------------------------------------------ real-time thread
    def _rt_loop(self) -> None:
        """record/none: one block per block_s of wall clock; catch up when late."""
        block_s = self.block_s
        t0 = time.perf_counter() - self.time_s()
        self.t0_wall = t0
        try:
            while not self._stop_event.is_set():
                due = t0 + self._blocks * block_s
                now = time.perf_counter()
                if now < due:
                    if self._stop_event.wait(due - now):
                        break
                elif now - due > block_s:
                    self.underruns += 1  # more than a block behind: compute without sleeping
                block = self._process_one()
                if self._wav is not None:
                    self._rec_q.put(block)  # written by the recording thread
        except BaseException as e:  # keep the reason for status; the process carries on
            self.thread_error = e
            log.exception("audio thread stopped")

    # ------------------------------------------------------------------ offline
    def _require_offline(self, what: str) -> None:
        if self.backend != "offline":
            raise AudioError(f"{what} needs backend='offline' (this engine is {self.backend!r})")
        if not self._started:
            self.start()

    def run_blocks(self, n: int, on_block: Hook | None = None) -> None:
        """offline: compute n blocks; on_block(t_s) runs before each (before the hooks)."""
        self._require_offline("run_blocks")
        for _ in range(int(n)):
            self._blocks_out.append(self._process_one(on_block))

    def advance_to(self, t_s: float, on_block: Hook | None = None) -> None:
        """offline: compute blocks until engine time >= t_s."""
        self._require_offline("advance_to")
        target = int(np.ceil(t_s * self.sample_rate / self.buffer_size - 1e-9))
        if target > self._blocks:
            self.run_blocks(target - self._blocks, on_block)

    def render_to_array(self) -> np.ndarray:
        """offline: everything computed so far, float32 [N, C]."""
        if self.backend != "offline":
            raise AudioError(
                f"render_to_array needs backend='offline' (this engine is {self.backend!r})")
        if not self._blocks_out:
            return np.zeros((0, self.n_channels), dtype=np.float32)
        return np.concatenate(self._blocks_out, axis=0)

    def save(self, path: str | os.PathLike[str], subtype: str = "PCM_24",
             seconds: float | None = None, fade_out_s: float = 0.0) -> Path:
        """offline: write render_to_array() to a WAV file (deterministic bytes); `seconds`
        cuts it to exactly that length (blocks run whole, past it); `fade_out_s` fades the
        last samples to zero (no click where a cut ends a sounding note)."""
        import soundfile as sf

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        x = self.render_to_array()
        if seconds is not None:
            x = x[: int(round(seconds * self.sample_rate))]
        n = min(len(x), int(round(fade_out_s * self.sample_rate)))
        if n > 0:
            x = x.copy()
            x[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)[:, None]
        sf.write(str(out), x, self.sample_rate, subtype=subtype, format="WAV")
        return out
