"""The REPL: completer (prompt_toolkit Document), line handling, piped input, and a scripted
session in a real terminal (pexpect)."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prompt_toolkit.document import Document

from pgesam_live.engine.door import Reply
from pgesam_live.errors import CommandError
from pgesam_live.frontends.repl import (
    handle_line,
    history_path,
    make_completer,
    patch_files,
    run_repl,
    status_line,
)
from pgesam_live.vocab.commands import Command, parse_line

ROOT = Path(__file__).resolve().parents[2]


class FakeEngine:
    """Implements the front-end part of engine.door.Engine's API and records what it is given."""

    def __init__(self, patch_dir: Path | None = None) -> None:
        self.patch_dir = patch_dir or ROOT / "patches"
        self.model_points = [(-0.5, 0.5, "bass"), (0.5, -0.5, "brass"), (0.4, 0.4, "flute")]
        self.submitted: list[tuple[str, str, float | None]] = []
        self.listeners: list[Any] = []
        self.points = {"glass": [0.42, -0.31], "reed": [-0.55, 0.12]}
        self.state: dict[str, Any] = {
            "tempo_bpm": 120.0, "point": [0.0, 0.0], "point_name": None, "voices_in_use": 0,
            "voices_total": 32, "cache_fill": 0.25, "renders_pending": 1, "late_notes": 0,
            "lookahead_s": 0.2, "sequences": [], "bookmarks": {}, "model_id": "fake",
            "time_s": 0.0}

    def submit(self, cmd: Command | str, src: str = "repl", at_s: float | None = None) -> Reply:
        if isinstance(cmd, str):
            try:
                cmd = parse_line(cmd)
            except CommandError as exc:
                return Reply(False, str(exc))
        if cmd.name == "load" and cmd.args["patch"] == "boom.yaml":
            raise RuntimeError("kaboom")
        if cmd.name == "at" and "name" in cmd.args:
            if cmd.args["name"] not in self.points and cmd.args["name"] not in \
                    self.state["bookmarks"]:
                return Reply(False, f"at: no point {cmd.args['name']!r}; `points` lists them")
            self.state["point_name"] = cmd.args["name"]
        if cmd.name == "tempo":
            self.state["tempo_bpm"] = cmd.args["bpm"]
        if cmd.name == "mark":
            self.state["bookmarks"][cmd.args["name"]] = list(self.state["point"])
            threading.Timer(0.05, self.emit, args=(
                {"kind": "message", "text": f"marked {cmd.args['name']}"},)).start()
        self.submitted.append((src, cmd.to_line(), at_s))
        for fn in self.listeners:
            fn({"kind": "command", "t": 0.0, "src": src, "cmd": cmd.to_line()})
        return Reply(True, cmd.to_line())  # as engine.door.Engine: the canonical line

    def emit(self, event: dict[str, Any]) -> None:
        for fn in self.listeners:
            fn(event)

    def snapshot(self) -> dict[str, Any]:
        return dict(self.state)

    def add_listener(self, fn: Any) -> None:
        self.listeners.append(fn)

    def time_s(self) -> float:
        return time.monotonic()

    def settle(self) -> None:  # the seam's wait for queued commands (nothing queues here)
        pass

    def point_names(self) -> list[str]:
        return sorted(self.points) + sorted(self.state["bookmarks"])

    def sequence_names(self) -> list[str]:
        return ["arp", "bassline"]


def _completions(engine: FakeEngine, text: str) -> list[str]:
    completer = make_completer(engine)
    got = [c.text for c in completer.get_completions(Document(text, len(text)), None)]
    assert all(t.endswith(" ") for t in got)  # a space after the word, as a shell does
    return [t[:-1] for t in got]


@pytest.fixture()
def engine(tmp_path: Path) -> FakeEngine:
    (tmp_path / "ambient.yaml").write_text("pgesam: 1\n")
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "set1.yml").write_text("pgesam: 1\n")
    (tmp_path / "notes.txt").write_text("not a patch")
    return FakeEngine(tmp_path)


