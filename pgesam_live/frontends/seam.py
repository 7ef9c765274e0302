"""The one seam every front end shares (REPL, OSC, MIDI, web page): what they all do with a
line, with their clients' submissions and with the engine's state, written once.

- `FrontView`: the engine as front ends see it (vocab/views.py's `EngineView`), plus what
  front ends add to its snapshot (the web page's address, for `status`).
- `run_line`: one REPL line from any source: a front-end word answered from the views
  (vocab/views.py), a terminal word refused where the source may not say it
  (vocab/sources.py), anything else submitted through the engine's one door.
- `Clients`: a network front end's clients (OSC controllers, web page sockets): each
  submission tagged with its client, so that the engine's "state" event after a client's
  own command is not pushed back to it (no echo); state pushed to every other listening
  client at most `push_hz` times a second, latest value wins; while any listens, a point
  that moves by itself (a glide, a trajectory) is pushed too; a command refused when it
  came due is answered to its own client.
- `LoopService`: runs a front end's `service()` on the app's asyncio loop, now (from any
  thread) and again when its next push is due.
The confinement of `load` (a patch of the patch folder only, from a network source) is the
engine's, by the source's policy (vocab/sources.py).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pgesam_live.errors import CommandError, PgesamError
from pgesam_live.vocab.commands import Command, PitchRangeError, parse_line
from pgesam_live.vocab.sources import TERMINAL_WORDS, terminal_word_refusal
from pgesam_live.vocab.views import (
    FRONT_END_WORDS,
    Answer,
    EngineView,
    Listener,
    ModelView,
    Reply,
    Snapshot,
    answer,
)

Client = Hashable


# -- the engine as front ends see it --------------------------------------------------------

class FrontView:
    """An `EngineView` that passes everything to the engine and adds front-end facts to its
    snapshot (`add_info("web_url", fn)`): what `status` shows of the front ends."""

    def __init__(self, engine: EngineView, journal_path: Path | None = None) -> None:
        self.engine = engine
        self._info: dict[str, Callable[[], Any]] = {}
        self.journal_path = journal_path  # this session's journal (what `save` copies)

    def add_info(self, key: str, fn: Callable[[], Any]) -> None:
        self._info = {**self._info, key: fn}

    @property
    def patch_dir(self) -> Path:
        return self.engine.patch_dir

    @property
    def model_points(self) -> list[tuple[float, float, str]]:
        return self.engine.model_points

    @property
    def model(self) -> ModelView:
        return self.engine.model

    def submit(self, cmd: Command | str, src: str = "repl", at_s: float | None = None,
               tag: Hashable | None = None) -> Reply:
        return self.engine.submit(cmd, src=src, at_s=at_s, tag=tag)

    def snapshot(self) -> Snapshot:
        snap = self.engine.snapshot()
        for key, fn in self._info.items():
            try:
                snap[key] = fn()
            except Exception as exc:  # a front end's fact never breaks the state
                snap[key] = f"unavailable ({type(exc).__name__})"
        return snap

    def settle(self) -> None:
        self.engine.settle()

    def time_s(self) -> float:
        return self.engine.time_s()

    def message(self, text: str) -> None:
        self.engine.message(text)

    def add_listener(self, fn: Listener) -> None:
        self.engine.add_listener(fn)

    def remove_listener(self, fn: Listener) -> None:
        self.engine.remove_listener(fn)

    def point_names(self) -> list[str]:
        return self.engine.point_names()

    def sequence_names(self) -> list[str]:
        return self.engine.sequence_names()

    def resolve_point(self, name: str) -> tuple[float, float]:
        return self.engine.resolve_point(name)

    def start_export(self, *args: Any, **kwargs: Any) -> Reply:
        """The engine's export (engine/exports.py), when it has one."""
        start = getattr(self.engine, "start_export", None)
        if start is None:
            return Reply(False, "export: this instrument has no exporter")
        return cast(Reply, start(*args, **kwargs))

    def add_stat(self, name: str, fn: Callable[[], int]) -> None:
        """A front end's counter in the engine's state (the engine's own `add_stat`)."""
        add = getattr(self.engine, "add_stat", None)
        if add is not None:
            add(name, fn)


# -- a line from any front end ---------------------------------------------------------------

