"""RenderCache: keys, LRU by bytes, spill + warm restart, corrupt files, fallbacks, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from pgesam_live.errors import ConfigError
from pgesam_live.render.cache import RenderCache, default_spill_root
from pgesam_live.render.dsp import repitch
from pgesam_live.render.keys import NoteKey, quantise

SR = 24000


def note(n: int, value: float = 0.1) -> np.ndarray:
    return np.full(n, value, dtype=np.float32)


def test_keys_are_quantised_and_hashable() -> None:
    c = RenderCache("m1", "harmonic", grid=0.02)
    k = c.key(0.4249, -0.3101, 60, 0)
    assert k == NoteKey("m1", "harmonic", 0.42, -0.32, 60, 0)
    assert c.key(0.4201, -0.3199, 60, 0) == k and hash(c.key(0.4201, -0.3199, 60)) == hash(k)
    assert c.key(0.45, -0.32, 60) != k and c.key(0.42, -0.32, 61) != k
    assert c.key(0.42, -0.32, 60, seed=1) != k
    assert quantise(-0.001, 0.02) == 0.0 and str(quantise(-0.001, 0.02)) == "0.0"  # no -0.0
    coarse = RenderCache("m1", "harmonic", grid=0.25)
    assert coarse.key(0.3, 0.4, 60).xq == 0.25 and coarse.key(0.3, 0.4, 60).yq == 0.5
    with pytest.raises(ConfigError):
        RenderCache("m1", "harmonic", grid=0.0)


def test_get_put_counts_and_read_only() -> None:
    c = RenderCache("m1", "harmonic")
    k = c.key(0.1, 0.2, 60)
    assert c.get(k) is None and c.misses == 1 and k not in c
    src = note(100)
    c.put(k, src)
    src[:] = 9.0  # the cache kept its own copy
    got = c.get(k)
    assert got is not None and got.dtype == np.float32 and float(got[0]) == pytest.approx(0.1)
    assert c.hits == 1 and k in c
    with pytest.raises(ValueError):
        got[0] = 1.0  # read-only: nobody can change a cached note under the audio thread
    with pytest.raises(ConfigError):
        c.put(NoteKey("other", "harmonic", 0.0, 0.0, 60, 0), note(10))
    with pytest.raises(ConfigError):
        c.put(k, np.zeros((2, 10), dtype=np.float32))


def test_lru_eviction_by_bytes() -> None:
    c = RenderCache("m1", "harmonic", max_bytes=4 * 1000 * 4)  # four notes of 1000 samples
    keys = [c.key(0, 0, p) for p in range(60, 66)]
    for k in keys[:4]:
        c.put(k, note(1000))
    assert c.stats()["entries"] == 4 and c.stats()["fill"] == pytest.approx(1.0)
    assert c.get(keys[0]) is not None  # 60 is now the most recently used
    c.put(keys[4], note(1000))  # evicts the least recently used: 61
    assert keys[1] not in c and keys[0] in c and keys[4] in c
    c.put(keys[5], note(2000))  # needs two slots: evicts 62 and 63
    assert keys[2] not in c and keys[3] not in c
    s = c.stats()
    assert s["bytes"] <= s["max_bytes"] and s["evictions"] == 3 and s["entries"] == 3
    big = c.key(1, 1, 60)
    c.put(big, note(10_000))  # bigger than the whole budget: not kept, nothing evicted
    assert big not in c and c.stats()["entries"] == 3


def test_spill_and_warm_restart(tmp_path: Path) -> None:
    c = RenderCache("model-abc123", "harmonic", spill_dir=tmp_path)
    keys = [c.key(0.1 * i, -0.2, 60 + i, 7) for i in range(5)]
    for i, k in enumerate(keys):
        c.put(k, note(500, 0.01 * (i + 1)))
    folder = tmp_path / "model-abc123"
    assert len(list(folder.glob("*.npy"))) == 5 and not list(folder.glob(".tmp-*"))
    # A restart: a new cache on the same folder knows every note before anything is loaded.
    c2 = RenderCache("model-abc123", "harmonic", spill_dir=tmp_path)
    assert c2.stats()["entries"] == 0 and c2.stats()["disk_entries"] == 5
    assert all(k in c2 for k in keys)
    got = c2.get(keys[3])
    assert got is not None and float(got[0]) == pytest.approx(0.04) and c2.hits == 1
    assert c2.warm() == 4 and c2.stats()["entries"] == 5
    # Another model's cache does not see these notes.
    other = RenderCache("model-zzz", "harmonic", spill_dir=tmp_path)
    assert other.stats()["disk_entries"] == 0


def test_corrupt_spill_file_is_skipped_and_removed(tmp_path: Path) -> None:
    c = RenderCache("m1", "harmonic", spill_dir=tmp_path)
    good, bad, trunc = c.key(0, 0, 60), c.key(0, 0, 61), c.key(0, 0, 62)
    for k in (good, bad, trunc):
        c.put(k, note(800))
    folder = tmp_path / "m1"
    (folder / bad.file_name()).write_bytes(b"this is not a numpy file")
    data = (folder / trunc.file_name()).read_bytes()
    (folder / trunc.file_name()).write_bytes(data[: len(data) // 2])
    (folder / ".tmp-crashed.npy").write_bytes(b"half a write")
    c2 = RenderCache("m1", "harmonic", spill_dir=tmp_path)
    assert not (folder / ".tmp-crashed.npy").exists()
    assert c2.get(bad) is None and c2.get(trunc) is None
    assert c2.stats()["corrupt"] == 2 and c2.misses == 2
    assert not (folder / bad.file_name()).exists() and bad not in c2
    assert c2.get(good) is not None
    assert c2.warm() == 0  # nothing left to load, nothing crashes


def test_disk_is_capped(tmp_path: Path) -> None:
    c = RenderCache("m1", "harmonic", spill_dir=tmp_path, max_disk_bytes=3 * 4200)
    for p in range(60, 66):
        c.put(c.key(0, 0, p), note(1000))
    files = list((tmp_path / "m1").glob("*.npy"))
    assert len(files) == 3 and c.stats()["disk_bytes"] <= 3 * 4200


def test_default_spill_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_spill_root() == tmp_path / "pgesam-live" / "notes"
    c = RenderCache("m/1", "harmonic", spill_dir="default")
    assert c.spill_path == tmp_path / "pgesam-live" / "notes" / "m-1"


def test_nearest_pitch_and_nearest_point() -> None:
    c = RenderCache("m1", "harmonic", grid=0.1)
    for p in (55, 60, 64):
        c.put(c.key(0.3, 0.3, p), note(100, p / 100))
    c.put(c.key(0.3, 0.3, 62, seed=1), note(100))  # another seed: never a candidate
    found = c.nearest_pitch(c.key(0.3, 0.3, 62))
    assert found is not None and found[0].pitch == 60  # tie 60/64: the lower one
    found = c.nearest_pitch(c.key(0.3, 0.3, 63))
    assert found is not None and found[0].pitch == 64
    assert c.nearest_pitch(c.key(0.3, 0.3, 51)) is None  # 4 semitones away
    assert c.nearest_pitch(c.key(0.5, 0.3, 60)) is None  # another point
    c.put(c.key(-0.5, 0.5, 60), note(100))
    c.put(c.key(0.9, 0.9, 60), note(100))
    found = c.nearest_point(c.key(0.5, 0.4, 60))
    assert found is not None and (found[0].xq, found[0].yq) == (0.3, 0.3)
    assert c.nearest_point(c.key(0.5, 0.4, 60), max_distance=0.1) is None
    assert c.nearest_point(c.key(0.5, 0.4, 70)) is None
    # Fallback lookups are not cache hits or misses: the scheduler counts them.
    assert c.hits == 0 and c.misses == 0
    c.count_late()
    c.count_fallback(2)
    assert c.stats()["late"] == 1 and c.stats()["fallbacks"] == 2


def test_evicted_notes_leave_the_fallback_index() -> None:
    c = RenderCache("m1", "harmonic", max_bytes=2 * 400)
    c.put(c.key(0, 0, 60), note(100))
    c.put(c.key(0, 0, 61), note(100))
    c.put(c.key(0, 0, 70), note(100))  # evicts 60
    found = c.nearest_pitch(c.key(0, 0, 59))
    assert found is not None and found[0].pitch == 61


def test_repitch_shifts_pitch_and_length() -> None:
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    up = repitch(x, 2.0)
    assert up.dtype == np.float32
    assert len(up) == pytest.approx(len(x) / 2 ** (2 / 12), rel=0.003)  # higher is shorter

    def f0(sig: np.ndarray) -> float:
        n = 1 << 18
        spec = np.abs(np.fft.rfft(sig * np.hanning(len(sig)), n))
        return float(np.argmax(spec) * SR / n)

    cents = 1200 * np.log2(f0(up) / (440.0 * 2 ** (2 / 12)))
    assert abs(cents) < 3.0
    down = repitch(x, -3.0)
    assert len(down) > len(x)
    assert abs(1200 * np.log2(f0(down) / (440.0 * 2 ** (-3 / 12)))) < 3.0
    assert np.array_equal(repitch(x, 0), x)


def test_thread_safety_smoke(tmp_path: Path) -> None:
    c = RenderCache("m1", "harmonic", max_bytes=50 * 4000, spill_dir=tmp_path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(offset: int) -> None:
        try:
            for i in range(150):
                k = c.key(0.02 * (i % 30), 0.0, 40 + (i + offset) % 40)
                c.put(k, note(1000, 0.001 * (i % 10 + 1)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        try:
            while not stop.is_set():
                for p in range(40, 80):
                    k = c.key(0.1, 0.0, p)
                    a = c.get(k)
                    assert a is None or (a.dtype == np.float32 and len(a) == 1000)
                    c.nearest_pitch(k)
                    c.nearest_point(k)
                c.stats()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 7)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    s = c.stats()
    assert s["bytes"] <= s["max_bytes"]
    assert s["bytes"] == sum(a.nbytes for a in c._mem.values())  # bookkeeping stayed exact
    assert s["hits"] + s["misses"] > 0


def _slow_reads(cache: RenderCache, delay_s: float = 0.05) -> list[float]:
    """A slow-disk double: every spilled-note read takes `delay_s`."""
    import time

    reads: list[float] = []
    real = cache.read_file

    def slow(path: Path) -> np.ndarray:
        time.sleep(delay_s)
        reads.append(delay_s)
        return real(path)

    cache.read_file = slow
    return reads


def test_the_audio_thread_never_reads_the_disk(tmp_path: Path) -> None:
    """A spilled note asked for without blocking (the audio thread's source) is a miss now
    and is read by the loader thread; the caller never waits for the disk."""
    import time

    from pgesam_live.render.cache import AudioThreadSource

    first = RenderCache("m", "harmonic", spill_dir=tmp_path)
    k = first.key(0.1, 0.2, 60, 0)
    first.put(k, np.ones(1000, np.float32))
    cache = RenderCache("m", "harmonic", spill_dir=tmp_path)  # a restart: on disk only
    reads = _slow_reads(cache)
    source = AudioThreadSource(cache)
    t0 = time.perf_counter()
    assert source.get(k) is None and not cache.in_memory(k)
    assert source.nearest_pitch(cache.key(0.1, 0.2, 61, 0)) is None
    assert time.perf_counter() - t0 < 0.02  # no 50 ms read on this thread
    deadline = time.monotonic() + 5
    while not cache.in_memory(k) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.in_memory(k) and reads and cache.background_loads >= 1
    assert source.get(k) is not None
    cache.close()


def test_prefetch_reads_a_spilled_note_ahead(tmp_path: Path) -> None:
    import time

    first = RenderCache("m", "harmonic", spill_dir=tmp_path)
    k = first.key(0.3, 0.3, 62, 0)
    first.put(k, np.ones(500, np.float32))
    cache = RenderCache("m", "harmonic", spill_dir=tmp_path)
    _slow_reads(cache)
    cache.prefetch(k)
    deadline = time.monotonic() + 5
    while not cache.in_memory(k) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.in_memory(k)
    cache.close()


def test_a_training_instruments_point_is_rendered_exactly_not_at_its_grid_node() -> None:
    """`at violin` plays the violin's own point (where the decoder and its spectral memory
    were fitted), not a grid node up to half a step away that may be nearer another
    instrument; a point off every instrument keeps its grid node."""
    violin, near_other = (0.4713, -0.1107), (0.4809, -0.1191)  # both round to (0.48, -0.12)
    c = RenderCache("m", "harmonic", grid=0.02, anchors=[violin, near_other])
    k = c.key(*violin, 60)
    assert (k.xq, k.yq) == violin
    k = c.key(violin[0] + 0.004, violin[1], 60)  # within a quarter step: the violin
    assert (k.xq, k.yq) == violin
    k = c.key(*near_other, 60)
    assert (k.xq, k.yq) == near_other
    k = c.key(0.30, 0.10, 60)
    assert (k.xq, k.yq) == (0.3, 0.1)
    plain = RenderCache("m", "harmonic", grid=0.02)
    assert (plain.key(*violin, 60).xq, plain.key(*violin, 60).yq) == (0.48, -0.12)
