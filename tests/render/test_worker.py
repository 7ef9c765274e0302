"""The synthesis worker process: batched renders into the cache, coalescing, and recovery
when the process dies (the engine keeps playing from the cache meanwhile)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.model.checkpoints import save_model  # noqa: E402
from pgesam_live.model.synth import Synth  # noqa: E402
from pgesam_live.render.cache import RenderCache  # noqa: E402
from pgesam_live.render.client import WorkerClient  # noqa: E402


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


@contextlib.contextmanager
def live_engine(model: Path, patch_dir: Path | None = None) -> Iterator[tuple[Any, Any, Any]]:
    """A real-time engine (the `none` backend: the record mode's clock, no file) with the
    real worker process on `model`; yields (engine, worker, cache) and tears all down."""
    from pgesam_live.audio.server import AudioEngine
    from pgesam_live.audio.voices import VoicePool
    from pgesam_live.engine.door import Engine, ModelInfo

    cache = RenderCache("m", "harmonic", spill_dir=None)
    audio = AudioEngine("none", sample_rate=24000, buffer_size=256)
    audio.boot()
    voices = VoicePool(audio, n_voices=16)
    w = WorkerClient(cache, model=str(model), device="cpu")
    info = ModelInfo(model_id="m", codec="harmonic", sample_rate=24000, pitch_range=(48, 72))
    engine = Engine(clock=audio, voices=voices, cache=cache, renderer=w, model=info,
                    patch_dir=patch_dir or Path("patches"))
    audio.add_hook(engine.on_block)
    w.start(timeout_s=60)
    audio.start()
    try:
        yield engine, w, cache
    finally:
        audio.stop()
        audio.close()
        w.stop()


def test_worker_renders_coalesces_and_restarts(tiny_model: Path) -> None:
    cache = RenderCache("m", "harmonic", spill_dir=None)
    ready: list[object] = []
    w = WorkerClient(cache, model=str(tiny_model), device="cpu", on_ready=ready.append)
    w.start(timeout_s=60)
    helpers = list(w._threads)
    try:
        keys = [cache.key(0.1, 0.2, p, 0) for p in (60, 61, 62)]
        assert all(w.request(k, deadline_s=1.0) for k in keys)
        assert not w.request(keys[0], deadline_s=2.0)  # coalesced
        assert wait_for(lambda: all(k in cache for k in keys), 60)
        assert len(ready) == 3 and w.pending == 0
        note = cache.peek(keys[0])
        assert note is not None and note.dtype == np.float32 and np.isfinite(note).all()

        # Kill it with work pending: it comes back and finishes the work. (How fast is the
        # worker's start, 4-6 s on these 2-core machines, most of it importing torch: a
        # figure for a benchmark, not a deadline for a test.)
        pid = w.pid
        more = [cache.key(-0.3, 0.4, p, 0) for p in (50, 51)]
        w.kill()
        for k in more:
            w.request(k, deadline_s=3.0)
        assert wait_for(lambda: w.alive and w.pid != pid and w.status == "running", 30.0)
        assert w.restarts == 1
        assert wait_for(lambda: all(k in cache for k in more), 60)
        # What was cached before the crash is still there to play.
        assert all(k in cache for k in keys)
    finally:
        w.stop()
    assert not w.alive
    # Nothing comes back after stop(): the watchdog is gone before the process is stopped.
    time.sleep(0.6)
    assert not w.alive and w.restarts == 1
    assert helpers and not any(t.is_alive() for t in helpers)


def test_worker_reports_a_bad_model(tmp_path: Path) -> None:
    bad = tmp_path / "pgesam_x_harmonic-00000000.pt"
    bad.write_bytes(b"not a checkpoint")
    w = WorkerClient(RenderCache("m", "harmonic"), model=str(bad), device="cpu")
    with pytest.raises(Exception, match="pgesam_x_harmonic-00000000.pt"):
        w.start(timeout_s=60)
    w.stop()


def test_a_stream_of_point_moves_cannot_flood_the_worker(tiny_model: Path) -> None:
    from pgesam_live.render.client import INFLIGHT_MAX, SPECULATIVE_MAX

    cache = RenderCache("m", "harmonic", spill_dir=None)
    w = WorkerClient(cache, model=str(tiny_model), device="cpu")
    w.start(timeout_s=60)
    try:
        # 200 point moves, each asking for a 25-note bank (a 60 Hz pad for 3 s).
        for i in range(200):
            x = -0.9 + i * 0.009
            for p in range(48, 73):
                k = cache.key(x, 0.3, p, 0)
                w.request(k, deadline_s=float(i), speculative=True)
            assert w.pending <= INFLIGHT_MAX + SPECULATIVE_MAX
        assert w.dropped > 0
        # A note somebody is waiting for goes ahead of the held-back banks.
        need = cache.key(0.5, -0.5, 60, 0)
        w.request(need, deadline_s=0.0)
        assert wait_for(lambda: need in cache, 30)
        # The last point's bank still arrives.
        last = cache.key(-0.9 + 199 * 0.009, 0.3, 60, 0)
        assert wait_for(lambda: last in cache, 60)
    finally:
        w.stop()


def test_killing_the_worker_mid_sequence_leaves_no_gap(tiny_model: Path) -> None:
    with live_engine(tiny_model) as (engine, w, cache):
        assert engine.submit("at 0.1 0.1").ok
        assert engine.submit("prerender 0.1 0.1 60 64").ok
        assert wait_for(lambda: all(cache.key(0.1, 0.1, p, 0) in cache for p in (60, 64)), 60)
        assert engine.submit('seq s "C4 E4" 0.25').ok
        time.sleep(1.0)
        before = engine.scheduler.counters.notes
        assert before > 0
        w.kill()
        time.sleep(1.5)
        during = engine.scheduler.counters.notes
        assert wait_for(lambda: w.alive and w.status == "running", 30.0)
        assert w.restarts == 1
        # 120 bpm, a note every 0.125 s: the sequence kept its pace while the worker was down.
        assert during - before >= 10
        assert engine.snapshot()["late_notes"] == 0


def test_xy_stream_at_60hz_causes_no_late_notes_of_its_own(tiny_model: Path,
                                                          tmp_path: Path) -> None:
    """A pad streaming /pgesam/xy at 60 Hz for 30 s while a patch sequence plays at its own
    point: the sequence's notes are all on time (the moves only cost speculative work)."""
    from pgesam_live.frontends.osc import OscCore
    from pgesam_live.frontends.osc_wire import encode_message

    patch = tmp_path / "p.yaml"
    patch.write_text('pgesam: 1\npoints:\n  home: [0.3, -0.2]\nsequences:\n  s:\n'
                     '    timbre: home\n    notes: "C4 E4 G4 E4"\n    step: 0.5\n    repeat: 0\n')
    with live_engine(tiny_model, patch_dir=tmp_path) as (engine, w, _):
        engine.scheduler.preroll_s = 1.0
        core = OscCore(engine)
        assert engine.submit(f"load {patch}").ok
        time.sleep(2.0)  # the first bar renders during the pre-roll
        late0 = engine.snapshot()["late_notes"]
        notes0 = engine.scheduler.counters.notes
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 30.0:
            u = 0.5 + 0.45 * np.sin(i / 20.0)
            v = 0.5 + 0.45 * np.cos(i / 31.0)
            replies = core.handle_datagram(encode_message("/pgesam/xy", [u, v]), ("1.2.3.4", 9))
            assert not [r for r in replies if r[1] == "/pgesam/error"]
            core.poll()
            i += 1
            time.sleep(max(0.0, t0 + i / 60.0 - time.monotonic()))
        snap = engine.snapshot()
        assert engine.scheduler.counters.notes - notes0 >= 110  # 4 notes/s for 30 s
        assert snap["late_notes"] == late0 == 0
        assert w.pending <= 200  # bounded: the moves did not pile up work


def test_a_note_at_a_fresh_point_waits_for_its_render_then_plays(tiny_model: Path) -> None:
    """`at X Y` then `play C4` at once: the note is not skipped; it starts when rendered, and
    the journal gives it that time (so a replay plays it then too)."""
    with live_engine(tiny_model) as (engine, _, _):
        events: list[dict] = []
        engine.add_listener(events.append)
        assert engine.submit("at -0.4 0.6").ok
        assert engine.submit("play C4 E4").ok
        assert wait_for(lambda: engine.scheduler.counters.notes == 2, 10)
        cmds = [e for e in events if e["kind"] == "command"]
        assert [e["cmd"] for e in cmds] == ["at -0.4 0.6", "play 60 64"]
        assert cmds[1]["t"] > cmds[0]["t"]  # it waited for the render
        assert engine.snapshot()["late_notes"] == 0
        # Anything sent after a waiting note releases it at once: a burst never queues
        # behind a render (the note falls back, counted late).
        assert engine.submit("at 0.7 -0.7").ok
        assert engine.submit("play G4").ok
        assert engine.submit("tempo 100").ok
        assert wait_for(lambda: [e["cmd"] for e in events if e["kind"] == "command"][-1]
                        == "tempo 100", 2)
        cmds = [e for e in events if e["kind"] == "command"]
        assert [e["cmd"] for e in cmds[-3:]] == ["at 0.7 -0.7", "play 67", "tempo 100"]
        assert cmds[-1]["t"] - cmds[-3]["t"] < 0.05


def test_a_chord_at_a_fresh_point_waits_for_its_renders_note_by_note(tiny_model: Path) -> None:
    """A burst of notes (a chord from a MIDI keyboard, three lines at once) at a point never
    rendered: each waits for its own render (its head, when streamed); none falls back."""
    with live_engine(tiny_model) as (engine, _, _):
        assert engine.submit("at 0.35 -0.65").ok
        for p in (60, 64, 67):
            assert engine.submit(f"note {p} 0.8").ok
        assert wait_for(lambda: engine.scheduler.counters.notes == 3, 10)
        snap = engine.snapshot()
        assert snap["late_notes"] == 0 and snap["fallbacks"] == 0
        # A command that is not a note still releases the notes waiting before it.
        assert engine.submit("at -0.75 0.75").ok
        assert engine.submit("note 62 0.8").ok
        assert engine.submit("tempo 100").ok
        assert wait_for(lambda: engine.scheduler.counters.notes + engine.scheduler.counters.skipped
                        >= 4, 2)
        assert engine.snapshot()["late_notes"] == 1


def test_notes_are_played_at_one_peak_level() -> None:
    from pgesam_live.render.dsp import NOTE_PEAK, normalise_peak

    a = np.stack([0.05 * np.sin(np.arange(100) / 3), np.zeros(100), -0.2 * np.ones(100)])
    out = normalise_peak(a.astype(np.float32))
    assert np.allclose(np.abs(out).max(axis=1), [NOTE_PEAK, 0.0, NOTE_PEAK])
    assert np.allclose(out[0] / out[0].max(), a[0] / a[0].max(), atol=1e-6)  # shape kept


def test_the_worker_drops_renders_cancelled_before_it_takes_them(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import queue
    import signal
    import threading

    from pgesam_live.render.messages import Cancel, Rendered, RenderRequest, Stop
    from pgesam_live.render.worker import worker_main

    monkeypatch.setattr(signal, "signal", lambda *a: None)  # (only the main thread may)
    cache = RenderCache("m", "harmonic", spill_dir=None)
    keys = [cache.key(0.1, 0.2, p, 0) for p in (60, 61, 62)]
    req_q: queue.Queue[Any] = queue.Queue()
    res_q: queue.Queue[Any] = queue.Queue()
    for i, k in enumerate(keys):
        req_q.put(RenderRequest(1.0 + i, i, k))
    req_q.put(Cancel(tuple(keys[1:])))  # the point moved on before the worker got to them
    t = threading.Thread(target=worker_main, args=(str(tiny_model), "cpu", req_q, res_q, 1))
    t.start()
    try:
        got = []
        while not any(isinstance(m, Rendered) for m in got):
            got.append(res_q.get(timeout=60))
        time.sleep(0.5)
        while not res_q.empty():
            got.append(res_q.get())
    finally:
        req_q.put(Stop())
        t.join(30)
    assert [m.key for m in got if isinstance(m, Rendered)] == [keys[0]]


def test_the_client_forgets_cancelled_renders_and_asks_again_later(tiny_model: Path) -> None:
    cache = RenderCache("m", "harmonic", spill_dir=None)
    w = WorkerClient(cache, model=str(tiny_model), device="cpu")
    w.start(timeout_s=60)
    try:
        k = cache.key(0.3, 0.3, 60, 0)
        assert w.request(k, deadline_s=100.0, cancellable=True)
        w.cancel([k])
        assert w.cancelled == 1
        assert w.request(k, deadline_s=100.0)  # wanted again: asked again
        # Asked for by a prerender too (not cancellable): a cancel leaves it.
        k2 = cache.key(0.3, 0.3, 61, 0)
        assert w.request(k2, deadline_s=100.0, cancellable=True)
        w.request(k2, deadline_s=90.0)
        w.cancel([k2])
        assert w.cancelled == 1
        assert wait_for(lambda: k in cache and k2 in cache, 60)
    finally:
        w.stop()


def test_a_streamed_request_brings_its_head_then_the_whole_note(tiny_model: Path) -> None:
    """A note someone waits for: the process sends its head first (a NoteStream in the cache,
    at the playing level), then the joined note, then the note itself into the cache."""
    cache = RenderCache("m", "harmonic", spill_dir=None)
    seen: list[Any] = []
    add = cache.add_stream
    cache.add_stream = lambda k, s: (seen.append(s), add(k, s))  # type: ignore[method-assign]
    w = WorkerClient(cache, model=str(tiny_model), device="cpu")
    w.start(timeout_s=60)
    try:
        key = cache.key(0.3, -0.1, 60, 0)
        assert w.request(key, deadline_s=0.0, stream=True)
        assert wait_for(lambda: key in cache, 60)
        assert w.streamed == 1 and len(seen) == 1
        st = seen[0]
        assert st.complete and not st.failed and len(st.head) > 0
        assert cache.stream(key) is None  # cached now: later plays read the cache
        np.testing.assert_allclose(st.note[: len(st.head)], st.head, atol=1e-6)
    finally:
        w.stop()