def test_completer_commands(engine: FakeEngine) -> None:
    assert _completions(engine, "te") == ["tempo"]
    assert {"play", "panic", "points", "prerender"} <= set(_completions(engine, "p"))


def test_completer_point_names(engine: FakeEngine) -> None:
    assert _completions(engine, "at ") == ["glass", "reed"]
    assert _completions(engine, "at r") == ["reed"]
    engine.submit("mark nice")
    assert "nice" in _completions(engine, "at n")


def test_completer_note_names_and_keywords(engine: FakeEngine) -> None:
    got = _completions(engine, "play F#")
    assert "F#4" in got and "G4" not in got
    after = _completions(engine, "play C4 E4 ")
    assert "vel" in after and "len" in after and "C5" in after
    assert _completions(engine, "play C4 vel ") == []


def test_completer_offers_the_notes_the_model_plays(engine: FakeEngine) -> None:
    engine.model = SimpleNamespace(pitch_range=(48, 72))  # type: ignore[attr-defined]
    got = _completions(engine, "play C")
    assert {"C2", "C3", "C5", "C6"} <= set(got) and not {"C1", "C7", "C#6"} & set(got)


def test_completer_patch_files_by_position(engine: FakeEngine) -> None:
    assert _completions(engine, "load ") == ["ambient.yaml", "live/set1.yml"]
    assert _completions(engine, "load li") == ["live/set1.yml"]
    assert _completions(engine, "stop ") == ["arp", "bassline"]
    # the completion replaces only the word being typed
    completer = make_completer(engine)
    (c,) = list(completer.get_completions(Document("load amb", 8), None))
    assert c.start_position == -3


def test_patch_files_missing_dir(tmp_path: Path) -> None:
    assert patch_files(tmp_path / "nope") == [] and patch_files(None) == []


def test_handle_line(engine: FakeEngine) -> None:
    assert handle_line(engine, "play C4 E4 vel 0.5") == ([], False)
    assert engine.submitted[-1] == ("repl", "play 60 64 vel 0.5", None)
    out, done = handle_line(engine, "tempo 900")
    assert out == ["error: tempo: bpm 900 is out of range 20..400"] and not done
    out, _ = handle_line(engine, "at nowhere")
    assert out[0].startswith("error: at: no point")
    out, _ = handle_line(engine, "load boom.yaml")
    assert out[0].startswith("internal error: RuntimeError: kaboom")
    assert handle_line(engine, "# a comment") == ([], False)
    assert handle_line(engine, "quit") == ([], True)
    n = len(engine.submitted)
    for word in ("help", "help play", "status", "map", "points", "seqs"):
        out, done = handle_line(engine, word)
        assert out and not done
    assert len(engine.submitted) == n  # front-end words are not submitted (not journalled)
    out, _ = handle_line(engine, "map")
    assert "@" in "\n".join(out) and "b bass" in "\n".join(out)


def test_status_line() -> None:
    line = status_line(FakeEngine().snapshot() | {"point_name": "glass", "sequences": ["arp"]})
    for part in ("tempo 120", "glass", "voices 0/32", "cache 25%", "renders 1", "late 0",
                 "look-ahead 200 ms", "seq arp"):
        assert part in line


