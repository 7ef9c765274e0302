"""OSC front end (UDP, default 127.0.0.1:9000), on the app's asyncio loop.

Built on asyncio's DatagramProtocol so that EVERY datagram is seen (python-osc's dispatcher
drops unparsable ones silently): `OscCore.handle_datagram(data, addr)` is the pure core,
parsing with pythonosc's OscPacket and answering with a list of (addr, address, args) replies;
`OscServer` (osc_server.py) only moves bytes; the wire format is osc_wire.py, time tags
become engine times in osc_clock.py, /pgesam/ready bookkeeping osc_ready.py; what every
front end shares (the line's handling, subscribers and their state pushes without echo) is
seam.py. Addresses come
from the command table (`commands.OSC_ADDRESSES`)
plus the front-end ones handled here:

  /pgesam/cmd LINE        one REPL line (front-end words: status -> /pgesam/state,
                          help [CMD] -> /pgesam/help TEXT, map -> /pgesam/map TEXT,
                          points -> /pgesam/points NAME..., seqs -> /pgesam/seqs NAME...
                          then /pgesam/seqs/running NAME...; save NAME ->
                          /pgesam/save TEXT, where it saved; quit refused)
  /pgesam/status          reply /pgesam/state (below)
  /pgesam/hello           register the sender as a controller: state pushed on change
  /pgesam/bye             unregister

An export started with `/pgesam/cmd "export [FOLDER]"` (FOLDER: a folder name inside the
sessions folder; default `export-NAME`) is answered `/pgesam/export TEXT` (where it renders,
or why not), then reported to its sender (and to every controller) as
`/pgesam/export/progress NAME DONE TOTAL` while it renders and `/pgesam/export/done NAME
SFZ_PATH` or `/pgesam/export/error NAME MESSAGE` at its end. NAME is the point's (its
name, or its coordinates as `p0.20_m0.10`), which also names the SFZ and WAV files.

Replies go to the sender: `/pgesam/error <address> <message>` for anything rejected (address
"" for a datagram that is not OSC at all), `/pgesam/ready <x> <y> <pitch>` when a render the
sender asked for with /pgesam/prerender is cached (x, y as it asked), and
`/pgesam/state k1 v1 k2 v2 ...`: the engine snapshot as flat key/value pairs: numbers and
strings as they are, `point` as two pairs `x` and `y`, lists (sequences) as one
space-separated string, dicts (bookmarks) as a JSON string, booleans as 0/1, None as "".

Timing: a bundle whose timetag is in the future is submitted with
`at_s = engine.time_s() + (timetag - wall now)`; an immediate or past timetag plays now; one
more than `max_ahead_s` (10 s) ahead is treated as clock skew: played now and counted
(`stats["skewed"]`), never held.

Flow control: every valid move (/pgesam/xy, /pgesam/timbre, /pgesam/point) is applied and
journalled; a fast stream cannot flood the renderer because the engine asks for a point's
pitch bank only once the point settles, and the worker client lets a newer point's
pre-renders supersede older ones (latest wins). `coalesce_s` > 0 (off by default) also
coalesces moves here: the first is applied at once, later ones within the window replace each
other and only the latest is applied when it ends (superseded ones are counted, not
journalled). State pushes to a controller are at most `push_hz` (30) per
second, latest value wins, and a change caused by a controller's own message is not pushed
back to it: the engine emits a "command" event (with the line) and then, on the same thread,
the "state" event for each applied command; the line is matched to the controller that sent
it. A state event that follows no OSC command (a sequence ending, the REPL, MIDI) is pushed to
every controller.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgesam_live import faults
from pgesam_live.errors import CommandError
from pgesam_live.frontends.osc_clock import TimetagClock
from pgesam_live.frontends.osc_ready import ReadyTracker
from pgesam_live.frontends.osc_wire import strict_problem, timed_messages
from pgesam_live.frontends.seam import Clients, Listening, model_range, run_line
from pgesam_live.vocab.commands import Command, PitchRangeError, from_osc
from pgesam_live.vocab.views import Answer, EngineView, Reply, flatten_state, view_region

Addr = tuple[str, int]
OscReply = tuple[Addr, str, list[Any]]

_MOVE_ADDRESSES = ("/pgesam/xy", "/pgesam/timbre", "/pgesam/point")

ADDRESS_ECHO_CHARS = 120  # an address echoed in an error reply
ERROR_CHARS = 1000        # an error reply's text (a UDP datagram holds at most 65,507 bytes)


def _clip(text: str, limit: int) -> str:
    """`text` with control characters escaped (`\\x1b`), cut to `limit` characters (`...`)."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return safe if len(safe) <= limit else safe[:limit - 3] + "..."


