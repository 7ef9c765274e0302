"""The synthesis worker process: batched renders into the cache, coalescing, and recovery
when the process dies (the engine keeps playing from the cache meanwhile)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.cache import RenderCache  # noqa: E402
from pgesam_live.model.checkpoints import save_model  # noqa: E402
from pgesam_live.model.synth import Synth  # noqa: E402
from pgesam_live.worker import WorkerClient  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny model saved as a real checkpoint file."""
    sy = Synth.untrained("tiny", device="cpu")
    return save_model(tmp_path_factory.mktemp("ckpt"), sy.vae, sy.transformer, sy.meta)


def wait_for(cond, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_worker_renders_coalesces_and_restarts(tiny_model: Path) -> None:
    cache = RenderCache("m", "harmonic", spill_dir=None)
    ready: list[object] = []
    w = WorkerClient(cache, model=str(tiny_model), device="cpu", on_ready=ready.append)
    w.start(timeout_s=60)
    try:
        keys = [cache.key(0.1, 0.2, p, 0) for p in (60, 61, 62)]
        assert all(w.request(k, k.xq, k.yq, deadline_s=1.0) for k in keys)
        assert not w.request(keys[0], keys[0].xq, keys[0].yq, deadline_s=2.0)  # coalesced
        assert wait_for(lambda: all(k in cache for k in keys), 60)
        assert len(ready) == 3 and w.pending == 0
        note = cache.peek(keys[0])
        assert note is not None and note.dtype == np.float32 and np.isfinite(note).all()

        # Kill it with work pending: it comes back within 5 s and finishes the work.
        pid = w.pid
        more = [cache.key(-0.3, 0.4, p, 0) for p in (50, 51)]
        w.kill()
        for k in more:
            w.request(k, k.xq, k.yq, deadline_s=3.0)
        assert wait_for(lambda: w.alive and w.pid != pid and w.status == "running", 5.0)
        assert w.restarts == 1
        assert wait_for(lambda: all(k in cache for k in more), 60)
        # What was cached before the crash is still there to play.
        assert all(k in cache for k in keys)
    finally:
        w.stop()
    assert not w.alive


def test_worker_reports_a_bad_model(tmp_path: Path) -> None:
    bad = tmp_path / "pgesam_x_harmonic-00000000.pt"
    bad.write_bytes(b"not a checkpoint")
    w = WorkerClient(RenderCache("m", "harmonic"), model=str(bad), device="cpu")
    with pytest.raises(Exception, match="pgesam_x_harmonic-00000000.pt"):
        w.start(timeout_s=60)
    w.stop()