def test_history_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGESAM_HISTORY", str(tmp_path / "h"))
    assert history_path() == tmp_path / "h"
    monkeypatch.delenv("PGESAM_HISTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert history_path() == tmp_path / "pgesam-live" / "history"


def test_piped_input(engine: FakeEngine) -> None:
    out = io.StringIO()
    run_repl(engine, stdin=io.StringIO("play C4\nbogus\ntempo 90\nquit\ntempo 100\n"), stdout=out)
    assert [s for _, s, _ in engine.submitted] == ["play 60", "tempo 90"]
    assert "unknown command 'bogus'" in out.getvalue()


class QueueingEngine(FakeEngine):
    """As the engine: what a command says when applied comes at the next block, which
    `settle` waits for."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[str] = []

    def submit(self, cmd: Command | str, src: str = "repl", at_s: float | None = None) -> Reply:
        reply = super().submit(cmd, src, at_s)
        if reply.ok and reply.text.startswith("tempo"):
            self.queued.append(f"applied {reply.text}")
        return reply

    def settle(self) -> None:
        while self.queued:
            self.emit({"kind": "message", "text": self.queued.pop(0)})


def test_piped_input_answers_in_the_lines_order() -> None:
    """A script's replies come in its lines' order: what a line says when applied is printed
    before the next line's refusal."""
    engine, out = QueueingEngine(), io.StringIO()
    run_repl(engine, stdin=io.StringIO("tempo 90\nbogus\ntempo 100\nplay H4\n"), stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["applied", "error:", "applied", "error:"]
    assert lines[0] == "applied tempo 90" and lines[2] == "applied tempo 100"


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from frontends.test_repl import FakeEngine
from pgesam_live.frontends.repl import run_repl
engine = FakeEngine()
run_repl(engine)
print("REPL-ENDED", [line for _, line, _ in engine.submitted], flush=True)
"""


def _spawn(tmp_path: Path) -> Any:
    pexpect = pytest.importorskip("pexpect")
    script = tmp_path / "repl_script.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, PGESAM_HISTORY=str(tmp_path / "history"), TERM="xterm",
               PYTHONPATH=str(ROOT))
    child = pexpect.spawn(sys.executable, [str(script)], env=env, cwd=str(ROOT),
                          dimensions=(30, 120), timeout=15, encoding="utf-8")
    _expect(child, "pgesam>")
    _expect(child, "voices 0/32")  # the bottom status line is drawn
    return child


def _expect(child: Any, text: str) -> None:
    """expect_exact, answering prompt_toolkit's cursor-position requests as a terminal does
    (without an answer it cannot place the bottom toolbar)."""
    while child.expect_exact([text, "\x1b[6n"]) == 1:
        child.send("\x1b[1;1R")


def test_real_terminal_session(tmp_path: Path) -> None:
    child = _spawn(tmp_path)
    try:
        child.send("tempp 3\r")
        _expect(child, "did you mean tempo")
        _expect(child, "pgesam>")
        child.send("tempo 900\r")
        _expect(child, "out of range 20..400")
        child.send("load boom.yaml\r")
        _expect(child, "internal error: RuntimeError: kaboom")
        _expect(child, "pgesam>")
        child.send("play C4 E4 half typed")
        child.sendcontrol("c")  # clears the line; nothing is submitted
        _expect(child, "pgesam>")
        child.send("tem\t")  # Tab completes the only candidate, and the space after it
        child.send("96\r")
        _expect(child, "pgesam>")
        child.send("mark nice\r")
        _expect(child, "marked nice")  # an engine message printed above the prompt
        child.send("status\r")
        _expect(child, "tempo 96")
        child.send("quit\r")
        _expect(child, "REPL-ENDED ['tempo 96', 'mark nice']")
        child.expect(pytest.importorskip("pexpect").EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)
    assert (tmp_path / "history").read_text().count("tempo 96") == 1  # history kept on disk


def test_ctrl_d_ends(tmp_path: Path) -> None:
    child = _spawn(tmp_path)
    try:
        child.sendcontrol("d")
        _expect(child, "REPL-ENDED []")
    finally:
        child.close(force=True)


def test_status_line_fits_the_terminal_keeping_the_six_figures() -> None:
    snap = FakeEngine().snapshot() | {"point_name": "glass", "sequences": ["arp", "bass"],
                                      "late_notes": 4}
    assert "look-ahead" in status_line(snap) and "seq arp,bass" in status_line(snap)
    for width in (100, 80, 60, 50):
        line = status_line(snap, width=width)
        assert len(line) <= width, (width, line)
        assert "late" in line and "4" in line and "0/32" in line and "25%" in line, line
    assert "tempo 120" in status_line(snap, width=80) and "late 4" in status_line(snap, width=80)


def test_a_pasted_block_of_lines_runs_line_by_line(tmp_path: Path) -> None:
    child = _spawn(tmp_path)
    try:
        # A terminal's bracketed paste: the lines arrive as one text, then Enter.
        child.send("\x1b[200~tempo 110\rmark nice\rbogus\rtempo 100\x1b[201~")
        child.send("\r")
        _expect(child, "unknown command 'bogus'")
        _expect(child, "pgesam>")
        child.send("quit\r")
        _expect(child, "REPL-ENDED ['tempo 110', 'mark nice', 'tempo 100']")
    finally:
        child.close(force=True)


def test_map_fits_a_narrow_terminal(engine: FakeEngine) -> None:
    from pgesam_live.vocab.views import engine_map

    for columns in (50, 80, 120):
        text = engine_map(engine, columns=columns)
        assert max(len(line) for line in text.splitlines()) <= columns, columns
        assert "@" in text
    assert engine_map(engine, columns=200) == engine_map(engine)  # room enough: unchanged


# -- keys: the terminal's keyboard as an instrument --------------------------------------------

class KeysEngine(FakeEngine):
    """The fake engine, with `at X Y` moving the point (the arrows read it back)."""

    def submit(self, cmd: Command | str, src: str = "repl", at_s: float | None = None) -> Reply:
        reply = super().submit(cmd, src, at_s)
        c = parse_line(cmd) if isinstance(cmd, str) else cmd
        if reply.ok and c.name == "at" and "x" in c.args:
            self.state["point"] = [c.args["x"], c.args["y"]]
        return reply


def test_keys_mode_maps_keys_to_lines() -> None:
    from pgesam_live.frontends.keys import KeysMode
    from pgesam_live.vocab.mapview import MapRegion

    point = [0.0, 0.0]
    mode = KeysMode(MapRegion(-0.5, 0.5, -0.5, 0.5), len_beats=0.5, vel=0.6,
                    point=lambda: (point[0], point[1]))
    assert [mode.press(k) for k in "awk"] == ["play 60 vel 0.6 len 0.5",
                                             "play 61 vel 0.6 len 0.5",
                                             "play 72 vel 0.6 len 0.5"]
    assert mode.press("z") is None and mode.press("a") == "play 48 vel 0.6 len 0.5"
    for _ in range(6):
        mode.press("x")
    assert mode.press("a") == "play 96 vel 0.6 len 0.5"  # three octaves up at most
    assert mode.press("right") == "at 0.02 0"          # 2 % of the map's width
    assert mode.press("s-up") == "at 0 0.1"            # shift: five steps
    point[:] = [0.49, 0.0]
    assert mode.press("s-right") == "at 0.5 0"         # kept on the map
    assert mode.press("p") is None and "KEYS C7..C8" in mode.bar()


def _drive_piped_repl(engine: Any, drive: Callable[[Any, Callable[[int], None]], None]
                      ) -> threading.Thread:
    """The REPL on prompt_toolkit's input pipe; `drive(pipe, wait_for)` types into it (and
    ends with `quit`), `wait_for(n)` waits up to 5 s for n submitted commands. Returns the
    REPL's thread, joined."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    def wait_for(n: int) -> None:
        end = time.monotonic() + 5
        while len(engine.submitted) < n and time.monotonic() < end:
            time.sleep(0.01)

    with create_pipe_input() as pipe:
        repl = threading.Thread(target=run_repl, args=(engine,),
                                kwargs={"pt_input": pipe, "pt_output": DummyOutput()})
        repl.start()
        try:
            drive(pipe, wait_for)
        finally:
            repl.join(10)
    return repl


def test_keys_in_the_repl_through_prompt_toolkits_input_pipe(tmp_path: Path) -> None:
    """`keys` enters the mode: letters play, z/x move the octave, arrows move the point,
    Escape leaves and the prompt takes lines again; every note and move is an ordinary
    command (src repl)."""
    engine = KeysEngine(tmp_path)
    engine.model_points = [(-0.5, -0.5, "bass"), (0.5, 0.5, "flute")]  # region +-0.62
    lines = lambda: [line for _, line, _ in engine.submitted]  # noqa: E731

    def drive(pipe: Any, wait_for: Callable[[int], None]) -> None:
        pipe.send_text("keys 0.5\r")
        time.sleep(0.3)
        for key, n in (("a", 1), ("s", 2), ("x", 2), ("k", 3), ("\x1b[C", 4),
                       ("\x1b[1;2A", 5)):   # right arrow, shift + up arrow
            pipe.send_text(key)
            wait_for(n)
        pipe.send_text("q")   # not a key of the terminal's keyboard: nothing
        time.sleep(0.2)
        pipe.send_text("\x1b")  # Escape leaves
        time.sleep(0.4)
        pipe.send_text("tempo 99\r")
        wait_for(6)
        pipe.send_text("quit\r")

    repl = _drive_piped_repl(engine, drive)
    assert not repl.is_alive()
    assert lines() == ["play 60 len 0.5", "play 62 len 0.5", "play 84 len 0.5",
                       "at 0.025 0", "at 0.025 0.124", "tempo 99"]
    assert {src for src, _, _ in engine.submitted} == {"repl"}


def test_keys_needs_a_terminal(engine: FakeEngine) -> None:
    out = io.StringIO()
    run_repl(engine, stdin=io.StringIO("keys\ntempo 90\n"), stdout=out)
    assert "keys: the keyboard plays only in a terminal" in out.getvalue()
    assert [s for _, s, _ in engine.submitted] == ["tempo 90"]


def test_keys_in_a_real_terminal_says_so_on_its_bottom_line(tmp_path: Path) -> None:
    child = _spawn(tmp_path)
    try:
        child.send("keys\r")
        _expect(child, "KEYS C4..C5")    # the bottom line: the mode, its range and keys
        child.send("a")
        child.send("x")
        child.send("d")
        _expect(child, "play 76 len 1")  # the mode's line shows what it played
        child.send("\x1b")               # Escape leaves: the prompt again
        _expect(child, "keys: 2 commands played")
        _expect(child, "pgesam>")
        child.send("quit\r")
        _expect(child, "REPL-ENDED ['play 60 len 1', 'play 76 len 1']")
    finally:
        child.close(force=True)


def test_ctrl_backslash_is_panic_at_the_prompt_and_in_keys_mode(tmp_path: Path) -> None:
    """One keystroke, Ctrl-\\ (0x1c), says `panic` (src repl), at the prompt (the line
    being typed stays) and in `keys` mode (the mode stays)."""
    engine = KeysEngine(tmp_path)
    engine.model_points = [(-0.5, -0.5, "bass"), (0.5, 0.5, "flute")]
    lines = lambda: [line for _, line, _ in engine.submitted]  # noqa: E731

    def drive(pipe: Any, wait_for: Callable[[int], None]) -> None:
        pipe.send_text("tempo 9")
        time.sleep(0.2)
        pipe.send_text("\x1c")  # Ctrl-\ while a line is half typed
        wait_for(1)
        pipe.send_text("7\r")    # the line goes on: tempo 97
        wait_for(2)
        pipe.send_text("keys\r")
        time.sleep(0.3)
        pipe.send_text("a")
        wait_for(3)
        pipe.send_text("\x1c")
        wait_for(4)
        pipe.send_text("\x1b")
        time.sleep(0.4)
        pipe.send_text("quit\r")

    repl = _drive_piped_repl(engine, drive)
    assert not repl.is_alive()
    assert lines() == ["panic", "tempo 97", "play 60 len 1", "panic"]
    assert {src for src, _, _ in engine.submitted} == {"repl"}


def test_an_exports_progress_is_printed_each_quarter_and_its_end_once() -> None:
    from pgesam_live.frontends.repl import _MessagePrinter

    said: list[str] = []
    printer = _MessagePrinter(said.append)
    for done in range(0, 41, 8):
        printer({"kind": "export", "name": "pad", "done": done, "total": 40, "sfz": None,
                 "error": None})
    printer({"kind": "export", "name": "pad", "done": 40, "total": 40, "sfz": "p.sfz",
             "error": None})
    printer({"kind": "message", "text": "export pad: p.sfz"})
    assert said == ["export pad: 16/40 notes", "export pad: 24/40 notes",
                    "export pad: 32/40 notes", "export pad: p.sfz"]
