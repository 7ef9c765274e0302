"""The live engine's benchmark figures (issue 4), merged into `pgesam-live bench`.

Everything is measured through the real engine (engine.door.Engine, scheduler, voice pool, pyo),
in one process, one pyo server at a time:

- ``trigger_latency_ms`` (mean), ``trigger_latency_p95_ms``, ``trigger_latency_max_ms``: a
  cache hit, from ``engine.submit("note P ...")`` returning to the first sample of that note
  leaving the engine. The clock is an AudioEngine in ``none`` mode: a manual pyo server (256
  samples at 24 kHz) paced in real time by our audio thread, exactly as ``--audio record``
  runs, without the WAV. A sample counts as out at its wall-clock due time (the block's due
  time plus its index in the block), or when its block was actually computed if that was
  later. A real device adds its own output buffer on top.
- ``bank_prerender_s``: the real synthesis worker (spawned process, the given model, started
  and warmed up first: model load and torch's first call are not counted), from submitting
  ``at X Y`` at a fresh point to the first ``BANK_PITCHES`` pitches of that point's bank (the
  engine's order: nearest the last played first) all in the cache.
- ``cold_trigger_ms`` (mean), ``_p95_ms``, ``_max_ms`` (target: p95 <= 40): a note at a point
  and pitch never rendered, the worker on its one torch thread, no fallback allowed, from
  ``submit("note_at ...")`` to the note's first sample above -40 dB re its peak at the
  output; ``cold_streamed``: how many of them started from their head (render/stream.py),
  ``cold_stream_starved``: heads that ran out before their note came, ``cold_underruns``;
  ``cold_generate_ms`` / ``cold_decode_ms`` / ``cold_head_ms``: a whole note's decoder pass,
  its decoding, a head (best of 5, in this process); ``stream_level_diff_db`` (median,
  ``_max``): a streamed note against the same note cached, the largest |difference| of their
  10 ms level envelopes where the cached note is within 40 dB of its peak, over
  STREAM_CHECK_NOTES random points and pitches.
- ``voices_64_cpu_pct``: ``voices.bench_voices_cpu_pct(64)`` (share of one core).
- ``bounce_realtime_factor``: seconds of audio per wall second of an offline bounce of a demo
  patch (``OfflineRig``, the same path as ``pgesam-live render``) whose notes are already in
  the in-memory cache; ``bounce_cold_s``: the same bounce from an empty cache;
  ``bounce_seconds``: the audio length; ``bounce_identical``: both bounces gave the same
  samples. A bounce is timed from building the rig to its last block (the model is loaded
  once, before, and not counted; nothing is written to disk).
- ``engine_threads``: torch's intra-op threads in this process (the bounce renders here);
  ``worker_threads``: the synthesis worker's; ``engine_model``: what was measured (an untrained
  ``small`` model saved to a temporary checkpoint when ``checkpoints/`` holds no model).
- ``audio_callback_mean_ms``, ``audio_callback_p99_ms``, ``audio_callback_max_ms``: the audio
  callback's time per block (the hooks: commands applied, the scheduler's tick, the voices;
  pyo's computation; the taps) on the real-time clock while a sequence plays, its notes
  spilled to a slow-disk double (each read 50 ms; the memory copies dropped every second),
  the journal on a slow disk (each flush 50 ms) and an OSC controller polling
  ``/pgesam/status`` 30 times a second; ``audio_block_ms`` the block period (256 samples at
  24 kHz: 10.67 ms); ``audio_late_blocks`` blocks whose callback took longer than that;
  ``audio_underruns`` blocks started more than a block late (the machine's scheduling);
  ``audio_callback_ok``: max under the block period and no late block;
  ``audio_disk_reads``, ``audio_journal_lines``, ``audio_osc_polls``: that the slow paths
  were exercised.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import tempfile
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from pgesam_live.errors import AudioError, CheckpointError
from pgesam_live.render.stream import HEAD_FRAMES
from pgesam_live.settings import REPO_ROOT, Settings

SAMPLE_RATE = 24000
BUFFER_SIZE = 256
BANK_PITCHES = 25
BENCH_PATCH = REPO_ROOT / "patches" / "drift-arpeggio.yaml"
MAX_BOUNCE_S = 30.0
LATENCY_POINT = (0.0, 0.0)
BANK_POINT = (0.37, -0.41)  # far from LATENCY_POINT on the cache grid: a fresh bank
TRIGGER_NOTE_LEN_S = 0.02  # short notes: each one is over (release included) before the next

TRIGGER_KEYS = ("trigger_latency_ms", "trigger_latency_p95_ms", "trigger_latency_max_ms")
COLD_KEYS = ("cold_trigger_ms", "cold_trigger_p95_ms", "cold_trigger_max_ms",
             "cold_trigger_notes", "cold_trigger_target_ms", "cold_trigger_vs_cache_hit",
             "cold_generate_ms", "cold_decode_ms", "cold_head_ms", "cold_streamed",
             "cold_stream_starved", "cold_underruns", "stream_level_diff_db",
             "stream_level_diff_db_max")
STREAM_CHECK_NOTES = 24  # streamed against cached notes compared (stream_level_diff_db)
COLD_TARGET_MS = 40.0  # issue 16: a note from nothing within 40 ms (p95)
COLD_NOTES = 12
COLD_LEVEL_DB = -40.0  # the first sample this far below the note's peak counts
BANK_KEYS = ("bank_prerender_s", "bank_prerender_pitches")
VOICES_KEYS = ("voices_64_cpu_pct",)
BOUNCE_KEYS = ("bounce_realtime_factor", "bounce_cold_s", "bounce_seconds", "bounce_notes",
               "bounce_identical")
INFO_KEYS = ("engine_model", "engine_device", "engine_threads", "worker_threads")
AUDIO_KEYS = ("audio_callback_mean_ms", "audio_callback_p99_ms", "audio_callback_max_ms",
              "audio_callback_blocks", "audio_block_ms", "audio_late_blocks",
              "audio_underruns", "audio_callback_ok", "audio_disk_reads",
              "audio_journal_lines", "audio_osc_polls")
ENGINE_KEYS = (*TRIGGER_KEYS, *COLD_KEYS, *BANK_KEYS, *VOICES_KEYS, *BOUNCE_KEYS, *INFO_KEYS,
               *AUDIO_KEYS)
SLOW_DISK_S = 0.05   # the slow-disk double: every spilled-note read and journal flush
OSC_POLL_HZ = 30.0   # a controller asking /pgesam/status this often


def _wanted(only: Collection[str] | None, keys: tuple[str, ...]) -> bool:
    return only is None or any(k in only for k in keys)


@contextlib.contextmanager
def _checkpoint(model: str) -> Iterator[tuple[Path, str]]:
    """The model file to measure and a one-line description of it.

    `default` with no bundled model: a randomly initialised `small` model saved to a temporary
    checkpoint (removed afterwards), so the worker process loads a real file. A named model that
    does not exist is the user's error and is raised as is."""
    from pgesam_live.model.checkpoints import resolve_model  # noqa: PLC0415

    try:
        path: Path | None = resolve_model(model)
    except CheckpointError:
        if str(model) != "default":
            raise
        path = None
    if path is not None:
        yield path, path.stem
        return
    from pgesam_live.model.checkpoints import save_model  # noqa: PLC0415
    from pgesam_live.model.synth import Synth  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="pgesam-bench-") as tmp:
        sy = Synth.untrained("small", device="cpu")
        tmp_path = save_model(tmp, sy.vae, sy.transformer, sy.meta)
        yield tmp_path, (f"untrained small config, temporary checkpoint {tmp_path.name} "
                         f"(no bundled model in checkpoints/)")


