"""The render cache: notes by NoteKey (render/keys.py), LRU by bytes in memory, optionally
spilled to disk (render/spill.py), with an index of cached pitches and points for the
scheduler's fallbacks.

The scheduler reads it (on the audio thread: memory only, `AudioThreadSource`; a note only on
disk is read by the cache's loader thread, asked for ahead by the worker client's `prefetch`);
the worker client's result thread writes it. One lock guards the dictionaries only; copying
and disk I/O happen outside it, so a reader never waits on a render or a file.

Spill (optional): every note put is also written to ``<spill_root>/<model_id>/`` so a restart
starts warm; at start the folder is indexed by file name; ``warm()`` loads ahead. A file that
does not load as mono float audio is removed and counted in ``corrupt``, never a crash.
``spill_dir``: None = no spill, ``"default"`` = the user's cache folder
(``$XDG_CACHE_HOME`` or ``~/.cache``)/pgesam-live/notes, or a folder of your choice.

This module does not import pyo (the worker and tests use it without audio).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.errors import ConfigError
from pgesam_live.files import user_cache_dir
from pgesam_live.render.keys import NoteKey, quantise, safe_name
from pgesam_live.render.spill import SpillDir, read_npy

log = logging.getLogger(__name__)

DEFAULT_GRID = 0.02
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_DISK_BYTES = 2 * 1024 * 1024 * 1024

# A point within this share of a grid step of an anchor (a training instrument's point) is
# rendered at the anchor itself (RenderCache's anchors).
ANCHOR_SHARE = 0.25

STREAMS_MAX = 64  # notes streaming in at once, at most (more is a burst of failures)


def default_spill_root() -> Path:
    """The user's cache folder for notes: $XDG_CACHE_HOME or ~/.cache, /pgesam-live/notes."""
    return user_cache_dir() / "notes"


