"""The session journal: what was performed, one accepted command per line, for replay.

Format (docs: the user contract, "Session journal"): `sessions/<YYYYmmdd-HHMMSS>.jsonl`,
append-only, one JSON object per line, flushed per line. First the header
`{"pgesam_session": 1, "model": .., "seed": .., "tempo": .., "started": <ISO time>}`, then
`{"t": <engine seconds since start>, "src": "repl|osc|midi|patch", "cmd": "<REPL line>"}`.
`t` is the engine time the engine gave the command (for a bundle with a future timetag, the
time it plays), so a replay needs no guessing. A `load` line also carries `"patch_sha256"`,
the patch file's content hash then, so a replay can say when the file has changed since
(`patch_changes`). A journal cut off by a crash mid-line reads up to its last whole line.

`Journal` is an engine listener (`engine.add_listener(journal)`); `read_journal` and
`replay_schedule` give the replay (live or offline: sessions/replay.py, wired in app/) its commands in order.
"""

from __future__ import annotations

import datetime as _dt
import json
import queue
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pgesam_live.vocab.commands import Command, parse_line
from pgesam_live import faults
from pgesam_live.errors import CommandError, DataError
from pgesam_live.files import stamped_path
from pgesam_live.vocab.sources import SOURCES as SOURCE_POLICIES

SESSION_FORMAT = 1
SOURCES = tuple(SOURCE_POLICIES)  # repl, osc, midi, patch, web


def session_path(session_dir: str | Path, now: _dt.datetime | None = None) -> Path:
    """A fresh `<dir>/<YYYYmmdd-HHMMSS>.jsonl` (suffixed -2, -3.. if that second is taken),
    whose recording `<same name>.wav` is free too: a session's two files share one name."""
    return stamped_path(session_dir, ".jsonl", ".wav", now)


def make_header(model: str, seed: int, tempo_bpm: float,
                started: _dt.datetime | None = None, *, lookahead_s: float | None = None,
                sample_rate: int | None = None,
                cache_grid: float | None = None) -> dict[str, Any]:
    """The journal's first line. `started` defaults to now, local time with its offset. The
    settings a replay needs to sound the same (the look-ahead decides the point a note of a
    sequence is rendered at, the cache grid the points rendered, the rate the recording's):
    written when given; a replay takes them unless its command line says otherwise."""
    when = started or _dt.datetime.now().astimezone()
    header = {"pgesam_session": SESSION_FORMAT, "model": model, "seed": int(seed),
              "tempo": float(tempo_bpm), "started": when.isoformat(timespec="seconds")}
    for key, value in (("lookahead_s", lookahead_s), ("sample_rate", sample_rate),
                       ("cache_grid", cache_grid)):
        if value is not None:
            header[key] = value
    return header


