"""Errors caught and carried on with (a listener, a shutdown step, a completion): never
silent. `logged(where)` replaces `contextlib.suppress(Exception)`: the error is logged with
its traceback at debug level (a warning the first time for each place) and counted in
`FAULTS`, which `status` shows as `faults`."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Iterator

log = logging.getLogger("pgesam_live.faults")

FAULTS: Counter[str] = Counter()  # place -> errors caught there
_lock = threading.Lock()


def record(where: str, exc: BaseException) -> None:
    """Count and log one error caught at `where`."""
    with _lock:
        FAULTS[where] += 1
        first = FAULTS[where] == 1
    if first:
        log.warning("%s: %s: %s (carried on; counted in status `faults`)", where,
                    type(exc).__name__, exc, exc_info=exc)
    else:
        log.debug("%s: %s: %s", where, type(exc).__name__, exc, exc_info=exc)


@contextlib.contextmanager
def logged(where: str) -> Iterator[None]:
    """Run the block; an Exception in it is recorded (see `record`) instead of raised."""
    try:
        yield
    except Exception as exc:
        record(where, exc)


def total() -> int:
    with _lock:
        return sum(FAULTS.values())