@dataclass
class _PendingMove:
    cmd: Command
    addr: Addr
    address: str


_MAX_EXPORTERS = 16  # export senders remembered for the reports


@dataclass
class OscCore:
    """The socket-free OSC logic. Thread-safe: engine events may arrive from any thread."""

    engine: EngineView
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    coalesce_s: float = 0.0  # > 0: coalesce moves here too (see the module docstring)
    max_ahead_s: float = 10.0
    push_hz: float = 30.0
    ready_tolerance: float = 0.02   # the render cache's x, y quantum
    ready_ttl_s: float = 120.0
    max_controllers: int = 64
    wake: Callable[[], None] | None = None   # called when poll() has new work (any thread)
    stats: Counter[str] = field(default_factory=Counter)
    tell_every_s: float = 2.0   # errors said in the terminal at most this often

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._told_s = -math.inf
        self._untold = 0
        # Controllers, their submissions and their state pushes (no echo): the seam's.
        self._clients = Clients(self.engine, "osc", self.stats, clock=lambda: self.clock(),
                                push_hz=self.push_hz, max_listeners=self.max_controllers,
                                wake=self._wake_owner)
        self._timetags = TimetagClock()
        self._pending_move: _PendingMove | None = None
        self._last_move_s = -math.inf
        self._ready = ReadyTracker(self.ready_tolerance, self.ready_ttl_s)
        self._outbox: list[OscReply] = []
        self._exporters: dict[Addr, None] = {}  # senders of exports (newest last)
        self._region = view_region(self.engine)   # what /pgesam/xy maps onto
        self.engine.add_listener(self.on_event)

    def _wake_owner(self) -> None:
        if self.wake is not None:
            self.wake()

    @property
    def controllers(self) -> dict[Addr, Listening]:
        """The controllers that said /pgesam/hello."""
        return self._clients.listeners  # type: ignore[return-value]

    # ---------------------------------------------------------------- incoming datagrams

    def handle_datagram(self, data: bytes, addr: Addr) -> list[OscReply]:
        """One UDP datagram -> replies. Never raises."""
        self.stats["datagrams"] += 1
        wall_now = self.wall()
        problem = strict_problem(data)
        if problem is not None:
            return self._error(addr, "", f"not an OSC packet: {problem}; send an OSC "
                                         "message or bundle")
        try:
            timed = timed_messages(data)
        except Exception as exc:  # ParseError, and anything a hostile datagram provokes
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return self._error(addr, "", f"not an OSC packet ({first[:120]}); send an OSC "
                                         "message or bundle")
        replies: list[OscReply] = []
        at_times = self._timetags.at_times([t for t, _ in timed], wall_now, self.max_ahead_s,
                                           self.engine.time_s)
        for (_, msg), (at_s, decided) in zip(timed, at_times, strict=True):
            if decided is not None:
                self.stats[decided] += 1
            try:
                replies += self._dispatch(msg.address, list(msg.params), addr, at_s)
            except Exception as exc:  # an engine bug must not stop the server
                self.stats["errors"] += 1
                replies.append((addr, "/pgesam/error",
                                [_clip(msg.address, ADDRESS_ECHO_CHARS),
                                 _clip(f"internal error: {type(exc).__name__}: {exc}",
                                       ERROR_CHARS)]))
        return replies

    def _error(self, addr: Addr, address: str, message: str) -> list[OscReply]:
        """Answer `message` about `address`, both clipped (a reply fits one UDP datagram)
        and with control characters escaped (they reach the performer's terminal)."""
        address, message = _clip(address, ADDRESS_ECHO_CHARS), _clip(message, ERROR_CHARS)
        self.stats["errors"] += 1
        self._tell(addr, address, message)
        return [(addr, "/pgesam/error", [address, message])]

    def _tell(self, addr: Addr, address: str, message: str) -> None:
        """An error answered to a controller, also said in the terminal (one line above the
        prompt, at most every `tell_every_s`; the ones between are counted in the next)."""
        now = self.clock()
        if now - self._told_s < self.tell_every_s:
            self._untold += 1
            return
        more = f" (and {self._untold} more OSC errors since the last shown)" \
            if self._untold else ""
        self._told_s, self._untold = now, 0
        who = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) == 2 else str(addr)
        try:
            self.engine.message(f"osc {who} {address or '?'}: {message[:200]}{more}")
        except Exception as exc:  # telling never breaks the answer
            faults.record("osc: telling an error in the terminal", exc)

    def _dispatch(self, address: str, args: list[Any], addr: Addr,
                  at_s: float | None) -> list[OscReply]:
        if address in ("/pgesam/hello", "/pgesam/bye") and args:
            return self._error(addr, address, f"{address} takes no arguments")
        if address == "/pgesam/hello":
            if not self._clients.listen(addr):
                return self._error(addr, address, "too many controllers; send /pgesam/bye "
                                   "from an old one")
            snap = self._clients.greeted(addr, self.engine.snapshot())
            return [(addr, "/pgesam/state", flatten_state(snap))]
        if address == "/pgesam/bye":
            self._clients.unlisten(addr)
            return []
        if address == "/pgesam/status":
            if args:
                return self._error(addr, address, "/pgesam/status takes no arguments")
            return [(addr, "/pgesam/state", flatten_state(self.engine.snapshot()))]
        if address == "/pgesam/cmd":
            if len(args) != 1 or not isinstance(args[0], str):
                return self._error(addr, address, "/pgesam/cmd takes one string: a REPL line")
            submitted: list[Command] = []

            def keep(c: Command) -> Reply:  # submitted below, timed and tagged as OSC's
                submitted.append(c)
                return Reply(True, "")

            result = run_line(self.engine, args[0], "osc", submit=keep)
            if not result.ok:
                return self._error(addr, address, result.text)
            if result.answer is not None:
                if result.answer.word == "export" and result.answer.data:
                    with self._lock:
                        self._exporters.pop(addr, None)
                        self._exporters[addr] = None
                        while len(self._exporters) > _MAX_EXPORTERS:
                            del self._exporters[next(iter(self._exporters))]
                return self._answer(addr, result.answer)
            if not submitted:
                if result.text and result.command is not None:  # said, e.g. `save NAME`
                    return [(addr, f"/pgesam/{result.command.name}", [result.text])]
                return []   # an empty line, a comment
            cmd = submitted[0]
        else:
            try:
                cmd = from_osc(address, args)
            except PitchRangeError as exc:
                return self._error(addr, address, str(exc.with_range(model_range(self.engine))))
            except CommandError as exc:
                return self._error(addr, address, str(exc))
        if cmd.name == "prerender":
            self._remember_ready(addr, cmd)
        if at_s is None and address in _MOVE_ADDRESSES:
            return self._move(cmd, addr, address)
        return self._submit(cmd, addr, address, at_s)

    @staticmethod
    def _answer(addr: Addr, a: Answer) -> list[OscReply]:
        """A front-end word's answer on the wire (vocab/views.py makes it)."""
        if a.word == "status":
            return [(addr, "/pgesam/state", flatten_state(a.data))]
        if a.word == "points":
            return [(addr, "/pgesam/points", list(a.data))]
        if a.word == "seqs":  # every sequence, then the running ones
            names, running = a.data
            return [(addr, "/pgesam/seqs", list(names)), (addr, "/pgesam/seqs/running",
                                                          list(running))]
        return [(addr, f"/pgesam/{a.word}", [a.text])]  # help, map

    def _submit(self, cmd: Command, addr: Addr, address: str,
                at_s: float | None) -> list[OscReply]:
        reply = self._clients.submit(cmd, addr, at_s=at_s, note=address)
        if not reply.ok:
            return self._error(addr, address, str(reply.text or "rejected"))
        return []

    def _move(self, cmd: Command, addr: Addr, address: str) -> list[OscReply]:
        now = self.clock()
        with self._lock:
            if self._pending_move is None and now - self._last_move_s >= self.coalesce_s:
                self._last_move_s = now
                immediate = True
            else:
                if self._pending_move is not None:
                    self.stats["coalesced"] += 1   # superseded: latest wins
                self._pending_move = _PendingMove(cmd, addr, address)
                immediate = False
        if immediate:
            return self._submit(cmd, addr, address, None)
        if self.wake is not None:
            self.wake()
        return []

    def _remember_ready(self, addr: Addr, cmd: Command) -> None:
        low, high = cmd.args.get("low"), cmd.args.get("high")
        if low is None or high is None:  # the whole range: the model's
            low, high = (int(p) for p in self.engine.model.pitch_range)
        with self._lock:
            self._ready.remember(addr, cmd.args["x"], cmd.args["y"], int(low), int(high),
                                 self.clock())

    # ---------------------------------------------------------------- engine events

    def on_event(self, event: dict[str, Any]) -> None:
        """Engine listener (any thread): the seam's bookkeeping (who caused a change, state
        pushes, refusals) and /pgesam/ready replies."""
        if event.get("kind") == "export":
            self._export_report(event)
            return
        if event.get("kind") != "ready":
            self._clients.on_event(event)
            return
        try:
            x, y, pitch = float(event["x"]), float(event["y"]), int(event["pitch"])
        except (KeyError, TypeError, ValueError):
            return
        woke = False
        with self._lock:
            for to, args in self._ready.cached(x, y, pitch):
                self._outbox.append((to, "/pgesam/ready", args))
                woke = True
        if woke and self.wake is not None:
            self.wake()

    def _export_report(self, event: dict[str, Any]) -> None:
        """An export's progress or end, to its senders and every controller."""
        name = str(event.get("name", ""))
        if event.get("sfz"):
            msg: tuple[str, list[Any]] = ("/pgesam/export/done", [name, str(event["sfz"])])
        elif event.get("error"):
            msg = ("/pgesam/export/error", [name, str(event["error"])])
        else:
            msg = ("/pgesam/export/progress", [name, int(event.get("done") or 0),
                                               int(event.get("total") or 0)])
        with self._lock:
            to = [*self._exporters, *(a for a in self.controllers if a not in self._exporters)]
            for addr in to:
                self._outbox.append((addr, msg[0], msg[1]))
        if to and self.wake is not None:
            self.wake()

    # ---------------------------------------------------------------- timers

    def poll(self, now: float | None = None) -> list[OscReply]:
        """Due work: the coalesced move, rate-limited state pushes, ready replies."""
        now = self.clock() if now is None else now
        replies: list[OscReply] = []
        move: _PendingMove | None = None
        with self._lock:
            if self._pending_move is not None and now - self._last_move_s >= self.coalesce_s:
                move, self._pending_move = self._pending_move, None
                self._last_move_s = now
        if move is not None:
            try:
                replies += self._submit(move.cmd, move.addr, move.address, None)
            except Exception as exc:
                replies += self._error(move.addr, move.address,
                                       f"internal error: {type(exc).__name__}: {exc}")
        with self._lock:
            replies += self._outbox
            self._outbox = []
        pushes, refused = self._clients.poll(now)
        for r in refused:  # refused when it came due (a timed bundle's command)
            replies.append((r.client, "/pgesam/error", [r.note, r.text]))  # type: ignore[arg-type]
            self._tell(r.client, str(r.note), r.text)  # type: ignore[arg-type]
        for to, snap in pushes:
            replies += self._push(to, snap)  # type: ignore[arg-type]
        return replies

    def _push(self, addr: Addr, snap: dict[str, Any]) -> list[OscReply]:
        out: list[OscReply] = [(addr, "/pgesam/state", flatten_state(snap))]
        point = snap.get("point")
        if isinstance(point, list | tuple) and len(point) == 2:
            # the pad's own address, so a TouchOSC XY pad follows the point with no scripting
            u, v = self._region.to_uv(float(point[0]), float(point[1]))
            out.append((addr, "/pgesam/xy", [u, v]))
        return out

    def next_due(self) -> float | None:
        """Clock time of the next poll() with work, or None when there is none."""
        with self._lock:
            due: list[float] = []
            if self._pending_move is not None:
                due.append(self._last_move_s + self.coalesce_s)
            if self._outbox:
                due.append(-math.inf)
        pushes_due = self._clients.next_due()
        if pushes_due is not None:
            due.append(pushes_due)
        return min(due) if due else None