class Journal:
    """Append-only journal writer; call it with engine events (it keeps only "command" ones).

    Thread-safe (engine listeners are called from any thread); every line is flushed so a
    crash loses at most the line being written. A line that cannot be written (disk full) is
    kept and written with the next one that can; `on_error` hears of it once, and nothing
    here raises into the performance.

    background: the engine's events (called in the audio hook) are queued and written by a
    thread of the journal's own, so a slow disk never holds up an audio block; `close()`
    writes what is queued. file_wrapper: wraps the open file (a slow-disk double)."""

    def __init__(self, path: str | Path, header: dict[str, Any], background: bool = False,
                 file_wrapper: Callable[[IO[str]], IO[str]] | None = None,
                 find_patch: Callable[[str], Path] | None = None) -> None:
        if header.get("pgesam_session") != SESSION_FORMAT:
            raise DataError(f"journal header needs pgesam_session: {SESSION_FORMAT}; "
                            "build it with session.make_header()")
        self.path = Path(path)
        self.find_patch = find_patch  # a `load NAME` line's patch file (for its hash)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.error: str | None = None  # why lines are waiting (None: all written)
        self.on_error: Any = None  # called once with a line for the performer
        self._backlog: list[str] = []
        self._lock = threading.Lock()
        # "x": never append to (or clobber) another session's journal
        self._fh: IO[str] | None = open(self.path, "x", encoding="utf-8")  # noqa: SIM115
        if file_wrapper is not None:
            self._fh = file_wrapper(self._fh)
        self._write_obj(header)
        self._queue: queue.SimpleQueue[tuple[float, str, str] | None] | None = None
        self._writer: threading.Thread | None = None
        if background:
            self._queue = queue.SimpleQueue()
            self._writer = threading.Thread(target=self._write_loop, name="journal",
                                            daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.write(*item)
            except Exception as exc:  # one bad line must not silence the rest of the session
                faults.record("journal: writing a line", exc)

    def _write_obj(self, obj: dict[str, Any]) -> None:
        assert self._fh is not None
        line = json.dumps(obj, ensure_ascii=False, allow_nan=False)
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # a file name's undecodable byte (`caf\udce9.yaml`):
                line = json.dumps(obj, allow_nan=False)  # escaped, read back the same
        self._backlog.append(line + "\n")
        try:
            while self._backlog:  # into the file's buffer, a whole line at a time...
                self._fh.write(self._backlog[0])
                self._backlog.pop(0)
            self._fh.flush()  # ...then to the disk (a failed flush keeps the buffer)
            self.error = None
        except OSError as e:
            first = self.error is None
            self.error = f"{e.strerror or e}"
            if first and self.on_error is not None:
                try:
                    self.on_error(f"journal {self.path}: cannot write ({self.error}); the "
                                  "performance goes on, its lines are kept and written when "
                                  "there is room")
                except Exception as exc:  # a broken listener must not stop the journal
                    faults.record("journal: telling of a write error", exc)

    def write(self, t_s: float, src: str, cmd_line: str) -> None:
        """Append one accepted command (no-op after close())."""
        with self._lock:
            if self._fh is None:
                return
            obj: dict[str, Any] = {"t": round(float(t_s), 6), "src": src, "cmd": cmd_line}
            sha = self._patch_sha(cmd_line)
            if sha is not None:
                obj["patch_sha256"] = sha
            self._write_obj(obj)
            self.count += 1

    def _patch_sha(self, cmd_line: str) -> str | None:
        """The content hash of the patch a `load` line loads (None: not a load, or the file
        cannot be read; the line is journalled without it)."""
        if self.find_patch is None or not cmd_line.startswith("load "):
            return None
        try:
            return _file_sha256(self.find_patch(parse_line(cmd_line).args["patch"]))
        except Exception:  # the hash is a help to replay, never a reason to lose the line
            return None

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "command":
            line = (event["t"], str(event.get("src", "repl")), str(event["cmd"]))
            if self._queue is not None:
                self._queue.put(line)  # written by the journal's thread
            else:
                self.write(*line)

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until the queued lines are written (background mode)."""
        import time  # noqa: PLC0415

        end = time.monotonic() + timeout_s
        while self._queue is not None and not self._queue.empty() and time.monotonic() < end:
            time.sleep(0.005)

    def close(self) -> None:
        """Write what is waiting (if it can) and close; never raises. `error` says what
        could not be written."""
        writer = self._writer
        if writer is not None and writer.is_alive() and self._queue is not None:
            self._queue.put(None)  # after the lines queued before it
            writer.join(timeout=10.0)
        with self._lock:
            if self._fh is None:
                return
            try:
                if self._backlog:
                    self._fh.writelines(self._backlog)
                    self._fh.flush()
                    self._backlog = []
                self._fh.close()
            except OSError as e:
                self.error = f"{e.strerror or e}; {len(self._backlog)} lines not written"
                try:
                    self._fh.close()
                except OSError:
                    pass
            self._fh = None

    @property
    def closed(self) -> bool:
        return self._fh is None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class JournalEntry:
    t_s: float
    src: str
    cmd: str
    line_no: int
    parsed: Command | None = field(default=None, compare=False, repr=False)
    patch_sha256: str | None = None  # a load line's: the patch file's hash when journalled

    def command(self) -> Command:
        """The line as a Command (parsed once, when the journal was read)."""
        return self.parsed if self.parsed is not None else parse_line(self.cmd)


class JournalEntries(list[JournalEntry]):
    """The entries in file order; `truncated` is True when a partial last line was dropped;
    `skipped` names each other bad line left out ("FILE:LINE: what is wrong")."""

    truncated: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []


def read_journal(path: str | Path) -> tuple[dict[str, Any], JournalEntries]:
    """(header, entries) of a journal. A partial last line (not JSON: a crash mid-write) is
    dropped and `entries.truncated` set; any other bad line after the header is left out and
    named in `entries.skipped` (the file, the line and what is wrong), so one damaged line
    never costs the rest of a session. A bad header raises DataError. Every `cmd` is checked
    with parse_line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig", errors="replace")  # (a BOM from an editor)
    except OSError as exc:
        raise DataError(f"{p}: cannot read the journal ({exc.strerror}); check the path") from None
    lines = text.split("\n")
    entries = JournalEntries()
    # The last line with text on it: cut off by a crash, it is dropped (with or without a
    # newline after it: an editor may have added one).
    last_text = max((i for i, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    header: dict[str, Any] | None = None
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            if i == last_text and i > 1:
                entries.truncated = True  # the crash case: keep everything before it
                break
            if header is None:
                raise DataError(f"{p}:{i}: not JSON ({exc.msg}); the first line must be the "
                                "journal's header") from None
            entries.skipped.append(f"{p}:{i}: not JSON ({exc.msg}); delete or repair that line")
            continue
        if header is None:
            header = _header(p, i, obj)
            continue
        try:
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{i}: expected a JSON object, got {type(obj).__name__}")
            entries.append(_entry(p, i, obj))
        except DataError as exc:
            entries.skipped.append(str(exc))
    if header is None:
        raise DataError(f"{p}: empty journal (no header line); record one with pgesam-live play")
    return header, entries


def _header(p: Path, i: int, obj: object) -> dict[str, Any]:
    """The first line, checked: a journal of this format's version."""
    if not isinstance(obj, dict) or "pgesam_session" not in obj:
        raise DataError(f"{p}:{i}: not a pgesam session journal (the first line needs "
                        f'"pgesam_session": {SESSION_FORMAT})')
    version = obj["pgesam_session"]
    if version != SESSION_FORMAT or isinstance(version, bool):
        raise DataError(f"{p}:{i}: journal format \"pgesam_session\": {json.dumps(version)} is "
                        f"not one this build reads ({SESSION_FORMAT}); replay it with the "
                        "pgesam-live that recorded it")
    return obj


def _entry(p: Path, i: int, obj: dict[str, Any]) -> JournalEntry:
    t = obj.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
        raise DataError(f"{p}:{i}: \"t\" must be seconds >= 0, got {t!r}")
    src, cmd = obj.get("src"), obj.get("cmd")
    if not isinstance(src, str):
        raise DataError(f"{p}:{i}: \"src\" must be one of {'|'.join(SOURCES)}, got {src!r}")
    if not isinstance(cmd, str):
        raise DataError(f"{p}:{i}: \"cmd\" must be a REPL line string, got {cmd!r}")
    try:
        parsed = parse_line(cmd)
    except CommandError as exc:
        raise DataError(f"{p}:{i}: {exc}") from None
    if not parsed.journal:
        raise DataError(f"{p}:{i}: `{parsed.name}` is a front-end word and never journalled")
    sha = obj.get("patch_sha256")
    return JournalEntry(float(t), src, cmd, i, parsed, sha if isinstance(sha, str) else None)


Schedule = list[tuple[float, str, Command]]


def _file_sha256(path: Path) -> str:
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def patch_changes(path: str | Path, find_patch: Callable[[str], Path]) -> list[str]:
    """One line for each patch a journal loads whose file has changed since the session
    (its `patch_sha256`): the replay plays the file as it is now. A file gone is left to the
    replay's own `load`, which names it."""
    out: list[str] = []
    seen: set[str] = set()
    for e in read_journal(path)[1]:
        if e.patch_sha256 is None or e.cmd in seen:
            continue
        seen.add(e.cmd)
        name = str(e.command().args["patch"])
        try:
            now = _file_sha256(find_patch(name))
        except Exception:  # (the replay's own load says what is wrong with the file)
            continue
        if now != e.patch_sha256:
            out.append(f"line {e.line_no}: `{e.cmd}`: the patch has changed since the session "
                       f"(sha256 {e.patch_sha256[:12]} then, {now[:12]} now); the replay plays "
                       "it as it is now (restore that version to hear the session as played)")
    return out


def read_schedule(path: str | Path) -> tuple[dict[str, Any], Schedule, JournalEntries]:
    """(header, [(t_s, src, Command)], entries): the journal read and parsed once, sorted
    by time (stable: same-time commands keep file order), ready to submit with
    `engine.submit(cmd, src, at_s=t_s)` (sessions/replay.py); `entries.truncated` and
    `entries.skipped` say what was left out."""
    header, entries = read_journal(path)
    schedule = [(e.t_s, e.src, e.command()) for e in entries]
    schedule.sort(key=lambda item: item[0])
    return header, schedule, entries


def replay_schedule(path: str | Path) -> tuple[dict[str, Any], Schedule]:
    """(header, [(t_s, src, Command)]) sorted by time; see read_schedule."""
    header, schedule, _ = read_schedule(path)
    return header, schedule