def _wait(cond: Any, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AudioError(f"bench: {what} did not happen within {timeout_s:.0f} s; "
                             f"is the machine overloaded? (rerun with a larger timeout)")
        time.sleep(0.01)


# ------------------------------------------------------------------------------ live rig
class _LiveRig:
    """The live wiring (app/build.py build_live) without journal or front ends: a real-time
    pyo clock (`none` backend), the voice pool, an in-memory cache, the real worker process."""

    def __init__(self, path: Path, device: str, s: Settings) -> None:
        from pgesam_live.app.build import build_live, model_info  # noqa: PLC0415

        info: Any = model_info(str(path), s.patch_dir)[1]
        self.info = info
        rig = build_live(s.replace(device=device, sample_rate=SAMPLE_RATE,
                                   buffer_size=BUFFER_SIZE), info, path, backend="none",
                         spill=False, preroll_s=0.0)
        self.audio, self.voices, self.cache = rig.audio, rig.voices, rig.cache
        self.worker, self.engine = rig.renderer, rig.engine
        self.ready_hooks: list[Any] = []  # called with each key the worker caches
        self.worker.on_ready = self._on_ready

    def _on_ready(self, key: Any) -> None:
        self.engine.note_ready(key)
        for fn in self.ready_hooks:
            fn(key)

    def start(self, timeout_s: float) -> None:
        self.worker.start(timeout_s=timeout_s)
        self.audio.start()

    def submit(self, line: str) -> None:
        r = self.engine.submit(line, src="repl")
        if not r.ok:
            raise AudioError(f"bench: the engine refused `{line}`: {r.text}")

    def close(self) -> None:
        try:
            self.audio.close()
        finally:
            self.worker.stop()


def _render_one(rig: _LiveRig, pitch: int, timeout_s: float) -> Any:
    """Render the latency note through the worker (also its warm-up); returns its key."""
    x, y = LATENCY_POINT
    key = rig.cache.key(x, y, pitch, rig.engine.scheduler.seed)
    rig.worker.request(key, deadline_s=0.0)
    _wait(lambda: key in rig.cache, timeout_s, "the worker's first render")
    return key


def _trigger_latency(rig: _LiveRig, key: Any, n_notes: int, seed: int = 0) -> dict[str, float]:
    """Submit `note P` at random moments; latency to the note's first sample at the output."""
    note = rig.cache.peek(key)
    if note is None:
        raise AudioError("bench: the latency note left the cache: raise cache_max_bytes")
    nz = np.flatnonzero(note)
    if len(nz) == 0:
        raise AudioError("bench: the model rendered a silent note; use a trained model")
    # The note's own leading silence is the model's attack, not the engine's latency.
    rig.cache.put(key, note[int(nz[0]):])
    audio, engine = rig.audio, rig.engine
    engine.prerender_banks = False  # only the one cached note: nothing else runs meanwhile
    rig.submit(f"at {key.xq} {key.yq}")
    found = threading.Event()
    state: dict[str, float] = {"t_call": 0.0, "latency": 0.0}

    def tap(block: np.ndarray, t_s: float) -> None:
        if found.is_set() or state["t_call"] == 0.0:
            return
        idx = np.flatnonzero(np.abs(block).max(axis=1) > 0.0)
        if len(idx):
            assert audio.t0_wall is not None
            due = audio.t0_wall + t_s + idx[0] / audio.sample_rate
            state["latency"] = max(due, time.perf_counter()) - state["t_call"]
            found.set()

    hits0, late0 = rig.cache.hits, engine.scheduler.counters.late
    rng = np.random.default_rng(seed)
    lat_ms: list[float] = []
    audio.add_tap(tap)
    try:
        time.sleep(0.1)  # the `at` is applied; any earlier sound is over
        for _ in range(n_notes):
            # The previous note (length + 30 ms release) is over; a random phase in the block.
            time.sleep(0.08 + float(rng.uniform(0.0, audio.block_s)))
            found.clear()
            state["t_call"] = time.perf_counter()
            rig.submit(f"note {key.pitch} 1 {TRIGGER_NOTE_LEN_S}")
            if not found.wait(2.0):
                raise AudioError("bench: a triggered note never reached the output")
            lat_ms.append(1000.0 * state["latency"])
            state["t_call"] = 0.0
    finally:
        audio.remove_tap(tap)
    if rig.cache.hits - hits0 < n_notes or engine.scheduler.counters.late != late0:
        raise AudioError(f"bench: {n_notes} notes but {rig.cache.hits - hits0} cache hits and "
                         f"{engine.scheduler.counters.late - late0} late: not a cache-hit figure")
    a = np.asarray(lat_ms)
    return {"trigger_latency_ms": round(float(a.mean()), 3),
            "trigger_latency_p95_ms": round(float(np.percentile(a, 95)), 3),
            "trigger_latency_max_ms": round(float(a.max()), 3)}


def _cold_trigger(rig: _LiveRig, n_notes: int, timeout_s: float) -> dict[str, Any]:
    """A note at a point and pitch never rendered (empty cache for it, no fallback allowed:
    the engine waits for its render), from `submit` to the note's first sample above
    COLD_LEVEL_DB re its peak at the output; the worker on its one torch thread; no
    underrun of the clock counted meanwhile."""
    from pgesam_live.audio.voices import velocity_gain  # noqa: PLC0415
    from pgesam_live.render.dsp import NOTE_PEAK  # noqa: PLC0415

    audio, engine, cache = rig.audio, rig.engine, rig.cache
    engine.prerender_banks = False
    engine.wait_for_render_s = timeout_s  # never a fallback: the figure is the render's
    lo, hi = rig.info.pitch_range
    seed = engine.scheduler.seed
    # The note's peak at the output: the rendered peak, velocity 1, the centre pan (-3 dB).
    threshold = NOTE_PEAK * velocity_gain(1.0) * math.sqrt(0.5) * 10 ** (COLD_LEVEL_DB / 20)
    found = threading.Event()
    state: dict[str, float] = {"t_call": 0.0, "latency": 0.0}

    def tap(block: np.ndarray, t_s: float) -> None:
        if found.is_set() or state["t_call"] == 0.0:
            return
        idx = np.flatnonzero(np.abs(block).max(axis=1) > threshold)
        if len(idx):
            assert audio.t0_wall is not None
            due = audio.t0_wall + t_s + idx[0] / audio.sample_rate
            state["latency"] = max(due, time.perf_counter()) - state["t_call"]
            found.set()

    late0, streamed0 = engine.scheduler.counters.late, engine.scheduler.counters.streamed
    starved0 = cache.streams_starved
    fall0 = engine.scheduler.counters.fallback_pitch + engine.scheduler.counters.fallback_point
    under0 = audio.underruns
    lat_ms: list[float] = []
    audio.add_tap(tap)
    try:
        for i in range(n_notes):
            x, y = -0.9 + 0.137 * i, 0.83 - 0.071 * i  # a fresh cell of the cache grid each
            pitch = lo + (7 * i) % (hi - lo + 1)
            key = cache.key(x, y, pitch, seed)
            if key in cache:
                raise AudioError("bench: a cold-trigger point is cached already")
            time.sleep(0.3 + 0.01 * i)  # the previous note is over (0.05 s + its release)
            found.clear()
            state["t_call"] = time.perf_counter()
            rig.submit(f"note_at {x:.4f} {y:.4f} {pitch} 1 0.05")
            if not found.wait(timeout_s):
                raise AudioError("bench: a cold note never reached the output")
            lat_ms.append(1000.0 * state["latency"])
            state["t_call"] = 0.0
        time.sleep(0.3)
    finally:
        audio.remove_tap(tap)
    sched = engine.scheduler.counters
    if sched.late != late0 or sched.fallback_pitch + sched.fallback_point != fall0:
        raise AudioError("bench: a cold note fell back: not a render-from-nothing figure")
    a = np.asarray(lat_ms)
    return {"cold_trigger_ms": round(float(a.mean()), 2),
            "cold_trigger_p95_ms": round(float(np.percentile(a, 95)), 2),
            "cold_trigger_max_ms": round(float(a.max()), 2), "cold_trigger_notes": len(a),
            "cold_trigger_target_ms": COLD_TARGET_MS,
            "cold_streamed": int(sched.streamed - streamed0),
            "cold_stream_starved": int(cache.streams_starved - starved0),
            "cold_underruns": int(audio.underruns - under0)}


def _cold_parts(path: Path, device: str, threads: int) -> dict[str, float]:
    """Where a cold note's time goes, in this process on the worker's thread count: the
    decoder's one pass for a note, and the codec decoding it (best of 5 each)."""
    import torch  # noqa: PLC0415

    from pgesam_live.model.synth import Synth  # noqa: PLC0415

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        synth = Synth.load(str(path), device=device)
        lo, hi = synth.pitch_range
        pts, p = np.array([[0.11, -0.23]], np.float32), np.array([(lo + hi) // 2])
        frames = synth.render_frames(pts, p)
        gen, dec, head = [], [], []
        for _ in range(5):
            t0 = time.perf_counter()
            synth.render_frames(pts, p)
            t1 = time.perf_counter()
            synth.decode_frames(frames)
            t2 = time.perf_counter()
            synth.render_heads(pts, p, 0, HEAD_FRAMES)
            gen.append(t1 - t0)
            dec.append(t2 - t1)
            head.append(time.perf_counter() - t2)
        return {"cold_generate_ms": round(1000 * min(gen), 2),
                "cold_decode_ms": round(1000 * min(dec), 2),
                "cold_head_ms": round(1000 * min(head), 2),
                **_stream_fidelity(synth)}
    finally:
        torch.set_num_threads(before)


def _stream_fidelity(synth: Any, n_notes: int = STREAM_CHECK_NOTES) -> dict[str, float]:
    """How a streamed note (head, then joined) differs from the same note cached, over
    n_notes random points and pitches: the largest |level difference| of their 10 ms
    envelopes where the cached note is within 40 dB of its peak (median and max over the
    notes), dB."""
    from pgesam_live.render.cache import RenderCache  # noqa: PLC0415
    from pgesam_live.render.loop import envelope_db  # noqa: PLC0415
    from pgesam_live.render.messages import Joined, Rendered, RenderRequest  # noqa: PLC0415
    from pgesam_live.render.worker import render_batch  # noqa: PLC0415

    rng = np.random.default_rng(7)
    cache = RenderCache(synth.model_id, synth.codec_name)
    lo, hi = synth.pitch_range
    reqs = [RenderRequest(0.0, i, cache.key(float(x), float(y), int(p), 0), stream=True)
            for i, (x, y, p) in enumerate(zip(rng.uniform(-0.9, 0.9, n_notes),
                                              rng.uniform(-0.9, 0.9, n_notes),
                                              rng.integers(lo, hi + 1, n_notes), strict=True))]
    sent: list[Any] = []
    render_batch(synth, reqs, sent.append)
    joined = {m.key: m.audio for m in sent if isinstance(m, Joined)}
    diffs = []
    for m in sent:
        if isinstance(m, Rendered) and m.key in joined:
            a, b = envelope_db(joined[m.key], synth.sample_rate), \
                envelope_db(m.audio, synth.sample_rate)
            loud = b > b.max() - 40.0
            diffs.append(float(np.abs(a - b)[loud].max()))
    return {"stream_level_diff_db": round(float(np.median(diffs)), 2),
            "stream_level_diff_db_max": round(float(np.max(diffs)), 2)}


def _bank_prerender(rig: _LiveRig, n_pitches: int, timeout_s: float) -> dict[str, Any]:
    """`at X Y` at a fresh point -> its first n_pitches bank pitches cached (wall seconds)."""
    engine, cache = rig.engine, rig.cache
    engine.prerender_banks = True
    lo, hi = rig.info.pitch_range
    last = engine.last_pitch
    order = sorted(range(lo, hi + 1), key=lambda p: (abs(p - last), p))[:n_pitches]
    x, y = BANK_POINT
    seed = engine.scheduler.seed
    todo = {cache.key(x, y, p, seed) for p in order}
    if any(k in cache for k in todo):
        raise AudioError("bench: the bank point is already cached; pick another BANK_POINT")
    done = threading.Event()
    t_end: dict[str, float] = {}
    lock = threading.Lock()

    def on_ready(key: Any) -> None:
        with lock:
            todo.discard(key)
            if not todo and not done.is_set():
                t_end["t"] = time.perf_counter()
                done.set()

    rig.ready_hooks.append(on_ready)
    t0 = time.perf_counter()
    rig.submit(f"at {x} {y}")
    if not done.wait(timeout_s):
        raise AudioError(f"bench: the bank of {n_pitches} pitches was not cached within "
                         f"{timeout_s:.0f} s ({len(todo)} missing); is the worker alive?")
    return {"bank_prerender_s": round(t_end["t"] - t0, 3), "bank_prerender_pitches": len(order)}


# ------------------------------------------------------------------------------ bounce
def _bounce_figures(path: Path, device: str, seconds: float | None, patch_path: Path,
                    base: Settings) -> dict[str, Any]:
    import torch  # noqa: PLC0415

    from pgesam_live.app.build import TAIL_S, OfflineRig  # noqa: PLC0415
    from pgesam_live.model.synth import Synth  # noqa: PLC0415
    from pgesam_live.patches.schema import load_patch  # noqa: PLC0415
    from pgesam_live.render.cache import RenderCache  # noqa: PLC0415

    patch = load_patch(patch_path)
    if seconds is None:
        beats = patch.length_beats()
        seconds = MAX_BOUNCE_S if beats is None else min(
            MAX_BOUNCE_S, beats * 60.0 / patch.tempo_bpm + TAIL_S)
    synth = Synth.load(str(path), device=device)  # loaded once, not counted
    s = base.replace(audio="offline", cache_spill=False, seed=patch.seed,
                           tempo_bpm=patch.tempo_bpm, model=str(path), device=device)
    cache = RenderCache(synth.model_id, synth.codec_name, grid=s.cache_grid,
                        max_bytes=s.cache_max_bytes, spill_dir=None)

    def bounce() -> tuple[float, np.ndarray, int, int, int]:
        t0 = time.perf_counter()
        rig = OfflineRig(s, synth=synth, cache=cache)
        try:
            rig.submit_or_fail(f"load {shlex.quote(str(patch_path))}", src="patch", at_s=0.0)
            rig.run_until(float(seconds))
            out = rig.audio.render_to_array()
        finally:
            rig.close()
        wall_s = time.perf_counter() - t0
        return (wall_s, out, rig.renderer.rendered, rig.engine.scheduler.counters.notes,
                rig.audio.sample_rate)

    cold_s, cold, _, n_notes, _ = bounce()
    warm_s, warm, rendered, _, out_sr = bounce()
    if rendered:
        raise AudioError(f"bench: the second bounce rendered {rendered} notes: the cache did "
                         f"not hold the first bounce's notes (raise cache_max_bytes)")
    audio_s = len(warm) / out_sr
    return {"bounce_realtime_factor": round(audio_s / warm_s, 2),
            "bounce_cold_s": round(cold_s, 3),
            "bounce_seconds": round(audio_s, 3),
            "bounce_notes": int(n_notes),
            "bounce_identical": bool(cold.shape == warm.shape and np.array_equal(cold, warm)),
            "engine_threads": int(torch.get_num_threads()),
            "engine_device": str(synth.device)}


# ------------------------------------------------------------------------------ audio thread
class _SlowFile:
    """A slow-disk double for the journal: each flush takes SLOW_DISK_S."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.flushes = 0

    def write(self, text: str) -> int:
        return int(self._fh.write(text))

    def writelines(self, lines: Any) -> None:
        self._fh.writelines(lines)

    def flush(self) -> None:
        time.sleep(SLOW_DISK_S)
        self.flushes += 1
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _audio_callback_figures(path: Path, device: str, s: Settings, seconds: float,
                            timeout_s: float) -> dict[str, Any]:
    """The audio callback's time per block (hooks, pyo's computation, taps) on the real-time
    clock while a sequence plays, its notes spilled to a slow disk (each read 50 ms, the
    memory copy dropped every second so the reads go on), the journal on a slow disk (each
    flush 50 ms; a journalled command 10 times a second) and an OSC controller polling
    /pgesam/status 30 times a second."""
    from pgesam_live.app.build import build_live, model_info  # noqa: PLC0415
    from pgesam_live.frontends.osc import OscCore
    from pgesam_live.frontends.osc_wire import encode_message  # noqa: PLC0415
    from pgesam_live.render.cache import RenderCache  # noqa: PLC0415
    from pgesam_live.sessions.journal import Journal, make_header  # noqa: PLC0415

    info: Any = model_info(str(path), s.patch_dir)[1]
    lo, hi = info.pitch_range
    pitches = [p for p in (60, 64, 67, 71, 72, 67, 64, 62) if lo <= p <= hi] or [lo]
    x, y = LATENCY_POINT
    with tempfile.TemporaryDirectory(prefix="pgesam-bench-") as tmp:
        spill = Path(tmp) / "notes"
        # The sequence's notes on disk only, as after a restart (placeholder audio: the
        # figure is the callback's time, not the sound).
        pre = RenderCache(info.model_id, info.codec, grid=s.cache_grid, spill_dir=spill)
        t = np.arange(int(4.0 * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE
        for p in set(pitches):
            f0 = 440.0 * 2 ** ((p - 69) / 12)
            pre.put(pre.key(x, y, p, s.seed), (0.3 * np.sin(2 * np.pi * f0 * t)
                                               * np.exp(-3 * t)).astype(np.float32))
        cache = RenderCache(info.model_id, info.codec, grid=s.cache_grid,
                            max_bytes=s.cache_max_bytes, spill_dir=spill)
        reads = [0]
        fast_read = cache.read_file

        def slow_read(file: Path) -> np.ndarray:
            time.sleep(SLOW_DISK_S)
            reads[0] += 1
            return fast_read(file)

        cache.read_file = slow_read
        rig = build_live(s.replace(device=device, sample_rate=SAMPLE_RATE,
                                   buffer_size=BUFFER_SIZE), info, path, backend="none",
                         cache=cache, preroll_s=0.0)
        audio, worker, engine = rig.audio, rig.renderer, rig.engine
        engine.prerender_banks = False  # the sequence's notes only
        journal = Journal(Path(tmp) / "bench.jsonl", make_header(info.model_id, s.seed,
                                                                 s.tempo_bpm),
                          background=True, file_wrapper=lambda fh: cast(IO[str], _SlowFile(fh)))
        engine.add_listener(journal)
        osc = OscCore(engine)
        controller = ("127.0.0.1", 50999)
        osc.handle_datagram(encode_message("/pgesam/hello", []), controller)
        audio.add_hook(engine.on_block)
        stop = threading.Event()
        polls = [0]

        def poll_status() -> None:  # the controller's thread: status 30 times a second,
            status = encode_message("/pgesam/status", [])  # and a journalled command 10
            tempo = encode_message("/pgesam/tempo", [float(s.tempo_bpm)])  # times a second
            while not stop.wait(1.0 / OSC_POLL_HZ):
                osc.handle_datagram(status, controller)
                if polls[0] % 3 == 0:
                    osc.handle_datagram(tempo, controller)
                osc.poll()
                polls[0] += 1

        def drop_memory() -> None:  # the cache spills: its memory copy goes every second
            while not stop.wait(1.0):
                cache.clear_memory()

        threads = [threading.Thread(target=fn, daemon=True, name=f"bench-{fn.__name__}")
                   for fn in (poll_status, drop_memory)]
        try:
            worker.start(timeout_s=timeout_s)
            audio.start()
            for th in threads:
                th.start()
            notes = " ".join(str(p) for p in pitches)
            for line in (f"at {x} {y}", f'seq bench "{notes}" 0.25'):
                r = engine.submit(line, src="osc")
                if not r.ok:
                    raise AudioError(f"bench: the engine refused `{line}`: {r.text}")
            time.sleep(0.5)  # the sequence has started
            audio.block_times_s.clear()
            under0 = audio.underruns
            time.sleep(seconds)
            times_ms = 1000.0 * np.asarray(list(audio.block_times_s), dtype=np.float64)
            underruns = audio.underruns - under0
        finally:
            stop.set()
            for th in threads:
                if th.is_alive():
                    th.join(timeout=2.0)
            audio.close()
            worker.stop()
            engine.close()
            cache.close()
            journal.close()
    if not len(times_ms):
        raise AudioError("bench: no audio block was computed")
    block_ms = 1000.0 * BUFFER_SIZE / SAMPLE_RATE
    late = int((times_ms > block_ms).sum())
    return {"audio_callback_mean_ms": round(float(times_ms.mean()), 4),
            "audio_callback_p99_ms": round(float(np.percentile(times_ms, 99)), 4),
            "audio_callback_max_ms": round(float(times_ms.max()), 4),
            "audio_callback_blocks": len(times_ms),
            "audio_block_ms": round(block_ms, 3),
            "audio_late_blocks": late,
            "audio_underruns": int(underruns),
            "audio_callback_ok": bool(float(times_ms.max()) < block_ms and late == 0),
            "audio_disk_reads": int(reads[0]),
            "audio_journal_lines": int(journal.count),
            "audio_osc_polls": int(polls[0])}


# ------------------------------------------------------------------------------ public
def engine_figures(model: str = "default", device: str = "auto", *,
                   only: Collection[str] | None = None, n_triggers: int = 40,
                   bank_pitches: int = BANK_PITCHES, voices_seconds: float = 4.0,
                   bounce_seconds: float | None = None, patch: str | Path = BENCH_PATCH,
                   timeout_s: float = 600.0, audio_seconds: float = 5.0,
                   n_cold: int = COLD_NOTES) -> dict[str, Any]:
    """Issue 4's figures (see the module docstring for each key).

    only: the keys wanted (None = all); groups with no wanted key are not measured.
    bounce_seconds: None = the patch's length plus its ring-out, at most MAX_BOUNCE_S.
    timeout_s: limit on each wait for the worker (start, a render, the bank).
    """
    if n_triggers < 1 or bank_pitches < 1 or voices_seconds <= 0:
        raise AudioError("bench: n_triggers and bank_pitches must be >= 1, voices_seconds > 0")
    want_trigger = _wanted(only, TRIGGER_KEYS)
    want_cold = _wanted(only, COLD_KEYS)
    want_bank = _wanted(only, BANK_KEYS)
    want_voices = _wanted(only, VOICES_KEYS)
    want_bounce = _wanted(only, (*BOUNCE_KEYS, "engine_threads", "engine_device"))
    want_audio = _wanted(only, AUDIO_KEYS)
    s = Settings.from_env()
    out: dict[str, Any] = {}
    with _checkpoint(model) as (path, described):
        out["engine_model"] = described
        out["worker_threads"] = s.worker_threads
        if want_trigger or want_bank or want_cold:
            rig = _LiveRig(path, device, s)
            try:
                rig.start(timeout_s)
                lo, hi = rig.info.pitch_range
                pitch = 60 if lo <= 60 <= hi else (lo + hi) // 2
                key = _render_one(rig, pitch, timeout_s)  # warms the worker up, too
                if want_trigger or want_cold:
                    out.update(_trigger_latency(rig, key, n_triggers))
                if want_cold:
                    out.update(_cold_trigger(rig, n_cold, timeout_s))
                    # The cost of a note from nothing against a cache hit, same run.
                    out["cold_trigger_vs_cache_hit"] = round(
                        out["cold_trigger_ms"] / max(out["trigger_latency_ms"], 1e-3), 1)
                if want_bank:
                    rig.engine.last_pitch = pitch
                    out.update(_bank_prerender(rig, bank_pitches, timeout_s))
                out["engine_device"] = rig.worker.device_name
            finally:
                rig.close()  # the one pyo server of this process goes before the next
        if want_cold:
            out.update(_cold_parts(path, device, s.worker_threads))
        if want_voices:
            from pgesam_live.audio.voices import bench_voices_cpu_pct  # noqa: PLC0415

            pct = bench_voices_cpu_pct(64, seconds=voices_seconds, sample_rate=SAMPLE_RATE,
                                       buffer_size=BUFFER_SIZE)
            out["voices_64_cpu_pct"] = round(pct, 2)
        if want_bounce:
            out.update(_bounce_figures(path, device, bounce_seconds, Path(patch), s))
        if want_audio:
            out.update(_audio_callback_figures(path, device, s, audio_seconds, timeout_s))
    if not math.isfinite(sum(v for v in out.values() if isinstance(v, float))):
        raise AudioError(f"bench: a figure is not finite: {out}")
    return out
