"""The synthesis process (spawned): it owns the model, so torch never takes the GIL from the
clock, the REPL or OSC. It drains its queue of typed messages (render/messages.py), serves the
earliest deadlines first in batches (render/batcher.py) and sends each note back. Its engine-side
handle is render/client.py.
"""

from __future__ import annotations

import queue
from typing import Any

import numpy as np

from pgesam_live.render.batcher import Batcher
from pgesam_live.render.dsp import normalise_peak
from pgesam_live.render.messages import (
    Cancel,
    Failed,
    Fatal,
    Ready,
    Rendered,
    RenderRequest,
    Stop,
)


def worker_main(model: str, device: str, req_q: Any, res_q: Any, n_threads: int) -> None:
    """Process entry: load the model once, then render batches of the earliest deadlines."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    # Ctrl-C in the terminal reaches the whole process group: the instrument shuts down and
    # stops this process (a Stop on the queue); a traceback from here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Before torch: the Synth reads this when it sets the process's threads.
    os.environ["PGESAM_TORCH_THREADS"] = str(max(1, n_threads))
    from pgesam_live.model.synth import Synth  # noqa: PLC0415  (only the worker pays for torch)

    try:
        synth = Synth.load(model, device=device)
    except Exception as e:  # report why, then exit: the client shows it
        res_q.put(Fatal(f"{type(e).__name__}: {e}"))
        return
    res_q.put(Ready(synth.model_id, synth.sample_rate, str(synth.device)))
    todo = Batcher()
    while True:
        block = not todo
        try:
            while True:
                item = req_q.get(block=block, timeout=0.5 if block else None)
                block = False
                if isinstance(item, Stop):
                    return
                if isinstance(item, Cancel):  # not wanted any more
                    todo.drop(item.keys)
                elif isinstance(item, RenderRequest):
                    todo.push(item)
        except queue.Empty:
            pass
        batch = todo.next_batch()
        if not batch:
            continue
        try:
            pts = np.array([[r.x, r.y] for r in batch], dtype=np.float32)
            pitches = np.array([r.key.pitch for r in batch], dtype=np.int64)
            audio = normalise_peak(synth.render(pts, pitches, seed=batch[0].key.seed))
            for r, a in zip(batch, audio, strict=True):
                res_q.put(Rendered(r.key, a))
        except Exception as e:  # one bad batch must not kill the worker: each note says why
            for r in batch:
                res_q.put(Failed(r.key, f"{type(e).__name__}: {e}"))

