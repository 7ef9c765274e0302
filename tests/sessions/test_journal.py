"""Session journal: write, read back, partial last line, bad lines named."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest

from pgesam_live.errors import DataError
from pgesam_live.sessions.journal import (
    Journal,
    make_header,
    read_journal,
    replay_schedule,
    session_path,
)
from pgesam_live.vocab.commands import parse_line


def _journal(tmp_path: Path) -> Path:
    path = session_path(tmp_path, dt.datetime(2025, 3, 1, 12, 30, 5))
    assert path.name == "20250301-123005.jsonl"
    header = make_header("pgesam-small-1a2b3c4d", 7, 120)
    with Journal(path, header) as j:
        j({"kind": "command", "t": 0.5, "src": "repl", "cmd": "tempo 96"})
        j({"kind": "message", "text": "ignored"})
        j({"kind": "command", "t": 1.25, "src": "osc", "cmd": parse_line("at 0.1 -0.2").to_line()})
        j({"kind": "command", "t": 1.0, "src": "midi", "cmd": "note 60 0.5"})
        assert j.count == 3
    return path


def test_write_and_read(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert first["pgesam_session"] == 1 and first["seed"] == 7 and first["tempo"] == 120.0
    dt.datetime.fromisoformat(first["started"])
    assert json.loads(lines[1]) == {"t": 0.5, "src": "repl", "cmd": "tempo 96"}
    header, entries = read_journal(path)
    assert header["model"] == "pgesam-small-1a2b3c4d"
    assert [(e.t_s, e.src, e.cmd) for e in entries] == [
        (0.5, "repl", "tempo 96"), (1.25, "osc", "at 0.1 -0.2"), (1.0, "midi", "note 60 0.5")]
    assert not entries.truncated
    _, sched = replay_schedule(path)
    assert [t for t, _, _ in sched] == [0.5, 1.0, 1.25]
    assert sched[1][2] == parse_line("note 60 0.5")


def test_lines_are_flushed_while_open(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    j = Journal(path, make_header("m", 0, 120))
    j.write(0.1, "repl", "hush")
    _, entries = read_journal(path)  # read by another reader before close
    assert len(entries) == 1
    j.close()
    j.write(0.2, "repl", "hush")  # after close: ignored, not a crash
    assert len(read_journal(path)[1]) == 1


def test_partial_last_line_is_dropped(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"t": 2.0, "src": "repl", "cmd": "pla')  # the crash, mid-write
    header, entries = read_journal(path)
    assert len(entries) == 3 and entries.truncated
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n")  # an editor added the newline: still the cut-off last line
    assert read_journal(path)[1].truncated and len(read_journal(path)[1]) == 3


def test_bad_line_in_the_middle_is_named(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    lines = path.read_text().splitlines()
    lines.insert(2, "garbage{")
    path.write_text("\n".join(lines) + "\n")
    header, entries = read_journal(path)  # the rest of the session is kept
    assert len(entries) == 3 and not entries.truncated
    assert len(entries.skipped) == 1 and ":3: not JSON" in entries.skipped[0]


@pytest.mark.parametrize("obj, fragment", [
    ({"t": -1, "src": "repl", "cmd": "hush"}, '"t"'),
    ({"t": 1, "src": 3, "cmd": "hush"}, '"src"'),
    ({"t": 1, "src": "repl", "cmd": "tempo 9000"}, "out of range"),
    ({"t": 1, "src": "repl", "cmd": "status"}, "front-end word"),
])
def test_bad_entries(tmp_path: Path, obj: dict, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"t": 2, "src": "repl", "cmd": "hush"}
    path.write_text("\n".join(json.dumps(o) for o in (make_header("m", 0, 120), obj, good, obj,
                                                       good)) + "\n")
    _, entries = read_journal(path)
    assert [e.line_no for e in entries] == [3, 5]  # every good line, around the bad ones
    assert len(entries.skipped) == 2, entries.skipped  # every bad one named
    assert all(fragment in x for x in entries.skipped)
    assert "bad.jsonl:2" in entries.skipped[0] and "bad.jsonl:4" in entries.skipped[1]


def test_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(DataError, match="not a pgesam session"):
        read_journal(path)
    with pytest.raises(DataError, match="cannot read"):
        read_journal(tmp_path / "missing.jsonl")
    path.write_text('{"pgesam_session": 2, "model": "m"}\n')
    with pytest.raises(DataError, match=r'x.jsonl:1: journal format "pgesam_session": 2 is not '
                                        r"one this build reads \(1\)"):
        read_journal(path)
    path.write_text('garbage\n{"t": 1, "src": "repl", "cmd": "hush"}\n')
    with pytest.raises(DataError, match="x.jsonl:1: not JSON.*must be the journal's header"):
        read_journal(path)


def test_never_clobbers_and_threads_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    j = Journal(path, make_header("m", 0, 120))
    with pytest.raises(FileExistsError):
        Journal(path, make_header("m", 0, 120))

    def writer(k: int) -> None:
        for i in range(200):
            j.write(k + i / 1000, "osc", f"note {40 + k}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    j.close()
    assert len(read_journal(path)[1]) == 800
    assert session_path(tmp_path, dt.datetime(2025, 1, 1)) != session_path(tmp_path)


def test_a_session_name_is_free_for_its_journal_and_its_recording(tmp_path: Path) -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    (tmp_path / "20260102-030405.wav").write_bytes(b"")  # a recording of that second
    assert session_path(tmp_path, now).name == "20260102-030405-2.jsonl"


def test_a_journal_that_cannot_write_keeps_its_lines_and_says_so_once(tmp_path: Path) -> None:
    j = Journal(tmp_path / "s.jsonl", make_header("m", 0, 120))
    said: list[str] = []
    j.on_error = said.append
    real = j._fh
    assert real is not None

    class Full:  # a disk with no room left, then room again
        room = False

        def write(self, text: str) -> int:
            return real.write(text)

        def flush(self) -> None:
            if not self.room:
                raise OSError(28, "No space left on device")
            real.flush()

        def writelines(self, lines: list[str]) -> None:
            real.writelines(lines)

        def close(self) -> None:
            real.close()

    full = Full()
    j._fh = full  # type: ignore[assignment]
    for k in range(3):
        j.write(0.1 * k, "repl", f"tempo {100 + k}")
    assert len(said) == 1 and "No space left" in said[0] and j.error
    full.room = True
    j.write(0.5, "repl", "hush")
    j.close()
    assert j.error is None
    _, entries = read_journal(j.path)
    assert [e.cmd for e in entries] == ["tempo 100", "tempo 101", "tempo 102", "hush"]


def test_a_journal_saved_with_a_bom_reads(tmp_path: Path) -> None:
    p = tmp_path / "bom.jsonl"
    p.write_bytes(("\ufeff" + json.dumps(make_header("m", 0, 120)) + "\n"
                   + json.dumps({"t": 1.0, "src": "repl", "cmd": "hush"}) + "\n").encode())
    assert [e.cmd for e in read_journal(p)[1]] == ["hush"]


class _SlowFile:
    """A slow-disk double for the journal: every flush takes `delay_s`."""

    def __init__(self, fh: Any, delay_s: float = 0.05) -> None:
        self._fh, self.delay_s, self.flushes = fh, delay_s, 0

    def write(self, text: str) -> int:
        return self._fh.write(text)

    def writelines(self, lines: Any) -> None:
        self._fh.writelines(lines)

    def flush(self) -> None:
        import time

        time.sleep(self.delay_s)
        self.flushes += 1
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def test_a_background_journal_never_waits_for_the_disk(tmp_path: Path) -> None:
    """The engine's events arrive in the audio hook: queued there, written by the journal's
    own thread (each line still flushed), all of them by close()."""
    import time

    path = tmp_path / "s.jsonl"
    j = Journal(path, make_header("m", 0, 120), background=True, file_wrapper=_SlowFile)
    t0 = time.perf_counter()
    for i in range(20):
        j({"kind": "command", "t": i * 0.1, "src": "repl", "cmd": "hush"})
    assert time.perf_counter() - t0 < 0.05  # 20 slow flushes would take a second
    j.close()
    _, entries = read_journal(path)
    assert [e.t_s for e in entries] == pytest.approx([i * 0.1 for i in range(20)])
    assert j.count == 20


@pytest.mark.parametrize("background", [False, True])
def test_an_undecodable_file_name_is_journalled_and_read_back(tmp_path: Path,
                                                              background: bool) -> None:
    """A patch named with a byte that is not UTF-8 (Python hands it over as a lone
    surrogate) is written escaped; the lines after it are not lost, and it reads back the
    same name."""
    path = tmp_path / "s.jsonl"
    name = "caf\udce9.yaml"
    with Journal(path, make_header("m", 0, 120), background=background) as j:
        j({"kind": "command", "t": 0.1, "src": "repl", "cmd": f'load "{name}"'})
        j({"kind": "command", "t": 0.2, "src": "repl", "cmd": "tempo 96"})
        j({"kind": "command", "t": 0.3, "src": "repl", "cmd": 'load "café.yaml"'})
        j.drain()
        assert j.error is None
    _, entries = read_journal(path)
    assert [e.cmd for e in entries] == [f'load "{name}"', "tempo 96", 'load "café.yaml"']
    assert "café" in path.read_text(encoding="utf-8")  # readable where it can be


def test_a_load_line_keeps_the_patchs_hash_and_a_replay_says_when_the_file_changed(
        tmp_path: Path) -> None:
    from pgesam_live.patches.files import find_patch
    from pgesam_live.sessions.journal import patch_changes

    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "jam.yaml").write_text("pgesam: 1\ntempo: 100\n")
    (patches / "other.yaml").write_text("pgesam: 1\n")
    path = tmp_path / "s.jsonl"
    def find(name: str) -> Path:
        return find_patch(name, patches)

    with Journal(path, make_header("m", 0, 120), find_patch=find) as j:
        j({"kind": "command", "t": 0.5, "src": "repl", "cmd": "load jam.yaml"})
        j({"kind": "command", "t": 0.6, "src": "repl", "cmd": "load other.yaml"})
        j({"kind": "command", "t": 0.7, "src": "repl", "cmd": "tempo 90"})
    lines = [json.loads(raw) for raw in path.read_text().splitlines()[1:]]
    assert len(lines[0]["patch_sha256"]) == 64 and "patch_sha256" not in lines[2]
    assert patch_changes(path, find) == []  # unchanged: nothing to say
    (patches / "jam.yaml").write_text("pgesam: 1\ntempo: 140\n")
    (changed,) = patch_changes(path, find)
    assert changed.startswith("line 2: `load jam.yaml`: the patch has changed since the "
                              "session") and "plays it as it is now" in changed
    # The journal reads as before: the hash is an extra key.
    assert [e.cmd for e in read_journal(path)[1]] == ["load jam.yaml", "load other.yaml",
                                                     "tempo 90"]