@dataclass(frozen=True)
class LineResult:
    """What a line came to: `ok` and one `text` (the engine's reply, a view's text, or the
    error); `answer` for a front-end word; `command` as parsed; `word` for a terminal word
    the source may say (`quit`, `keys`: the terminal acts on it)."""

    ok: bool
    text: str = ""
    answer: Answer | None = None
    command: Command | None = None
    word: str | None = None


Submit = Callable[[Command], Reply]


def model_range(view: Any) -> tuple[int, int] | None:
    """The model's rendered pitch range as a view knows it (None when it has no model)."""
    rendered = getattr(getattr(view, "model", None), "pitch_range", None)
    try:
        lo, hi = rendered  # type: ignore[misc]
        return int(lo), int(hi)
    except (TypeError, ValueError):
        return None


def run_line(view: EngineView, line: str, src: str, submit: Submit | None = None,
             columns: int | None = None) -> LineResult:
    """One REPL line from `src` (never raises). `submit` sends a command through the door
    (a network front end tags it with its client); default `view.submit(cmd, src=src)`."""
    text = line.strip()
    if not text or text.startswith("#"):
        return LineResult(True)
    try:
        cmd = parse_line(text)
    except PitchRangeError as exc:
        return LineResult(False, str(exc.with_range(model_range(view))))
    except CommandError as exc:
        return LineResult(False, str(exc))
    except Exception as exc:  # a parser bug must not end the performance
        return LineResult(False, f"internal error: {type(exc).__name__}: {exc}")
    try:
        if not cmd.journal:
            if cmd.name in TERMINAL_WORDS:
                refusal = terminal_word_refusal(cmd.name, src)
                if refusal is not None:
                    return LineResult(False, refusal, command=cmd)
                return LineResult(True, command=cmd, word=cmd.name)
            if cmd.name == "save":
                return save_journal(view, cmd.args["name"], cmd)
            if cmd.name == "map" and cmd.args.get("format"):
                return map_picture(view, cmd, src)
            if cmd.name not in FRONT_END_WORDS:
                return LineResult(False, f"`{cmd.name}` does nothing from here", command=cmd)
            a = answer(view, cmd, columns=columns, src=src)
            if a.word == "export" and not a.data:
                return LineResult(False, a.text, command=cmd)
            return LineResult(True, a.text, answer=a, command=cmd)
        reply = submit(cmd) if submit is not None else view.submit(cmd, src=src)
        return LineResult(bool(reply.ok), str(reply.text or ("" if reply.ok else "rejected")),
                          command=cmd)
    except Exception as exc:  # the engine's bug is reported, the front end carries on
        first = str(exc).splitlines()[0] if str(exc) else ""
        return LineResult(False, f"internal error: {type(exc).__name__}: {first} (the "
                                 "instrument carries on)", command=cmd)


def map_picture(view: EngineView, cmd: Command, src: str) -> LineResult:
    """`map png [FILE]`: the map as a picture (tools/mapplot.py, what `pgesam-live map`
    draws) with the names `at NAME` reaches now: the patch's points and the bookmarks too.
    A file on this machine: the terminal's word only."""
    from pgesam_live.vocab.sources import source  # noqa: PLC0415

    if not source(src).ends_session:
        return LineResult(False, f"`map {cmd.args['format']}` writes a file on the "
                                 f"instrument's machine: not available {source(src).said} "
                                 "(`map` answers as text)", command=cmd)
    fmt = str(cmd.args["format"]).lower()
    model_id = str(getattr(view.model, "model_id", "model"))
    file = cmd.args.get("file") or f"map-{model_id}.{fmt}"
    training = getattr(view.model, "training_points", None)
    if training is None:
        training = [{"name": "", "family": f, "x": x, "y": y} for x, y, f in view.model_points]
    if not training:
        return LineResult(False, "map: the model carries no training points to draw",
                          command=cmd)
    named: dict[str, tuple[float, float]] = {}
    for name in view.point_names():
        try:
            named[name] = view.resolve_point(name)
        except Exception:  # a name gone between the two calls (a patch swapped)
            continue
    from pgesam_live.vocab.mappicture import draw_map  # noqa: PLC0415

    draw = getattr(view, "draw_map", None) or draw_map
    target = Path(file).expanduser()
    if target.is_dir():
        return LineResult(False, f"map: {file} is a folder; give a file name, e.g. "
                                 f"{target / ('map.' + fmt)}", command=cmd)
    try:
        out = draw(list(training), named, target, title=f"pGESAM timbre map: {model_id}")
    except PgesamError as exc:
        return LineResult(False, f"map: {exc}", command=cmd)
    except OSError as exc:
        return LineResult(False, f"map: cannot write {file}: {exc.strerror or exc}",
                          command=cmd)
    return LineResult(True, f"map: wrote {Path(out).resolve()} ({len(training)} training "
                            f"instruments, {len(named)} named points)", command=cmd)


