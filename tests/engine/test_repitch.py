"""Notes beyond the model's range are re-pitched off the audio thread (engine/repitch.py):
the scheduler's request for the edge note has the re-pitch prepared by the preparer's thread,
the hook only looks it up; when it is not ready in time the hook re-pitches as before,
counted; the sound is the same either way."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app.build import build_rig  # noqa: E402
from pgesam_live.engine.door import ModelInfo  # noqa: E402
from pgesam_live.engine.repitch import RepitchMemo, RepitchPreparer  # noqa: E402
from pgesam_live.render.cache import RenderCache  # noqa: E402
from pgesam_live.render.dsp import repitch  # noqa: E402
from pgesam_live.settings import Settings  # noqa: E402
from tests.engine.test_scheduler import BLOCK_S, Key, Rig, audio_of, patch  # noqa: E402

SR = 24000


def wait_for(cond: Any, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())


class SpyRepitch:
    """repitch_fn recording the thread it runs on."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def __call__(self, audio: np.ndarray, semitones: float) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        return repitch(audio, semitones)


def _rig_with_preparer(spy: SpyRepitch, peek: Any) -> Rig:
    rig = Rig(pitch_range=(48, 72), repitch_fn=spy)
    rig.sched.fallbacks.attach_preparer(peek)
    return rig


def test_a_note_beyond_the_range_is_re_pitched_ahead_off_the_audio_thread() -> None:
    spy = SpyRepitch()
    rig = _rig_with_preparer(spy, lambda key: audio_of(key))  # every edge note in memory
    plain = Rig(pitch_range=(48, 72))  # no preparer: re-pitched in the hook, as before
    seq = "sequences:\n  s:\n    timbre: [0.1, 0.2]\n    notes: \"C4 G2 C6\"\n    step: 1\n"
    for r in (rig, plain):
        r.sched.load_patch(patch(seq))
        r.run(BLOCK_S)  # the requests go out: one bar ahead
    preparer = rig.sched.fallbacks.preparer
    assert preparer is not None
    assert wait_for(lambda: preparer.prepared == 2)
    rig.run(2.0)
    plain.run(2.0)
    assert rig.sched.fallbacks.repitched_in_hook == 0
    assert spy.threads == ["repitch", "repitch"]
    # The same notes, the same lengths, as re-pitched in the hook.
    assert rig.sink.calls == plain.sink.calls and len(rig.sink.calls) == 3
    preparer.close()


def test_a_re_pitch_not_ready_in_time_is_done_in_the_hook_and_counted() -> None:
    spy = SpyRepitch()
    rendered: dict[Key, np.ndarray] = {}
    rig = _rig_with_preparer(spy, rendered.get)  # the edge note is not rendered yet
    rig.sched.play_now([43])  # G2 on a 48..72 model: C3 re-pitched
    rig.run(0.1)
    assert rig.sched.fallbacks.repitched_in_hook == 1
    assert spy.threads == [threading.current_thread().name]
    assert abs(rig.sink.calls[0].n_samples - 2400 * 2 ** (5 / 12)) <= 1
    # Played again: the memo has it, nothing re-pitched.
    rig.sched.play_now([43])
    rig.run(0.2)
    assert rig.sched.fallbacks.repitched_in_hook == 1 and len(spy.threads) == 1
    preparer = rig.sched.fallbacks.preparer
    assert preparer is not None
    preparer.close()


def test_the_preparer_waits_for_the_edge_note_to_land() -> None:
    spy = SpyRepitch()
    memo = RepitchMemo()
    rendered: dict[str, np.ndarray] = {}
    prepared: list[np.ndarray] = []
    p = RepitchPreparer(memo, spy, rendered.get, on_prepared=prepared.append)
    p.want("edge", -5)
    p.want("edge", -5)  # once
    time.sleep(0.05)
    assert p.prepared == 0 and ("edge", -5) not in memo
    rendered["edge"] = np.ones(2400, dtype=np.float32)
    p.ready("other")  # not waited for: nothing
    p.ready("edge")
    assert wait_for(lambda: p.prepared == 1)
    out = memo.get(("edge", -5))
    assert out is not None and prepared[0] is out
    assert abs(len(out) - 2400 * 2 ** (5 / 12)) <= 1
    p.close()
    assert spy.threads == ["repitch"]


def test_live_engine_re_pitches_beyond_range_notes_off_the_audio_thread(tmp_path: Any) -> None:
    info = ModelInfo(model_id="m-0001", codec="harmonic", sample_rate=SR, pitch_range=(48, 72))
    cache = RenderCache(info.model_id, info.codec)
    t = np.arange(SR, dtype=np.float32) / SR
    for p in (60, 64, 72):
        cache.put(cache.key(0.0, 0.0, p, 0),
                  (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))

    class Stub:
        pending = 0

        def request(self, key: Any, deadline_s: float, speculative: bool = False,
                    cancellable: bool = False, stream: bool = False) -> bool:
            return False

        def cancel(self, keys: list[Any]) -> None:
            pass

    s = Settings().replace(audio="none", patch_dir=tmp_path, lookahead_s=0.2)
    rig = build_rig(s, info, backend="none", make_renderer=lambda c: Stub(), cache=cache)
    engine, audio = rig.engine, rig.audio
    engine.prerender_banks = False
    fallbacks = engine.scheduler.fallbacks
    spy = SpyRepitch()
    fallbacks.repitch_fn = spy
    assert fallbacks.preparer is not None
    fallbacks.preparer.repitch_fn = spy
    audio.start()
    try:
        assert engine.submit("at 0 0").ok
        assert engine.submit('seq s "C4 E4 C4 C6" 1').ok  # C6 (84): C5 (72) 12 up
        time.sleep(2.5)
    finally:
        audio.close()
        engine.close()
    assert engine.scheduler.counters.notes >= 4 and engine.scheduler.counters.late == 0
    assert fallbacks.preparer.prepared >= 1 and fallbacks.repitched_in_hook == 0
    assert spy.threads and "pgesam-audio" not in spy.threads
