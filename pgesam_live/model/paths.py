"""Output paths checked before the work that fills them (a bounce, an evaluation), so a path
that cannot be written fails in the first second, not after minutes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be written (a read-only disk, /proc, no permission, a file where a
    folder must be), or None when it can. Writes nothing that stays: missing folders are
    left for the writer to create."""
    p = Path(os.path.realpath(path))  # through symlinks, dangling ones included
    d = p.parent
    while not d.exists() and d != d.parent:
        d = d.parent
    if not d.is_dir():
        return f"{d} is a file, not a folder"
    try:
        if p.exists():
            with open(p, "ab"):
                pass
        else:
            fd, probe = tempfile.mkstemp(dir=d, prefix=".pgesam-probe-")
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        return f"cannot write there ({e.strerror or e})"
    return None