class RenderCache:
    """Notes by NoteKey, LRU by bytes in memory, optionally spilled to disk. Thread-safe."""

    def __init__(self, model_id: str, codec: str, grid: float = DEFAULT_GRID,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 spill_dir: str | os.PathLike[str] | None = None,
                 max_disk_bytes: int = DEFAULT_MAX_DISK_BYTES,
                 anchors: Sequence[tuple[float, float]] = ()) -> None:
        """anchors: points played exactly, not at their grid node (the training
        instruments': a point within ANCHOR_SHARE of a grid step of one renders there, so
        `at violin` plays the violin's own point, which the model's spectral memory and the
        decoder were fitted at, not a node up to 0.01 away that may be nearer another)."""
        if grid <= 0:
            raise ConfigError(f"cache grid must be > 0 (got {grid}): e.g. 0.02")
        if max_bytes < 0 or max_disk_bytes < 0:
            raise ConfigError("cache sizes must be >= 0 bytes")
        self.model_id = model_id
        self.codec = codec
        self.grid = float(grid)
        self._anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
        self.max_bytes = int(max_bytes)
        self.max_disk_bytes = int(max_disk_bytes)
        self.hits = 0
        self.misses = 0
        self.late = 0
        self.fallbacks = 0
        self.evictions = 0
        self.corrupt = 0
        self.streams_starved = 0
        self._lock = threading.Lock()
        self._mem: OrderedDict[NoteKey, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._disk: OrderedDict[NoteKey, int] = OrderedDict()  # key -> file bytes, LRU order
        self._disk_bytes = 0
        # point -> pitches and pitch -> points, over memory and disk, for the fallbacks
        self._pitches: dict[tuple[str, str, float, float, int], set[int]] = {}
        self._points: dict[tuple[str, str, int, int], set[tuple[float, float]]] = {}
        # Spilled notes asked for by the audio thread are read here, on a thread of their own.
        self._loads: queue.SimpleQueue[NoteKey | None] = queue.SimpleQueue()
        self._loading: set[NoteKey] = set()
        self._loader: threading.Thread | None = None
        self.background_loads = 0
        self.on_loaded: Callable[[NoteKey], None] | None = None  # (the loader thread)
        # Notes streaming in (render/stream.py's NoteStream), from their head's arrival until
        # the note itself is put here; how a head is made ready for the voices (the engine
        # sets it: resampling to the output rate, at that rate).
        self._streams: OrderedDict[NoteKey, Any] = OrderedDict()
        self.stream_prepare: Callable[[np.ndarray], np.ndarray] | None = None
        self.stream_rate: int | None = None
        self._spill: SpillDir | None = None
        if spill_dir is not None:
            root = default_spill_root() if str(spill_dir) == "default" else Path(spill_dir)
            self._spill = SpillDir(root / safe_name(model_id), model_id, codec)
            self._index_disk()

    # ------------------------------------------------------------------ keys
    def key(self, x: float, y: float, pitch: int, seed: int = 0) -> NoteKey:
        if len(self._anchors):
            d = np.abs(self._anchors - (float(x), float(y))).max(1)
            i = int(d.argmin())
            if d[i] <= ANCHOR_SHARE * self.grid:
                ax, ay = self._anchors[i]
                return NoteKey(self.model_id, self.codec, round(float(ax), 9) + 0.0,
                               round(float(ay), 9) + 0.0, int(pitch), int(seed))
        return NoteKey(self.model_id, self.codec, quantise(x, self.grid), quantise(y, self.grid),
                       int(pitch), int(seed))

    # ------------------------------------------------------------------ read
    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._mem or key in self._disk

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem.keys() | self._disk.keys())

    def in_memory(self, key: NoteKey) -> bool:
        """Playable without a disk read."""
        with self._lock:
            return key in self._mem

    def get(self, key: NoteKey, block: bool = True) -> np.ndarray | None:
        """The note (float32 [N], read-only) or None; counts a hit or a miss. With `block`
        False (the audio thread) a note only on disk is not read here: the loader thread
        reads it (a miss now, in memory soon)."""
        with self._lock:
            audio = self._mem.get(key)
            if audio is not None:
                self._mem.move_to_end(key)
                self.hits += 1
                return audio
            on_disk = key in self._disk
            if not on_disk or not block:
                self.misses += 1
                if on_disk:
                    self._prefetch_locked(key)
                return None
        audio = self._load(key)  # outside the lock
        with self._lock:
            if audio is None:
                self.misses += 1
                return None
            self.hits += 1
            self._insert_mem(key, audio)
            if key in self._disk:
                self._disk.move_to_end(key)
            return audio

    def stream(self, key: NoteKey) -> Any:
        """The note's NoteStream while it streams in (not cached yet), else None."""
        with self._lock:
            return None if key in self._mem else self._streams.get(key)

    def add_stream(self, key: NoteKey, stream: Any) -> None:
        """A note starts streaming in (its head has come); kept until `put` or
        `drop_stream`, the last STREAMS_MAX at most. One it replaces or pushes out is told
        that its note will not come (`fail`: its voices fade out after the head)."""
        with self._lock:
            old = self._streams.pop(key, None)
            self._streams[key] = stream
            gone = [old] if old is not None else []
            while len(self._streams) > STREAMS_MAX:
                gone.append(self._streams.popitem(last=False)[1])
        for g in gone:  # a stream replaced (a re-render) or pushed out: its voices end
            g.fail()

    def drop_stream(self, key: NoteKey) -> Any:
        """Forget a note's stream (its render failed); returns it, or None."""
        with self._lock:
            return self._streams.pop(key, None)

    def peek(self, key: NoteKey) -> np.ndarray | None:
        """Like get, from memory only, without counting or reordering (for status/tests)."""
        with self._lock:
            return self._mem.get(key)

    def prefetch(self, key: NoteKey) -> None:
        """Read a spilled note into memory on the loader thread (no-op when in memory)."""
        with self._lock:
            if key not in self._mem and key in self._disk:
                self._prefetch_locked(key)

    def _prefetch_locked(self, key: NoteKey) -> None:
        if key in self._loading:
            return
        self._loading.add(key)
        if self._loader is None or not self._loader.is_alive():
            self._loader = threading.Thread(target=self._load_loop, name="cache-loader",
                                            daemon=True)
            self._loader.start()
        self._loads.put(key)

    def _load_loop(self) -> None:
        while True:
            key = self._loads.get()
            if key is None:
                return
            try:
                self._fetch_quiet(key)
                with self._lock:
                    self.background_loads += 1
                if self.on_loaded is not None:
                    self.on_loaded(key)
            except Exception:  # the loader lives on: logged, counted as corrupt
                log.exception("note cache: loading %s failed", key)
                with self._lock:
                    self.corrupt += 1
            finally:
                with self._lock:
                    self._loading.discard(key)

    def close(self) -> None:
        """Stop the loader thread (what it is reading is finished first)."""
        loader = self._loader
        if loader is not None and loader.is_alive():
            self._loads.put(None)
            loader.join(timeout=2.0)

    def nearest_pitch(self, key: NoteKey, max_semitones: int = 3, block: bool = True
                      ) -> tuple[NoteKey, np.ndarray] | None:
        """Same point and seed, the cached pitch nearest key.pitch within max_semitones
        (ties: the lower one, so the fallback is shifted up and gets shorter, not longer)."""
        with self._lock:
            pitches = self._pitches.get(self._point_id(key), set())
            cands = sorted((abs(p - key.pitch), p) for p in pitches
                           if abs(p - key.pitch) <= max_semitones)
        for _, p in cands:
            k = NoteKey(key.model_id, key.codec, key.xq, key.yq, p, key.seed)
            audio = self._fetch_quiet(k, block)
            if audio is not None:
                return k, audio
        return None

    def nearest_point(self, key: NoteKey, max_distance: float | None = None,
                      block: bool = True) -> tuple[NoteKey, np.ndarray] | None:
        """Same pitch and seed, the cached point nearest (xq, yq) (Euclidean, latent units)."""
        with self._lock:
            pts = self._points.get((key.model_id, key.codec, key.pitch, key.seed), set())
            cands = sorted(((px - key.xq) ** 2 + (py - key.yq) ** 2, px, py) for px, py in pts)
        for d2, px, py in cands:
            if max_distance is not None and d2 > max_distance ** 2:
                break
            k = NoteKey(key.model_id, key.codec, px, py, key.pitch, key.seed)
            audio = self._fetch_quiet(k, block)
            if audio is not None:
                return k, audio
        return None

    # ------------------------------------------------------------------ write
    def put(self, key: NoteKey, audio: np.ndarray) -> None:
        """Store a note (copied, read-only); spilled to disk too when spill is on."""
        if key.model_id != self.model_id or key.codec != self.codec:
            raise ConfigError(f"note key for {key.model_id}/{key.codec} put into the cache of "
                              f"{self.model_id}/{self.codec}: use this cache's key()")
        x = np.array(audio, dtype=np.float32, copy=True)
        if x.ndim != 1 or len(x) == 0:
            raise ConfigError(f"a cached note is mono [N > 0] float32, got shape {x.shape}")
        x.setflags(write=False)
        with self._lock:
            self._insert_mem(key, x)
            self._index_add(key)
            streamed = self._streams.pop(key, None)
            need_file = self._spill is not None and key not in self._disk
        if streamed is not None:
            streamed.fail()  # (a no-op once its joined note has come, as it does first)
        if need_file:
            self._spill_note(key, x)

    def count_late(self, n: int = 1) -> None:
        with self._lock:
            self.late += n

    def count_starved(self) -> None:
        """A streamed note's head ran out before the note came (render/stream.py)."""
        with self._lock:
            self.streams_starved += 1

    def count_fallback(self, n: int = 1) -> None:
        with self._lock:
            self.fallbacks += n

    def clear_memory(self) -> None:
        """Forget what is in memory (disk files stay)."""
        with self._lock:
            for k in list(self._mem):
                self._drop_mem(k)

    def warm(self, max_bytes: int | None = None) -> int:
        """Load spilled notes into memory, most recently used first; returns how many."""
        budget = self.max_bytes if max_bytes is None else min(max_bytes, self.max_bytes)
        with self._lock:
            todo = [k for k in reversed(self._disk) if k not in self._mem]
            used = self._bytes
        n = 0
        for k in todo:
            if used >= budget:
                break
            audio = self._load(k)
            if audio is None:
                continue
            with self._lock:
                if self._bytes + audio.nbytes > budget:
                    break
                if k not in self._mem:
                    # Behind the notes already in use: warming must not evict live notes.
                    self._insert_mem(k, audio, front=True)
                    n += 1
                used = self._bytes
        return n

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {
                "bytes": self._bytes, "max_bytes": self.max_bytes,
                "fill": self._bytes / self.max_bytes if self.max_bytes else 1.0,
                "entries": len(self._mem), "disk_entries": len(self._disk),
                "disk_bytes": self._disk_bytes,
                "hits": self.hits, "misses": self.misses, "late": self.late,
                "fallbacks": self.fallbacks, "evictions": self.evictions,
                "corrupt": self.corrupt,
            }

    # ------------------------------------------------------------------ internals (lock held)
    @staticmethod
    def _point_id(key: NoteKey) -> tuple[str, str, float, float, int]:
        return (key.model_id, key.codec, key.xq, key.yq, key.seed)

    def _index_add(self, key: NoteKey) -> None:
        self._pitches.setdefault(self._point_id(key), set()).add(key.pitch)
        self._points.setdefault((key.model_id, key.codec, key.pitch, key.seed),
                                set()).add((key.xq, key.yq))

    def _index_remove_if_gone(self, key: NoteKey) -> None:
        if key in self._mem or key in self._disk:
            return
        pid = self._point_id(key)
        self._pitches.get(pid, set()).discard(key.pitch)
        if not self._pitches.get(pid, True):
            del self._pitches[pid]
        qid = (key.model_id, key.codec, key.pitch, key.seed)
        self._points.get(qid, set()).discard((key.xq, key.yq))
        if not self._points.get(qid, True):
            del self._points[qid]

    def _insert_mem(self, key: NoteKey, audio: np.ndarray, front: bool = False) -> None:
        if key in self._mem:
            self._bytes -= self._mem[key].nbytes
            del self._mem[key]
        if audio.nbytes > self.max_bytes:
            self._index_remove_if_gone(key)
            return  # bigger than the whole budget: disk only (if spilling)
        self._mem[key] = audio
        self._bytes += audio.nbytes
        if front:
            self._mem.move_to_end(key, last=False)
        while self._bytes > self.max_bytes:
            victim = next(iter(self._mem))
            if victim == key and len(self._mem) == 1:
                break
            self._drop_mem(victim)
            self.evictions += 1

    def _drop_mem(self, key: NoteKey) -> None:
        audio = self._mem.pop(key)
        self._bytes -= audio.nbytes
        self._index_remove_if_gone(key)

    # ------------------------------------------------------------------ disk (render/spill.py)
    @property
    def spill_path(self) -> Path | None:
        return self._spill.path if self._spill is not None else None

    @property
    def read_file(self) -> Callable[[Path], np.ndarray]:
        """The disk read of a spilled note (a slow-disk double replaces it)."""
        return self._spill.read_file if self._spill is not None else read_npy

    @read_file.setter
    def read_file(self, fn: Callable[[Path], np.ndarray]) -> None:
        if self._spill is not None:
            self._spill.read_file = fn

    def _index_disk(self) -> None:
        assert self._spill is not None
        try:
            found = self._spill.scan()
        except OSError as e:
            log.warning("note cache: cannot use %s (%s): spill off", self._spill.path, e)
            self._spill = None
            return
        with self._lock:
            for _, key, size in found:
                self._disk[key] = size
                self._disk_bytes += size
                self._index_add(key)
        self._trim_disk()

    def _load(self, key: NoteKey) -> np.ndarray | None:
        spill = self._spill
        if spill is None:
            return None
        try:
            return spill.read(key)
        except Exception as e:  # truncated, garbage, wrong content: drop it, never crash
            log.warning("note cache: removing unreadable %s (%s)", key.file_name(), e)
            self._forget_disk(key)
            spill.remove(key)
            with self._lock:
                self.corrupt += 1
            return None

    def _fetch_quiet(self, key: NoteKey, block: bool = True) -> np.ndarray | None:
        with self._lock:
            audio = self._mem.get(key)
            if audio is not None:
                self._mem.move_to_end(key)
                return audio
            if key not in self._disk:
                return None
            if not block:
                self._prefetch_locked(key)
                return None
        audio = self._load(key)
        if audio is not None:
            with self._lock:
                self._insert_mem(key, audio)
        return audio

    def _spill_note(self, key: NoteKey, audio: np.ndarray) -> None:
        assert self._spill is not None
        size = self._spill.write(key, audio)
        if size is None:
            return
        with self._lock:
            if key in self._disk:
                self._disk_bytes -= self._disk[key]
            self._disk[key] = size
            self._disk_bytes += size
            self._index_add(key)
        self._trim_disk()

    def _forget_disk(self, key: NoteKey) -> None:
        with self._lock:
            size = self._disk.pop(key, None)
            if size is not None:
                self._disk_bytes -= size
            self._index_remove_if_gone(key)

    def _trim_disk(self) -> None:
        while True:
            with self._lock:
                if self._disk_bytes <= self.max_disk_bytes or not self._disk or \
                        self._spill is None:
                    return
                victim = next(iter(self._disk))
            self._forget_disk(victim)
            self._spill.remove(victim)


