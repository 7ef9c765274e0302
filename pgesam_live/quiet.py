"""Silence C-level output for a moment: ALSA, jack and portaudio write dozens of lines
straight to fd 2 while probing devices (pyo's own errors go to fd 1), where the instrument
promises one clear line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_c_stderr() -> Iterator[None]:
    """Point fd 2 at /dev/null inside the block (Python's sys.stderr is untouched)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextlib.contextmanager
def quiet_c_output() -> Iterator[None]:
    """Point fds 1 and 2 at /dev/null inside the block (what Python buffered is written
    first; sys.stdout and sys.stderr objects are untouched)."""
    with contextlib.suppress(OSError, ValueError):  # a closed or broken stdout
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        with quiet_c_stderr():
            yield
        return
    try:
        with open(os.devnull, "w") as null, quiet_c_stderr():
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                # What C code (or pyo through Python's sys.stdout) buffered goes to
                # /dev/null, not out later.
                _flush_c_stdio()
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def _flush_c_stdio() -> None:
    """fflush(NULL): write out every C stdio buffer now."""
    import ctypes  # noqa: PLC0415

    with contextlib.suppress(OSError, AttributeError):  # no C library to ask: nothing buffered
        ctypes.CDLL(None).fflush(None)
