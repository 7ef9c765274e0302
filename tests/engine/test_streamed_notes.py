"""Streamed notes through the engine (offline clock): a note not cached whose head has come
starts from the head and plays on into the note when it arrives, sample for sample what the
cached note would have played; the status line says so; a held one loops and releases."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.render.loop import envelope_db  # noqa: E402
from pgesam_live.render.stream import NoteStream  # noqa: E402
from pgesam_live.vocab.views import status_line  # noqa: E402
from tests.engine.test_held import SR, fake_note, make_rig, sounding_until  # noqa: E402


class StreamingSource:
    """The offline source, except that the notes of `streams` are not cached: they stream."""

    def __init__(self, inner: Any, streams: dict[Any, NoteStream]) -> None:
        self.inner, self.streams = inner, streams

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, key: Any) -> NoteStream | None:
        return self.streams.get(key)

    def get(self, key: Any) -> np.ndarray | None:
        return None if key in self.streams else self.inner.get(key)


def session(streamed: bool, hold: bool, arrive_s: float, until_s: float) -> tuple[Any, Any]:
    rig = make_rig()
    note = fake_note(60, 0.0) * np.float32(0.5 / 0.6)  # at the playing level, as cached
    st = NoteStream(note[: int(0.4 * SR)], 60, SR)
    if streamed:
        key = rig.cache.key(0.0, 0.0, 60, rig.engine.scheduler.seed)
        rig.engine.scheduler.source = StreamingSource(rig.engine.scheduler.source, {key: st})
    else:
        rig.cache.put(rig.cache.key(0.0, 0.0, 60, rig.engine.scheduler.seed), note)
    for t, line in [(0.0, "at 0 0"), (0.5, "note C4 0.8" + (" hold" if hold else ""))]:
        assert rig.engine.submit(line, src="midi", at_s=t).ok
    if hold:
        assert rig.engine.submit("release C4", src="midi", at_s=6.0).ok
    rig.run_until(arrive_s)
    st.finish(note)
    rig.run_until(until_s)
    out = rig.audio.render_to_array()[:, 0]
    snap = rig.engine.snapshot()
    rig.close()
    return out, snap, st


def test_a_streamed_one_shot_sounds_as_the_cached_note_would() -> None:
    cached, snap0, _ = session(False, False, 0.6, 5.0)
    out, snap, st = session(True, False, 0.6, 5.0)  # the note comes 0.1 s into the note
    np.testing.assert_allclose(out, cached, atol=1e-6)
    assert snap["streamed_notes"] == 1 and snap["late_notes"] == 0
    assert snap0["streamed_notes"] == 0
    assert "streamed 1" in status_line(snap) and "streamed" not in status_line(snap0)
    assert st.starved == 0


def test_a_head_that_runs_out_is_silent_until_its_note_and_counted() -> None:
    out, _, st = session(True, False, 1.2, 5.0)  # the head (0.4 s) is over at 0.9 s
    assert st.starved == 1
    assert not out[int(0.95 * SR): int(1.15 * SR)].any()


def test_a_streamed_held_note_loops_past_its_render_and_releases_into_its_own_release() -> None:
    out, snap, _ = session(True, True, 0.6, 8.0)
    assert snap["streamed_notes"] == 1 and snap["held_notes"] == 1
    assert sounding_until(out) == pytest.approx(6.0 + 0.9, abs=0.2)  # held 5.5 s, own release
    env = envelope_db(out, SR)
    held = env[100:590]  # 1 s .. 5.9 s: past the render's 3 s sustain, looped at its level
    assert held.max() - held.min() < 1.5