class AudioThreadSource:
    """The cache as the scheduler reads it on the audio thread: memory only. A note that is
    only on disk counts as a miss now (the scheduler falls back, counted late) and is read by
    the cache's loader thread; the renderer asks for it ahead (WorkerClient.request), so a
    note due after the look-ahead is normally in memory by then."""

    def __init__(self, cache: RenderCache) -> None:
        self.cache = cache

    def key(self, x: float, y: float, pitch: int, seed: int) -> NoteKey:
        return self.cache.key(x, y, pitch, seed)

    def get(self, key: NoteKey) -> np.ndarray | None:
        return self.cache.get(key, block=False)

    def nearest_pitch(self, key: NoteKey, max_semitones: int = 3
                      ) -> tuple[NoteKey, np.ndarray] | None:
        return self.cache.nearest_pitch(key, max_semitones, block=False)

    def nearest_point(self, key: NoteKey) -> tuple[NoteKey, np.ndarray] | None:
        return self.cache.nearest_point(key, block=False)

    def stream(self, key: NoteKey) -> Any:
        """The note's NoteStream while its head plays ahead of its render, else None."""
        return self.cache.stream(key)

    def count_late(self) -> None:
        self.cache.count_late()

    def count_fallback(self) -> None:
        self.cache.count_fallback()