def save_journal(view: Any, name: str, cmd: Command | None = None) -> LineResult:
    """`save NAME`: this session's journal, as journalled so far, copied to NAME.jsonl
    beside it (the sessions folder). Saving NAME again in a session updates it; a file of
    that name from elsewhere is not overwritten."""
    src = getattr(view, "journal_path", None)
    if src is None or not Path(src).is_file():
        return LineResult(False, "save: this session has no journal (a replay or a test "
                                 "rig); `pgesam-live play` journals every session", command=cmd)
    src = Path(src)
    dest = src.with_name(f"{name}.jsonl")
    saved: set[Path] = getattr(view, "_saved", set())
    if dest.resolve() == src.resolve():
        return LineResult(False, f"save: {name} is this session's own journal", command=cmd)
    if dest.exists() and dest not in saved:
        return LineResult(False, f"save: {dest} exists (a session saved before); choose "
                                 f"another name, e.g. save {name}2", command=cmd)
    try:
        text = src.read_text(encoding="utf-8")
        whole = text[: text.rfind("\n") + 1]  # whole lines only (a line being written waits)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_text(whole, encoding="utf-8")
        tmp.replace(dest)
    except OSError as exc:
        return LineResult(False, f"save: cannot write {dest}: {exc.strerror or exc}",
                          command=cmd)
    saved.add(dest)
    try:
        view._saved = saved
    except AttributeError:
        pass
    n = max(0, whole.count("\n") - 1)
    return LineResult(True, f"saved {dest} ({n} commands so far; replay: pgesam-live replay "
                            f"{dest}; the session goes on journalling to {src.name}, `save "
                            f"{name}` again to update)", command=cmd)


# -- clients of a network front end: tags, no echo, pushes ------------------------------------

# Keys that change on every block: a refresh (Clients(refresh_s=...)) ignores them.
VOLATILE_KEYS = frozenset({"time_s", "beat", "faults"})
# Figures that change with no command (notes ending, renders late, voices stolen): watched
# at push_hz while clients listen, and pushed when they change (a controller's meter moves).
WATCHED_KEYS = ("voices_in_use", "late_notes", "voices_stolen")


@dataclass
class Listening:
    """A client that asked for state pushes."""

    last_push_s: float = -math.inf
    pending: dict[str, Any] | None = None
    shown: dict[str, Any] | None = None  # the state it knows (refresh: what differs is sent)


@dataclass
class Refused:
    """A command of `client`'s refused when it came due (a timed one); `note` is what the
    front end kept with it (OSC: the address it came to)."""

    client: Client
    note: Any
    text: str


