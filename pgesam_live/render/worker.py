"""The synthesis process (spawned): it owns the model, so torch never takes the GIL from the
clock, the REPL or OSC. It drains its queue of typed messages (render/messages.py), serves the
earliest deadlines first in batches (render/batcher.py) and sends each note back. Its engine-side
handle is render/client.py.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import numpy as np

from pgesam_live.render.batcher import Batcher
from pgesam_live.render.dsp import normalise_peak
from pgesam_live.render.lifeline import exit_with_parent
from pgesam_live.render.messages import (
    Cancel,
    Failed,
    Fatal,
    Head,
    Joined,
    Ready,
    Rendered,
    RenderRequest,
    Stop,
)
from pgesam_live.render.stream import (
    HEAD_FRAMES,
    XFADE_FRAMES,
    join_frame,
    level_joined,
    peak_gain,
    seam_sample,
)


def worker_main(model: str, device: str, req_q: Any, res_q: Any, n_threads: int,
                parent_pid: int | None = None) -> None:
    """Process entry: load the model once, then render batches of the earliest deadlines.
    parent_pid: the instrument's process, which this one ends with (render/lifeline.py);
    None: no lifeline (run in a thread, as tests do)."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    # Ctrl-C in the terminal reaches the whole process group: the instrument shuts down and
    # stops this process (a Stop on the queue); a traceback from here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        exit_with_parent(parent_pid)  # an instrument killed outright sends no Stop

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
            render_batch(synth, batch, res_q.put)
        except Exception as e:  # one bad batch must not kill the worker: each note says why
            for r in batch:
                res_q.put(Failed(r.key, f"{type(e).__name__}: {e}"))


def render_batch(synth: Any, batch: list[RenderRequest], send: Callable[[Any], object],
                 head_frames: int = HEAD_FRAMES) -> None:
    """Render one batch (one seed) and `send` each note as a message. The requests flagged
    `stream` (someone waits now) get their heads first, in one short batched pass, then,
    after the batch's whole notes, their joined notes (render/stream.py). Streamed ones are
    rendered as a batch of their own, before the others: a head lasts ~0.6 s, and their
    notes must come before it has played out."""
    streamed = [r for r in batch if r.stream]
    if streamed and len(streamed) < len(batch):
        render_batch(synth, streamed, send, head_frames)
        render_batch(synth, [r for r in batch if not r.stream], send, head_frames)
        return
    pts = np.array([[r.x, r.y] for r in batch], dtype=np.float32)
    pitches = np.array([r.key.pitch for r in batch], dtype=np.int64)
    seed = batch[0].key.seed
    rows = [i for i, r in enumerate(batch) if r.stream]
    n_head = min(int(head_frames), int(getattr(synth, "n_frames", head_frames)))
    heads = None
    if rows and hasattr(synth, "render_heads") and n_head > join_frame(n_head) + XFADE_FRAMES:
        heads, head_audio, later_db = synth.render_heads(pts[rows], pitches[rows], seed, n_head)
        hop = int(head_audio.shape[1] // n_head)
        seam = seam_sample(n_head, hop)
        # Played at the note's level: lower where the note peaks after its head (a swell).
        gains = [peak_gain(a[:seam]) * 10 ** (-float(d) / 20) for a, d in
                 zip(head_audio, later_db, strict=True)]
        for i, a, g in zip(rows, head_audio, gains, strict=True):
            send(Head(batch[i].key, (a[:seam] * np.float32(g)).astype(np.float32)))
    frames, audio = synth.render_notes(pts, pitches, seed)
    if heads is not None:
        stitched = synth.stitch_frames(heads, frames[rows], join_frame(n_head), XFADE_FRAMES)
        joined = synth.decode_notes(stitched, pts[rows], pitches[rows], seed)
        for i, a, g in zip(rows, joined, gains, strict=True):
            send(Joined(batch[i].key, level_joined(a, g, seam, int(synth.sample_rate))))
    for r, a in zip(batch, normalise_peak(audio), strict=True):
        send(Rendered(r.key, a))

