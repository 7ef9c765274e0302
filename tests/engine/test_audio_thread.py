"""Nothing slow on the audio thread: with the cache's notes on a slow disk (each read 50 ms) and
the journal on a slow disk (each flush 50 ms), a sequence plays on the real-time clock and
every disk read and journal write happens on a thread other than the audio thread; the audio
hook builds no snapshot (its state events carry only the point)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app.build import build_rig  # noqa: E402
from pgesam_live.engine.door import ModelInfo  # noqa: E402
from pgesam_live.render.cache import RenderCache  # noqa: E402
from pgesam_live.sessions.journal import Journal, make_header  # noqa: E402
from pgesam_live.settings import Settings  # noqa: E402

SR = 24000
SLOW_S = 0.05


class _StubRenderer:
    """Renders nothing: every note of the test is on disk already (a restart)."""

    def __init__(self, cache: RenderCache) -> None:
        self.cache = cache
        self.pending = 0

    def request(self, key: Any, deadline_s: float,
                speculative: bool = False, cancellable: bool = False,
                stream: bool = False) -> bool:
        if key in self.cache:
            self.cache.prefetch(key)
        return False

    def cancel(self, keys: list[Any]) -> None:
        pass


class _SlowFile:
    def __init__(self, fh: Any, threads: list[str]) -> None:
        self._fh, self._threads = fh, threads

    def write(self, text: str) -> int:
        return self._fh.write(text)

    def writelines(self, lines: Any) -> None:
        self._fh.writelines(lines)

    def flush(self) -> None:
        self._threads.append(threading.current_thread().name)
        time.sleep(SLOW_S)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def test_no_disk_io_and_no_snapshot_on_the_audio_thread(tmp_path: Path) -> None:
    info = ModelInfo(model_id="m-0001", codec="harmonic", sample_rate=SR, pitch_range=(48, 72))
    spill = tmp_path / "notes"
    first = RenderCache(info.model_id, info.codec, spill_dir=spill)
    t = np.arange(SR, dtype=np.float32) / SR
    for p in (60, 64, 67):
        first.put(first.key(0.0, 0.0, p, 0), (0.2 * np.sin(2 * np.pi * 220 * t)).astype(
            np.float32))
    cache = RenderCache(info.model_id, info.codec, spill_dir=spill)  # on disk only
    read_threads: list[str] = []
    fast_read = cache.read_file

    def slow_read(path: Path) -> np.ndarray:
        read_threads.append(threading.current_thread().name)
        time.sleep(SLOW_S)
        return fast_read(path)

    cache.read_file = slow_read
    s = Settings().replace(audio="none", patch_dir=tmp_path, lookahead_s=0.2)
    rig = build_rig(s, info, backend="none", make_renderer=_StubRenderer, cache=cache)
    engine, audio = rig.engine, rig.audio
    engine.prerender_banks = False
    flush_threads: list[str] = []
    journal = Journal(tmp_path / "s.jsonl", make_header(info.model_id, 0, 120.0),
                      background=True, file_wrapper=lambda fh: _SlowFile(fh, flush_threads))
    engine.add_listener(journal)
    states: list[dict[str, Any]] = []
    engine.add_listener(lambda ev: states.append(ev) if ev["kind"] == "state" else None)
    audio.start()
    try:
        assert engine.submit("at 0 0").ok
        assert engine.submit('seq s "C4 E4 G4 E4" 0.25').ok
        for _ in range(5):
            assert engine.submit("tempo 120").ok
            time.sleep(0.1)
        time.sleep(1.0)
        cache.clear_memory()  # the notes go back to disk only: read again, off the thread
        time.sleep(1.0)
    finally:
        audio.close()
        cache.close()
        journal.close()
    assert read_threads and flush_threads  # the slow paths were taken
    assert "pgesam-audio" not in read_threads + flush_threads
    assert rig.voices.stats()["voices"] > 0 and engine.scheduler.counters.notes > 0
    # The audio hook emits a change, not a snapshot: the point only.
    assert states and all(set(ev) == {"kind", "point"} for ev in states)
    # Each block's callback stayed far below the slow disk's 50 ms.
    assert max(audio.block_times_s) < SLOW_S


def test_the_journal_text_of_a_command_is_made_when_submitted_not_in_the_hook(
        tmp_path: Path, monkeypatch: Any) -> None:
    from pgesam_live.vocab.commands import Command  # noqa: PLC0415

    info = ModelInfo(model_id="m-0001", codec="harmonic", sample_rate=SR, pitch_range=(48, 72))
    cache = RenderCache(info.model_id, info.codec)
    s = Settings().replace(audio="none", patch_dir=tmp_path)
    engine = build_rig(s, info, backend="none", make_renderer=_StubRenderer, cache=cache).engine
    made_on: list[str] = []
    to_line = Command.to_line

    def spy(self: Command) -> str:
        made_on.append(threading.current_thread().name)
        return to_line(self)

    monkeypatch.setattr(Command, "to_line", spy)
    events: list[dict[str, Any]] = []
    engine.add_listener(lambda ev: events.append(ev) if ev["kind"] == "command" else None)
    assert engine.submit("tempo 100").ok and engine.submit("at 0.25 0.5").ok
    hook = threading.Thread(target=engine.on_block, args=(0.0,), name="hook")
    hook.start()
    hook.join()
    assert [ev["cmd"] for ev in events] == ["tempo 100", "at 0.25 0.5"]
    assert made_on and "hook" not in made_on
