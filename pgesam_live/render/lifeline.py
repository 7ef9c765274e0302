"""A spawned process (the synthesis worker, an export) ends with the instrument: when the
process that started it is gone (killed, crashed: no Stop ever comes), it exits within a
second instead of rendering on as an orphan that holds the model's memory and a core."""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5


def exit_with_parent(parent: int, poll_s: float = POLL_S) -> threading.Thread:
    """Watch the parent from a daemon thread: once this process's parent is no longer
    `parent` (the pid the parent passed itself, so one that died while this process was
    starting is caught too: it was re-parented), exit at once (os._exit: no cleanup is owed
    to an instrument that is gone). Returns the watching thread."""

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(0)

    t = threading.Thread(target=watch, daemon=True, name="lifeline")
    t.start()
    return t


__all__ = ["exit_with_parent"]