@dataclass
class Clients:
    """A network front end's clients (see the module docstring). Thread-safe: engine events
    arrive from any thread. The owner passes engine events to `on_event` (it is not
    registered here: an owner may want the events too) and calls `poll` when `wake` says
    there is work, or at `next_due()`."""

    engine: EngineView
    src: str
    stats: Counter[str] = field(default_factory=Counter)
    clock: Callable[[], float] = time.monotonic
    push_hz: float = 30.0
    max_listeners: int = 64
    # Web pages also get the state again every `refresh_s` when something they show changed
    # (voices sounding, the cache filling), not only on a command; None: on change only.
    refresh_s: float | None = None
    inflight_ttl_s: float = 15.0   # a command accepted but never applied (dropped by a hush)
    wake: Callable[[], None] | None = None   # called when poll() has new work (any thread)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._tls = threading.local()
        self._tag = itertools.count(1)
        # submission tag -> (client, time sent, note) for commands the engine accepted and has
        # not applied yet: its "command" event says whose change the "state" event after it
        # is; its "rejected" event is answered to that client
        self._inflight: dict[int, tuple[Client, float, Any]] = {}
        self.listeners: dict[Client, Listening] = {}
        self._refused: list[Refused] = []
        # the point last pushed: a glide moves it with no command to push
        self._pushed_point: Any = None
        self._pushed_watch: tuple[Any, ...] | None = None  # WATCHED_KEYS as last seen
        self._point_check_s = -math.inf
        self._refresh_s = -math.inf

    # ---------------------------------------------------------------- submissions
    def submit(self, cmd: Command, client: Client, at_s: float | None = None,
               note: Any = None) -> Reply:
        """`cmd` through the engine's door as `client`'s (src `self.src`)."""
        tag = next(self._tag)
        with self._lock:   # remembered first: the engine may apply it before submit returns
            self._inflight[tag] = (client, self.clock(), note)
            if len(self._inflight) > 4096:
                oldest = self.clock() - self.inflight_ttl_s
                self._inflight = {t: e for t, e in self._inflight.items() if e[1] >= oldest}
        reply = None
        try:
            reply = self.engine.submit(cmd, src=self.src, at_s=at_s, tag=tag)
        finally:
            if reply is None or not reply.ok:
                with self._lock:
                    self._inflight.pop(tag, None)
        if reply.ok:
            self.stats["submitted"] += 1
        return reply

    # ---------------------------------------------------------------- listeners
    def listen(self, client: Client) -> bool:
        """Push the state to `client` from now on (again is fine); False when too many do."""
        with self._lock:
            if client not in self.listeners and len(self.listeners) >= self.max_listeners:
                return False
            self.listeners.setdefault(client, Listening())
            return True

    def greeted(self, client: Client, snap: Snapshot) -> Snapshot:
        """The state a new listener gets at once (it knows the point from here on)."""
        with self._lock:
            if self._pushed_point is None:
                self._pushed_point = snap.get("point")
            ctl = self.listeners.get(client)
            if ctl is not None:
                ctl.shown = _shown(snap)
        return snap

    def unlisten(self, client: Client) -> None:
        with self._lock:
            self.listeners.pop(client, None)

    def forget(self, client: Client) -> None:
        """A client gone (a closed socket): no pushes, no answers to its commands."""
        with self._lock:
            self.listeners.pop(client, None)
            self._inflight = {t: e for t, e in self._inflight.items() if e[0] != client}

    # ---------------------------------------------------------------- engine events
    def on_event(self, event: dict[str, Any]) -> None:
        """An engine event (any thread): who caused the coming state change, refusals,
        pending pushes. Calls `wake` when poll() has work."""
        kind = event.get("kind")
        woke = False
        if kind in ("command", "rejected"):
            sender: tuple[Client, float, Any] | None = None
            if event.get("src") == self.src:
                with self._lock:
                    sender = self._inflight.pop(event.get("tag"), None)  # type: ignore[arg-type]
            if kind == "command":
                self._tls.causer = sender
            elif sender is not None:  # refused when it came due
                with self._lock:
                    self.stats["errors"] += 1
                    self._refused.append(Refused(sender[0], sender[2],
                                                 str(event.get("text", "rejected"))))
                woke = True
        elif kind == "state":
            change = {k: v for k, v in event.items() if k != "kind"}
            sender = getattr(self._tls, "causer", None)
            self._tls.causer = None
            woke = self.state_changed(change, sender[0] if sender is not None else None)
        if woke and self.wake is not None:
            self.wake()

    def state_changed(self, change: Snapshot, causer: Client | None) -> bool:
        """A change of state (an engine "state" event): pending for every listener but the
        one that caused it. True when some listener has a push to come."""
        woke = False
        with self._lock:
            self._pushed_point = change.get("point")  # known to all: causer and pushed
            for client, ctl in self.listeners.items():
                if client == causer:   # never echo a client's own change back to it
                    if ctl.shown is not None:
                        ctl.shown.update(_shown(change))
                    continue
                ctl.pending = {**(ctl.pending or {}), **change}
                woke = True
        return woke

    # ---------------------------------------------------------------- timers
    def poll(self, now: float | None = None) -> tuple[list[tuple[Client, Snapshot]],
                                                      list[Refused]]:
        """The pushes due now (client, the whole state) and the refusals to answer."""
        now = self.clock() if now is None else now
        min_gap_s = 1.0 / self.push_hz
        with self._lock:
            refused, self._refused = self._refused, []
        fresh = self._follow_point(now, min_gap_s)
        fresh = self._refresh(now, fresh)
        due: list[tuple[Client, Snapshot]] = []
        with self._lock:
            for client, ctl in self.listeners.items():
                if ctl.pending is not None and now - ctl.last_push_s >= min_gap_s:
                    due.append((client, ctl.pending))
                    ctl.pending = None
                    ctl.last_push_s = now
                    self.stats["pushes"] += 1
        pushes: list[tuple[Client, Snapshot]] = []
        if due:
            # The state is built here, in the front end's thread, at most push_hz times a
            # second: the engine's events only say that (and where the point) it changed.
            base = fresh if fresh is not None else self.engine.snapshot()
            with self._lock:
                for client, change in due:
                    snap = {**base, **change}
                    listening = self.listeners.get(client)
                    if listening is not None:
                        listening.shown = _shown(snap)
                    pushes.append((client, snap))
        return pushes, refused

    def _follow_point(self, now: float, gap_s: float) -> Snapshot | None:
        """While clients listen, push the state when the point moves by itself (a glide, a
        trajectory): a pad or a page's cursor follows it; and when the figures of
        WATCHED_KEYS change (voices in use, late notes, steals): a meter follows them.
        Returns the snapshot it took."""
        with self._lock:
            if not self.listeners or now - self._point_check_s < gap_s:
                return None
            self._point_check_s = now
        snap = self.engine.snapshot()
        watch = tuple(snap.get(k) for k in WATCHED_KEYS)
        with self._lock:
            figures_moved = self._pushed_watch is not None and watch != self._pushed_watch
            self._pushed_watch = watch
            if snap.get("point") == self._pushed_point and not figures_moved:
                return snap
            self._pushed_point = snap.get("point")
            for ctl in self.listeners.values():
                if ctl.pending is None:
                    ctl.pending = {}   # the state as poll() finds it
        return snap

    def _refresh(self, now: float, fresh: Snapshot | None) -> Snapshot | None:
        """Every refresh_s: the state again to each listener it differs for. Returns the
        snapshot taken last (`fresh`, or its own)."""
        if self.refresh_s is None:
            return fresh
        with self._lock:
            if not self.listeners or now - self._refresh_s < self.refresh_s:
                return fresh
            self._refresh_s = now
        snap = fresh if fresh is not None else self.engine.snapshot()
        shown = _shown(snap)
        with self._lock:
            for ctl in self.listeners.values():
                if ctl.pending is None and ctl.shown != shown:
                    ctl.pending = {}
        return snap

    def next_due(self) -> float | None:
        """Clock time of the next poll() with work, or None when there is none."""
        gap = 1.0 / self.push_hz
        with self._lock:
            due = [c.last_push_s + gap for c in self.listeners.values()
                   if c.pending is not None]
            if self._refused:
                due.append(-math.inf)
            if self.listeners:  # watch the point (see _follow_point)
                due.append(self._point_check_s + gap)
                if self.refresh_s is not None:
                    due.append(self._refresh_s + self.refresh_s)
        return min(due) if due else None


def _shown(snap: Snapshot) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if k not in VOLATILE_KEYS and k != "kind"}


# -- the asyncio side ------------------------------------------------------------------------

class LoopService:
    """Runs `service() -> next due clock time | None` on `loop`: now when `wake()` is called
    (from any thread), and again when it says. `clock` is the one `service` answers in."""

    def __init__(self, service: Callable[[], float | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._service = service
        self._clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.errors = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def wake(self) -> None:
        """From any thread: run the service soon on the loop."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.run)
        except RuntimeError:   # the loop is shutting down
            pass

    def run(self) -> None:
        """On the loop: the service now, and its next run scheduled."""
        if self.loop is None:
            return
        try:
            due = self._service()
        except Exception:  # a front end's bug must not stop its timer; counted
            self.errors += 1
            due = self._clock() + 0.5
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self.loop.call_later(max(0.0, due - self._clock()), self.run)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop = None
