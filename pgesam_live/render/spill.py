"""The cache's disk: one .npy file per note in `<spill root>/<model id>/`, written atomically (a
temporary file, then os.replace), indexed by file name at start (cheap), read back with a check
that it is mono float32 audio. File I/O only: which notes are kept (LRU by bytes) is the
cache's business (render/cache.py), under its lock."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pgesam_live.render.keys import FILE_NAME, NoteKey, safe_name

log = logging.getLogger(__name__)


def read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class SpillDir:
    """A folder of spilled notes of one model and codec."""

    def __init__(self, path: Path, model_id: str, codec: str) -> None:
        self.path = path
        self.model_id = model_id
        self.codec = codec
        # The disk read (a slow-disk double replaces it in the bench and the tests).
        self.read_file: Callable[[Path], np.ndarray] = read_npy

    def file(self, key: NoteKey) -> Path:
        return self.path / key.file_name()

    def scan(self) -> list[tuple[float, NoteKey, int]]:
        """(mtime, key, bytes) of every note file, oldest first (least recently used first);
        leftovers of a write cut off by a crash are removed. Raises OSError when the folder
        cannot be made or read."""
        self.path.mkdir(parents=True, exist_ok=True)
        entries = list(os.scandir(self.path))
        found: list[tuple[float, NoteKey, int]] = []
        for ent in entries:
            if ent.name.startswith(".tmp-"):  # a write cut off by a crash
                remove(Path(ent.path))
                continue
            m = FILE_NAME.match(ent.name)
            if m is None or m["codec"] != safe_name(self.codec):
                continue
            try:
                st = ent.stat()
            except OSError:
                continue
            key = NoteKey(self.model_id, self.codec, float(m["x"]) + 0.0, float(m["y"]) + 0.0,
                          int(m["pitch"]), int(m["seed"]))
            found.append((st.st_mtime, key, st.st_size))
        found.sort(key=lambda f: f[0])
        return found

    def read(self, key: NoteKey) -> np.ndarray:
        """The note, read-only; raises (anything) when the file is not mono float32 audio."""
        audio = self.read_file(self.file(key))
        if audio.dtype != np.float32 or audio.ndim != 1 or len(audio) == 0:
            raise ValueError(f"not mono float32 audio ({audio.dtype}, {audio.shape})")
        audio.setflags(write=False)
        return audio

    def write(self, key: NoteKey, audio: np.ndarray) -> int | None:
        """Write a note atomically; its size in bytes, or None (said in the log) when the disk
        refuses."""
        path = self.file(key)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=self.path)
            with os.fdopen(fd, "wb") as f:
                np.save(f, audio, allow_pickle=False)
            os.replace(tmp, path)
            tmp = None
            return path.stat().st_size
        except OSError as e:
            log.warning("note cache: cannot spill %s (%s)", path.name, e)
            if tmp is not None:
                remove(Path(tmp))
            return None

    def remove(self, key: NoteKey) -> None:
        remove(self.file(key))


def remove(path: Path) -> None:
    """Delete a file; one already gone (or not deletable) is left as it is."""
    try:
        path.unlink()
    except OSError:
        pass
