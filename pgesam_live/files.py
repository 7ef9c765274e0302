"""Where the instrument's files go: the user's cache folder and the session files' names
(one stamp per session, shared by its journal and its recording)."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/pgesam-live, else ~/.cache/pgesam-live."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgesam-live"


def stamped_path(folder: str | os.PathLike[str], suffix: str, sibling_suffix: str,
                 now: _dt.datetime | None = None) -> Path:
    """A fresh `<folder>/<YYYYmmdd-HHMMSS><suffix>` (-2, -3.. when that second is taken)
    whose sibling with `sibling_suffix` is free too: a session's journal and recording share
    one name, and neither ever replaces another session's."""
    base = Path(folder)
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    path = base / f"{stamp}{suffix}"
    n = 2
    while path.exists() or path.with_suffix(sibling_suffix).exists():
        path = base / f"{stamp}-{n}{suffix}"
        n += 1
    return path
