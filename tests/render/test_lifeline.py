"""The synthesis worker's lifeline: a spawned child exits once its parent is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = r'''
import multiprocessing as mp, sys, time

def child(parent):
    from pgesam_live.render.lifeline import exit_with_parent
    exit_with_parent(parent, poll_s=0.1)
    time.sleep(60)

if __name__ == "__main__":
    import os
    p = mp.get_context("spawn").Process(target=child, args=(os.getpid(),), daemon=True)
    p.start()
    print(p.pid, flush=True)
    time.sleep(60)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ")[1].startswith("Z"))


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_spawned_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.3)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)  # no Stop, no atexit: as a crash
        parent.wait(5)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        gone = not _alive(child)
        if not gone:
            os.kill(child, signal.SIGKILL)
        assert gone, "the child outlived its parent by 10 s"
    finally:
        parent.kill()
