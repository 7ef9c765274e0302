"""The REPL: type commands at the instrument.

A prompt_toolkit PromptSession when stdin and stdout are a terminal (completion from the
command table, history across runs, a bottom status line, engine messages printed above the
prompt), and a plain line reader otherwise (`echo "play C4" | pgesam-live`). Every line goes
through `handle_line` (the seam's `run_line`, as OSC's and the web page's lines do), which
never raises: a typo, a bad argument or an internal error is one printed line and the prompt
stays. Front-end words (help, map, status, points, seqs) are answered from the views; `quit`
ends the REPL and `keys` turns the keyboard into an instrument (frontends/keys.py) until
Escape; everything else is submitted to the engine (src "repl"), which validates, applies and
journals it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from pgesam_live import faults
from pgesam_live.frontends.seam import run_line
from pgesam_live.vocab.commands import COMMANDS, Command
from pgesam_live.vocab.completion import CompletionContext, complete
from pgesam_live.vocab.instruments import instrument_words
from pgesam_live.vocab.views import EngineView, status_line, status_text

__all__ = ["EngineLike", "handle_line", "make_completer", "run_repl", "status_line",
           "status_text"]

PROMPT = "pgesam> "
PANIC_KEY = "c-\\"  # Ctrl-\ (SuperCollider's Cmd-., Sonic Pi's Stop): `panic` in one key
STATUS_REFRESH_S = 0.5


EngineLike = EngineView  # the shared seam (vocab/views.py)


# --------------------------------------------------------------------------------------------
# pure parts


def history_path() -> Path:
    """$PGESAM_HISTORY, else ~/.local/state/pgesam-live/history (XDG_STATE_HOME honoured)."""
    explicit = os.environ.get("PGESAM_HISTORY")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgesam-live" / "history"


def patch_files(patch_dir: Path | str | None) -> list[str]:
    """Patch files under the patch folder, as `load` takes them (relative, / separated)."""
    if patch_dir is None:
        return []
    root = Path(patch_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    return sorted(p.relative_to(root).as_posix() for p in found)


def completion_context(engine: EngineLike) -> CompletionContext:
    """Names the completer may offer now; an engine that fails here just offers fewer."""
    def safe(fn: Callable[[], Iterable[str]]) -> list[str]:
        try:
            return list(fn())
        except Exception as exc:  # completion must never break typing: logged, counted
            faults.record("repl: completion names", exc)
            return []
    return CompletionContext(
        point_names=safe(engine.point_names),
        instrument_words=safe(lambda: instrument_words(
            getattr(engine.model, "training_points", None) or [])),
        sequence_names=safe(engine.sequence_names),
        patch_files=safe(lambda: patch_files(engine.patch_dir)),
        pitch_range=_pitch_range(engine),
    )


def _pitch_range(engine: EngineLike) -> tuple[int, int] | None:
    try:
        lo, hi = engine.model.pitch_range
        return int(lo), int(hi)
    except Exception as exc:  # a front end without a model offers every note name
        faults.record("repl: the model's pitch range", exc)
        return None


MAX_MESSAGE_CHARS = 400  # an error echoing a pasted novel is cut, not 40 screen lines


def _fit_message(text: str) -> str:
    """A reply line, cut to MAX_MESSAGE_CHARS per line (views such as `map` are many lines
    of their own)."""
    return "\n".join(line if len(line) <= MAX_MESSAGE_CHARS else
                     line[:MAX_MESSAGE_CHARS - 20] + f"... ({len(line)} chars)"
                     for line in text.split("\n"))


def panic_now(engine: EngineLike) -> str:
    """Ctrl-\\: `panic` through the door (journalled as the REPL's), said in one line."""
    try:
        reply = engine.submit("panic", src="repl")
    except Exception as exc:  # the engine's bug: said, the prompt stays
        return f"internal error: panic: {type(exc).__name__}: {exc}"
    return "panic (Ctrl-\\): everything silenced" if reply.ok else f"error: {reply.text}"


def handle_line(engine: EngineLike, line: str) -> tuple[list[str], bool]:
    """One REPL line -> (lines to print, quit?). Never raises. (`keys` needs the terminal:
    `_run_prompt` takes it before this; here, on piped input, it says so.)"""
    lines, done, _ = _handle(engine, line)
    return lines, done


def _handle(engine: EngineLike, line: str) -> tuple[list[str], bool, Command | None]:
    """(lines to print, quit?, the `keys` command when the line was one)."""
    columns = shutil.get_terminal_size((80, 24)).columns - 1
    result = run_line(engine, line, "repl", columns=columns)
    if not result.ok:
        text = result.text or "rejected"
        return [text if text.startswith("internal error") else f"error: {text}"], False, None
    if result.word == "quit":
        return [], True, None
    if result.word == "keys":
        return [], False, result.command
    if result.answer is not None:
        return result.answer.text.splitlines(), False, None
    # the engine answers an accepted command with its canonical line: not worth a print
    quiet = not result.text or (result.command is not None and
                                result.text == result.command.to_line())
    return ([] if quiet else [result.text]), False, None


# --------------------------------------------------------------------------------------------
# the terminal


def _make_completer(engine: EngineLike) -> Any:
    from prompt_toolkit.completion import Completer, Completion

    class CommandCompleter(Completer):
        """Completion from the command table, by argument position."""

        def get_completions(self, document: Any, complete_event: Any) -> Iterable[Completion]:
            prefix, cands = complete(document.text_before_cursor, completion_context(engine))
            for c in cands:
                spec = COMMANDS.get(c)
                meta = spec.help if spec is not None and " " not in document.text_before_cursor \
                    else None
                # A space after the word, as a shell does: `pl<Tab>C` reads `play C`.
                yield Completion(c + " ", start_position=-len(prefix), display=c,
                                 display_meta=meta)

    return CommandCompleter()


def make_completer(engine: EngineLike) -> Any:
    """A prompt_toolkit Completer over the command table and the engine's names."""
    return _make_completer(engine)


def _export_progress(event: dict[str, Any], quarters: dict[str, int]) -> str | None:
    """`export NAME: 12/37 notes` when an export passes a quarter of its notes, else None."""
    name, done, total = str(event.get("name")), int(event.get("done") or 0), \
        int(event.get("total") or 0)
    if event.get("sfz") or event.get("error") or total <= 0:
        quarters.pop(name, None)
        return None
    quarter = 4 * done // total
    if done == 0 or quarter <= quarters.get(name, 0) or done >= total:
        return None
    quarters[name] = quarter
    return f"export {name}: {done}/{total} notes"


class _MessagePrinter:
    """Engine listener: prints {"kind": "message"} events, and an export's progress at each
    quarter (its end comes as a message); silent once the REPL has ended."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.active = True
        self._write = write
        self._lock = threading.Lock()
        self._export_quarter: dict[str, int] = {}

    def reply(self, text: str) -> None:
        """Print a reply under the same lock, so an engine message never splits one."""
        with self._lock:
            self._write(text)

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.active:
            return
        text = _export_progress(event, self._export_quarter) \
            if event.get("kind") == "export" else \
            str(event.get("text", "")) if event.get("kind") == "message" else None
        if text is None:
            return
        with self._lock:
            try:
                self._write(text)
            except Exception as exc:  # a closed stream must not break the engine's thread
                faults.record("repl: printing an engine message", exc)
                self.active = False


def run_repl(engine: EngineLike, *, stdin: TextIO | None = None,
             stdout: TextIO | None = None, pt_input: Any = None,
             pt_output: Any = None) -> None:
    """Run until `quit`, Ctrl-D or end of input; returns to the caller (which closes the
    journal and the audio). Interactive when both streams are terminals (or prompt_toolkit's
    `pt_input` is given: a test's pipe), else line by line."""
    if pt_input is not None:
        _run_prompt(engine, pt_input=pt_input, pt_output=pt_output)
        return
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    if interactive:
        _run_prompt(engine)
    else:
        _run_lines(engine, stdin, stdout)


def _run_lines(engine: EngineLike, stdin: TextIO, stdout: TextIO) -> None:
    def write(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    printer = _MessagePrinter(write)
    engine.add_listener(printer)
    try:
        for line in stdin:
            out, done, keys = _handle(engine, line)
            if keys is not None:
                out = ["error: keys: the keyboard plays only in a terminal (the input is "
                       "piped); type notes as lines: play C4"]
            for o in out:
                printer.reply(o)
            if done:
                break
            # What this line brings about when applied (a message, a refusal) is printed
            # before the next line's reply, so a script's answers come in its lines' order
            # (a terminal's typing leaves that time anyway; here it is a block, a few ms).
            with faults.logged("repl: waiting for a line to be applied"):
                engine.settle()
        # What the last lines bring about (a refusal when applied, an engine message) is
        # printed before the input's end ends the REPL.
        with faults.logged("repl: waiting for the last lines"):
            engine.settle()
    finally:
        printer.active = False


def _run_prompt(engine: EngineLike, pt_input: Any = None, pt_output: Any = None) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    history: Any
    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(path))
    except OSError:
        history = InMemoryHistory()  # an unwritable home must not stop the performance
        print(f"note: history not kept ({path} is not writable; set PGESAM_HISTORY)")

    def toolbar() -> str:
        try:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            return status_line(engine.snapshot(), width=width)
        except Exception as exc:
            return f"status unavailable: {type(exc).__name__}"

    from prompt_toolkit.key_binding import KeyBindings

    kb = KeyBindings()

    @kb.add(PANIC_KEY, eager=True)
    def _panic(event: Any) -> None:  # the line being typed stays as it is
        print(panic_now(engine), flush=True)

    session: PromptSession[str] = PromptSession(
        key_bindings=kb,
        history=history,
        completer=make_completer(engine),
        complete_while_typing=False,
        bottom_toolbar=toolbar,
        refresh_interval=STATUS_REFRESH_S,
        input=pt_input,
        output=pt_output,
    )
    with patch_stdout(raw=True):
        printer = _MessagePrinter(lambda text: print(text, flush=True))
        engine.add_listener(printer)
        try:
            while True:
                try:
                    line = session.prompt(PROMPT)
                except KeyboardInterrupt:
                    continue  # Ctrl-C clears the line, the instrument keeps playing
                except EOFError:
                    break
                done = False
                # A bracketed paste of several lines arrives as one text: each line in order.
                for one in line.splitlines() or [""]:
                    out, done, keys = _handle(engine, one)
                    if keys is not None:
                        from pgesam_live.frontends.keys import run_keys  # noqa: PLC0415

                        try:
                            out = run_keys(engine, keys, pt_input=pt_input,
                                           pt_output=pt_output,
                                           width=lambda: shutil.get_terminal_size().columns)
                        except Exception as exc:  # the mode's bug: one line, the REPL stays
                            out = [f"internal error: keys: {type(exc).__name__}: {exc}"]
                    for o in out:
                        print(_fit_message(o), flush=True)
                    if done:
                        break
                if done:
                    break
        finally:
            printer.active = False
