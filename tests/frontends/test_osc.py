"""OSC: the socket-free core fed datagrams, then a real loopback client (burst, timetags)."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage

from pgesam_live.engine.door import Reply
from pgesam_live.errors import CommandError
from pgesam_live.frontends.osc import OscCore
from pgesam_live.frontends.osc_server import OscServer
from pgesam_live.frontends.osc_wire import encode_message
from pgesam_live.sessions.journal import Journal, make_header, read_journal
from pgesam_live.vocab.commands import Command, parse_line
from pgesam_live.vocab.views import flatten_state

A = ("127.0.0.1", 50001)
B = ("127.0.0.1", 50002)


class FakeEngine:
    """engine.door.Engine's API: validates by parsing, records what it was given, and on applying a
    command emits "command" then "state" events. deferred=True mimics engine.door.Engine: submit()
    queues, and apply_pending() (the audio thread, in the loopback tests) applies."""

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self.queue: list[tuple[Command, str, float | None]] = []
        self.t0 = time.monotonic()
        self.listeners: list[Any] = []
        self.submitted: list[tuple[str, str, float | None]] = []
        self.lock = threading.RLock()
        # The seam's model view and training points (vocab/views.py EngineView).
        self.model = SimpleNamespace(model_id="fake", pitch_range=(21, 108))
        self.model_points: list[tuple[float, float, str]] = []
        self.state: dict[str, Any] = {"tempo_bpm": 120.0, "point": [0.0, 0.0],
                                      "point_name": None, "sequences": [], "bookmarks": {},
                                      "voices_in_use": 0, "late_notes": 0}

    def submit(self, cmd: Command | str, src: str = "repl", at_s: float | None = None,
               tag: Any = None) -> Reply:
        if isinstance(cmd, str):
            try:
                cmd = parse_line(cmd)
            except CommandError as exc:
                return Reply(False, str(exc))
        if cmd.name == "at" and cmd.args.get("name") == "nowhere":
            return Reply(False, "at: no point 'nowhere'")
        with self.lock:
            self.submitted.append((src, cmd.to_line(), at_s))
            if self.deferred:
                self.queue.append((cmd, src, at_s, tag))
                return Reply(True, cmd.to_line())
        self.apply(cmd, src, at_s, tag)
        return Reply(True, cmd.to_line())

    def apply_pending(self) -> None:
        with self.lock:
            due, self.queue = self.queue, []
        for cmd, src, at_s, tag in due:
            self.apply(cmd, src, at_s, tag)

    def apply(self, cmd: Command, src: str, at_s: float | None, tag: Any = None) -> None:
        # As engine.door.Engine: the state changes and its events go out under the engine's lock,
        # so a snapshot never sees a change before its "state" event.
        with self.lock:
            self._apply_locked(cmd, src, at_s, tag)

    def _apply_locked(self, cmd: Command, src: str, at_s: float | None,
                      tag: Any = None) -> None:
        changed = True
        if cmd.name == "tempo":
            self.state["tempo_bpm"] = cmd.args["bpm"]
        elif cmd.name == "xy":
            self.state["point"] = [2 * cmd.args["u"] - 1, 2 * cmd.args["v"] - 1]
        elif cmd.name == "at" and "x" in cmd.args:
            self.state["point"] = [cmd.args["x"], cmd.args["y"]]
        else:
            changed = False
        self.emit({"kind": "command", "t": at_s if at_s is not None else self.time_s(),
                   "src": src, "cmd": cmd.to_line(), "tag": tag})
        if changed:
            self.emit({"kind": "state", **self.state})

    def emit(self, event: dict[str, Any]) -> None:
        for fn in self.listeners:
            fn(event)

    def add_listener(self, fn: Any) -> None:
        self.listeners.append(fn)

    def message(self, text: str) -> None:
        self.emit({"kind": "message", "text": text})

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.state)

    def settle(self) -> None:
        self.settled = getattr(self, "settled", 0) + 1

    def time_s(self) -> float:
        return time.monotonic() - self.t0

    def point_names(self) -> list[str]:
        return ["glass"]

    def sequence_names(self) -> list[str]:
        return ["arp"]


def msg(address: str, *args: Any) -> bytes:
    return encode_message(address, list(args))


def bundle(timetag: float, *messages: bytes) -> bytes:
    b = OscBundleBuilder(timetag)
    for m in messages:
        b.add_content(OscMessage(m))
    return b.build().dgram


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_core(deferred: bool = False, **kw: Any) -> tuple[OscCore, FakeEngine, Clock]:
    engine = FakeEngine(deferred)
    clock = Clock()
    core = OscCore(engine, clock=clock, **kw)
    return core, engine, clock


def errors(replies: list) -> list[tuple[str, str]]:
    return [(args[0], args[1]) for _, address, args in replies if address == "/pgesam/error"]


def test_valid_messages_are_submitted() -> None:
    core, engine, _ = make_core()
    assert core.handle_datagram(msg("/pgesam/note", 60), A) == []
    assert core.handle_datagram(msg("/pgesam/note", "C4", 1, 0.5), A) == []
    assert core.handle_datagram(msg("/pgesam/note_at", 0.2, -0.1, 62.0, 0.7), A) == []
    assert core.handle_datagram(msg("/pgesam/tempo", 96), A) == []
    assert core.handle_datagram(msg("/pgesam/seq/start", "arp"), A) == []
    assert core.handle_datagram(msg("/pgesam/hush"), A) == []
    assert core.handle_datagram(msg("/pgesam/cmd", 'seq a "C4 ~ E4" 0.5'), A) == []
    assert [s for _, s, _ in engine.submitted] == [
        "note 60", "note 60 1 0.5", "note_at 0.2 -0.1 62 0.7", "tempo 96", "start arp", "hush",
        # (the step 0.5 is the default: the canonical line leaves it out)
        'seq a "C4 ~ E4"']
    assert all(src == "osc" for src, _, _ in engine.submitted)


@pytest.mark.parametrize("data, address, fragment", [
    (msg("/pgesam/nope", 1), "/pgesam/nope", "unknown address"),
    (msg("/pgesam/tempo", "fast"), "/pgesam/tempo", "int or float"),
    (msg("/pgesam/tempo", math.nan), "/pgesam/tempo", "finite"),
    (msg("/pgesam/tempo", math.inf), "/pgesam/tempo", "finite"),
    (msg("/pgesam/tempo", 1e30), "/pgesam/tempo", "out of range"),
    (msg("/pgesam/note"), "/pgesam/note", "missing PITCH"),
    (msg("/pgesam/note", 60, 0.5, 1.0, 9), "/pgesam/note", "too many"),
    (msg("/pgesam/note", 200), "/pgesam/note", "outside what the model plays: 9..120"),
    (msg("/pgesam/xy", 0.5, 2), "/pgesam/xy", "out of range 0..1"),
    (msg("/pgesam/point", "nowhere"), "/pgesam/point", "no point"),
    (msg("/pgesam/cmd", "tempp 3"), "/pgesam/cmd", "unknown command"),
    (msg("/pgesam/cmd", 3), "/pgesam/cmd", "one string"),
    (msg("/pgesam/cmd", "quit"), "/pgesam/cmd", "not available over OSC"),
    (msg("/pgesam/status", 1), "/pgesam/status", "no arguments"),
    (msg("/pgesam/note", 60, 0.5)[:-4], "", "truncated"),
    (msg("/pgesam/note", 60, 0.5)[:-1], "", "multiple of 4"),
    (b"GET / HTTP/1.1\r\n\r\n\0\0", "", "not an OSC message"),
    (b"", "", "not an OSC"),
    (bundle(IMMEDIATELY, msg("/pgesam/hush"))[:-4], "", "does not fit"),
])
def test_every_rejection_is_answered(data: bytes, address: str, fragment: str) -> None:
    core, engine, _ = make_core()
    replies = core.handle_datagram(data, A)
    errs = errors(replies)
    assert len(errs) == 1, replies
    assert all(r[0] == A for r in replies)
    assert errs[0][0] == address and fragment in errs[0][1], errs
    assert engine.submitted == []


def _nested(depth: int) -> bytes:
    """/pgesam/hush inside `depth` bundles, each built by hand as the OSC 1.0 spec lays it
    out ("#bundle", a time tag of 1 = immediately, the element's size, the element)."""
    data = msg("/pgesam/hush")
    for _ in range(depth):
        data = b"#bundle\0" + (1).to_bytes(8, "big") + len(data).to_bytes(4, "big") + data
    return data


def test_hostile_datagrams_are_answered_briefly_and_safely() -> None:
    """Bundles nested without end are refused (not recursed into), type tags python-osc would
    drop are named, and an address full of terminal escapes or 60 kB long is echoed escaped
    and clipped: the reply still fits a datagram and the terminal line cannot clear the
    screen."""
    core, engine, _ = make_core()
    assert errors(core.handle_datagram(_nested(8), A)) == []  # 8 levels: played
    assert engine.submitted == [("osc", "hush", None)]
    (err,) = errors(core.handle_datagram(_nested(990), A))
    assert "nested deeper than 8" in err[1]
    typed = b"/pgesam/note\0\0\0\0,c\0\0" + (65).to_bytes(4, "big")
    (err,) = errors(core.handle_datagram(typed, A))
    assert "type tag 'c' is not supported" in err[1]
    said: list[str] = []
    engine.message = said.append  # type: ignore[attr-defined]
    core.tell_every_s = 0.0  # every error told in the terminal
    (err,) = errors(core.handle_datagram(msg("/pgesam/\x1b[2J\x1b]0;pwned\x07"), A))
    assert "\x1b" not in err[0] + err[1] and "\\x1b[2J" in err[0]
    assert said and "\x1b" not in said[-1]
    replies = core.handle_datagram(msg("/pgesam/" + "x" * 65_000), A)
    (err,) = errors(replies)
    assert len(err[0]) <= 120 and len(err[1]) <= 1000
    assert len(encode_message("/pgesam/error", list(err))) < 65_507


def test_status_help_and_state_format() -> None:
    core, engine, _ = make_core()
    engine.state["bookmarks"] = {"nice": [0.1, 0.2]}
    engine.state["sequences"] = ["arp", "bass"]
    ((to, address, args),) = core.handle_datagram(msg("/pgesam/status"), A)
    assert to == A and address == "/pgesam/state"
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["tempo_bpm"] == 120.0 and pairs["x"] == 0.0 and pairs["y"] == 0.0
    assert pairs["sequences"] == "arp bass" and pairs["bookmarks"] == '{"nice": [0.1, 0.2]}'
    assert pairs["point_name"] == ""
    ((_, address, args),) = core.handle_datagram(msg("/pgesam/cmd", "help tempo"), A)
    assert address == "/pgesam/help" and "usage: tempo BPM" in args[0]
    assert core.handle_datagram(msg("/pgesam/cmd", "status"), A)[0][1] == "/pgesam/state"
    assert flatten_state({"ok": True, "n": 2**40})[1::2] == [2**40 * 1.0, 1]
    # The other front-end words answer too: a SuperCollider post window can show them.
    assert core.handle_datagram(msg("/pgesam/cmd", "points"), A) == [(A, "/pgesam/points",
                                                                     ["glass"])]
    # Every sequence, then the running ones (the REPL marks them with *).
    engine.state["sequences"] = ["bass"]
    assert core.handle_datagram(msg("/pgesam/cmd", "seqs"), A) == [
        (A, "/pgesam/seqs", ["arp", "bass"]), (A, "/pgesam/seqs/running", ["bass"])]
    ((_, address, args),) = core.handle_datagram(msg("/pgesam/cmd", "map"), A)
    assert address == "/pgesam/map" and "@" in args[0] and "+" in args[0]


def test_timetags() -> None:
    wall = [1_000_000.0]
    core, engine, _ = make_core(wall=lambda: wall[0])
    t_engine = engine.time_s()
    core.handle_datagram(bundle(wall[0] + 0.5, msg("/pgesam/note", 60)), A)
    core.handle_datagram(bundle(wall[0] - 3.0, msg("/pgesam/note", 61)), A)
    core.handle_datagram(bundle(IMMEDIATELY, msg("/pgesam/note", 62)), A)
    core.handle_datagram(bundle(wall[0] + 3600.0, msg("/pgesam/note", 63)), A)
    (_, _, at0), (_, _, at1), (_, _, at2), (_, _, at3) = engine.submitted
    assert at0 is not None and 0.45 < at0 - t_engine < 0.6
    assert at1 is None and at2 is None and at3 is None  # past, immediate, skewed: now
    assert core.stats["skewed"] == 1 and core.stats["scheduled"] == 1
    # a future bundle's move is scheduled, not coalesced
    core.handle_datagram(bundle(wall[0] + 0.2, msg("/pgesam/xy", 0.1, 0.1),
                                msg("/pgesam/xy", 0.2, 0.2)), A)
    assert [s for s, _, _ in engine.submitted[-2:]] == ["osc", "osc"]
    assert len(engine.submitted) == 6


def test_every_move_applies_by_default() -> None:
    core, engine, clock = make_core()
    for i in range(100):  # 100 moves within 5 ms: all performed and journalled
        core.handle_datagram(msg("/pgesam/xy", i / 100, 0.5), A)
        clock.now += 0.00005
    assert len(engine.submitted) == 100 and engine.submitted[-1][1] == "xy 0.99 0.5"


def test_xy_stream_is_coalesced() -> None:
    core, engine, clock = make_core(coalesce_s=0.010)
    for i in range(100):  # 100 moves within 5 ms
        core.handle_datagram(msg("/pgesam/xy", i / 100, 0.5), A)
        clock.now += 0.00005
    assert [s for _, s, _ in engine.submitted] == ["xy 0 0.5"]  # the first applies at once
    assert core.next_due() == pytest.approx(100.010)
    assert core.poll() == []  # window not over: nothing yet
    clock.now = 100.011
    core.poll()
    assert engine.submitted[-1][1] == "xy 0.99 0.5"  # latest wins
    assert len(engine.submitted) == 2 and core.stats["coalesced"] == 98
    # a 60 Hz stream is far slower than the window: every move applies
    for i in range(60):
        clock.now += 1 / 60
        core.handle_datagram(msg("/pgesam/timbre", 0.0, i / 100), A)
        core.poll()
    assert len(engine.submitted) == 62


@pytest.mark.parametrize("deferred", [False, True])
def test_hello_push_is_rate_limited_without_echo(deferred: bool) -> None:
    core, engine, clock = make_core(deferred)
    assert core.handle_datagram(msg("/pgesam/hello"), A)[0][1] == "/pgesam/state"
    core.handle_datagram(msg("/pgesam/hello"), B)
    core.handle_datagram(msg("/pgesam/tempo", 90), A)   # A's own change
    core.handle_datagram(msg("/pgesam/tempo", 90), B)   # the same line from B, applied later
    audio = threading.Thread(target=engine.apply_pending)  # applied on another thread
    audio.start()
    audio.join()
    clock.now += 1
    pushed = core.poll()
    assert {to for to, _, _ in pushed} == {A, B}  # each hears the other's change only
    engine.state["tempo_bpm"] = 91.0
    core.handle_datagram(msg("/pgesam/tempo", 92), A)
    engine.apply_pending()
    clock.now += 1
    pushed = core.poll()
    assert {to for to, _, _ in pushed} == {B}  # pushed to B, not echoed to A
    state = next(a for to, addr, a in pushed if addr == "/pgesam/state")
    assert dict(zip(state[::2], state[1::2], strict=True))["tempo_bpm"] == 92.0
    assert (B, "/pgesam/xy", [0.5, 0.5]) in pushed  # the pad follows the point
    # 1,000 engine-side changes over one second, polled every millisecond
    counts = {A: 0, B: 0}
    last: dict = {}
    for i in range(1000):
        clock.now += 0.001
        engine.state["tempo_bpm"] = 100.0 + i / 10
        engine.emit({"kind": "state", **engine.state})
        for to, address, args in core.poll():
            if address == "/pgesam/state":
                counts[to] += 1
                last[to] = dict(zip(args[::2], args[1::2], strict=True))["tempo_bpm"]
    clock.now += 0.1
    for to, address, args in core.poll():
        if address == "/pgesam/state":
            counts[to] += 1
            last[to] = dict(zip(args[::2], args[1::2], strict=True))["tempo_bpm"]
    assert all(25 <= n <= 32 for n in counts.values()), counts  # <= 30 Hz (+ the final one)
    assert last[A] == last[B] == pytest.approx(199.9)  # latest value wins
    core.handle_datagram(msg("/pgesam/bye"), A)
    engine.emit({"kind": "state", **engine.state})
    clock.now += 1
    assert {to for to, _, _ in core.poll()} == {B}


def test_ready_goes_to_the_requester() -> None:
    core, engine, _ = make_core()
    core.handle_datagram(msg("/pgesam/prerender", 0.3, -0.2, 60, 62), A)
    core.handle_datagram(msg("/pgesam/prerender", 0.9, 0.9), B)
    assert engine.submitted[0][1] == "prerender 0.3 -0.2 60 62"
    engine.emit({"kind": "ready", "x": 0.3, "y": -0.2, "pitch": 61})
    engine.emit({"kind": "ready", "x": 0.3, "y": -0.2, "pitch": 70})  # outside A's range
    engine.emit({"kind": "ready", "x": 0.9, "y": 0.9, "pitch": 30})
    replies = core.poll()
    assert (A, "/pgesam/ready", [pytest.approx(0.3), pytest.approx(-0.2), 61]) in replies
    assert [(to, a[2]) for to, addr, a in replies if addr == "/pgesam/ready"] == \
        [(A, 61), (B, 30)]


def test_internal_engine_error_is_answered() -> None:
    core, engine, _ = make_core()

    def boom(*a: Any, **k: Any) -> Reply:
        raise RuntimeError("kaboom")

    engine.submit = boom  # type: ignore[method-assign]
    errs = errors(core.handle_datagram(msg("/pgesam/hush"), A))
    assert errs == [("/pgesam/hush", "internal error: RuntimeError: kaboom")]


# ------------------------------------------------------------------------ real sockets

MALFORMED = [
    msg("/pgesam/tempo", "fast"),
    msg("/pgesam/unknown", 1),
    msg("/pgesam/note", math.nan),
    msg("/pgesam/tempo", 1e30),
    msg("/pgesam/note", 60, 0.5)[:-4],
    b"\x00\x01garbage!",
    msg("/pgesam/note_at", 0.1),
    msg("/pgesam/xy", math.inf, 0.5),
    b"hello world!",
    msg("/pgesam/cmd", "panik"),
]
VALID = [
    msg("/pgesam/note", 60),
    msg("/pgesam/note", "E4", 0.5, 0.25),
    msg("/pgesam/tempo", 100.5),
    msg("/pgesam/note_at", 0.1, 0.2, 64),
    msg("/pgesam/cmd", "play C4 E4 vel 0.3"),
    msg("/pgesam/seq/start", "arp"),
    msg("/pgesam/hush"),
    msg("/pgesam/prerender", 0.0, 0.0, 48, 50),
    msg("/pgesam/point", "glass"),
]


def test_loopback_burst_and_journal(tmp_path: Path) -> None:
    """1,000 datagrams at 500/s, 10 % malformed: every malformed one answered, every valid
    one submitted and journalled."""
    engine = FakeEngine()
    journal = Journal(tmp_path / "s.jsonl", make_header("fake", 0, 120))
    engine.add_listener(journal)
    plan = [MALFORMED[(i // 10) % len(MALFORMED)] if i % 10 == 3 else VALID[i % len(VALID)]
            for i in range(1000)]
    n_bad = sum(1 for d in plan if d in MALFORMED)
    received: list[bytes] = []

    async def main() -> OscServer:
        server = OscServer(engine, port=0)
        await server.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.5)

        def client() -> None:
            t0 = time.perf_counter()
            for i, data in enumerate(plan):
                while time.perf_counter() < t0 + i / 500:
                    time.sleep(0.0005)
                sock.sendto(data, ("127.0.0.1", server.port))
            deadline = time.monotonic() + 5
            while len(received) < n_bad and time.monotonic() < deadline:
                try:
                    received.append(sock.recvfrom(65536)[0])
                except TimeoutError:
                    pass

        reader = threading.Thread(target=client)
        reader.start()
        while reader.is_alive():
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 3  # the last valid ones may still be queued
        while server.stats["datagrams"] < len(plan) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        sock.close()
        server.close()
        return server

    server = asyncio.run(main())
    journal.close()
    replies = [OscMessage(d) for d in received]
    assert len(replies) == n_bad == 100
    assert all(r.address == "/pgesam/error" and len(r.params) == 2 for r in replies)
    assert server.stats["errors"] == n_bad and server.stats["datagrams"] == 1000
    _, entries = read_journal(tmp_path / "s.jsonl")
    assert len(entries) == len(engine.submitted) == 900
    assert all(e.src == "osc" for e in entries)


def test_loopback_timetag_hello_and_no_echo() -> None:
    engine = FakeEngine(deferred=True)  # commands applied by an "audio" thread, as in core
    stop = threading.Event()

    def audio() -> None:
        while not stop.is_set():
            engine.apply_pending()
            time.sleep(0.005)

    audio_thread = threading.Thread(target=audio)
    audio_thread.start()

    async def main() -> tuple[list, list, float | None]:
        server = OscServer(engine, port=0, coalesce_s=0.010)
        await server.start()
        loop = asyncio.get_running_loop()
        inbox: dict[str, list] = {"a": [], "b": []}

        class Client(asyncio.DatagramProtocol):
            def __init__(self, name: str) -> None:
                self.name = name

            def datagram_received(self, data: bytes, addr: Any) -> None:
                inbox[self.name].append(OscMessage(data))

        ta, _ = await loop.create_datagram_endpoint(lambda: Client("a"),
                                                    remote_addr=("127.0.0.1", server.port))
        tb, _ = await loop.create_datagram_endpoint(lambda: Client("b"),
                                                    remote_addr=("127.0.0.1", server.port))
        ta.sendto(msg("/pgesam/hello"))
        tb.sendto(msg("/pgesam/hello"))
        await asyncio.sleep(0.05)
        for i in range(50):  # a's pad moving fast
            ta.sendto(msg("/pgesam/xy", i / 50, 0.25))
            await asyncio.sleep(0.001)
        t_sent = engine.time_s()
        tb.sendto(bundle(time.time() + 0.3, msg("/pgesam/note", 72)))
        await asyncio.sleep(0.3)
        ta.close()
        tb.close()
        server.close()
        at = next(at for _, line, at in engine.submitted if line == "note 72")
        return inbox["a"], inbox["b"], None if at is None else at - t_sent

    try:
        a, b, delay = asyncio.run(main())
    finally:
        stop.set()
        audio_thread.join()
    assert delay is not None and 0.25 < delay < 0.35
    moves = [line for _, line, _ in engine.submitted if line.startswith("xy")]
    assert 2 <= len(moves) < 50 and moves[-1].startswith("xy 0.98")  # coalesced, latest wins
    assert [m.address for m in a] == ["/pgesam/state"]  # hello's answer only: no echo
    b_states = [m for m in b if m.address == "/pgesam/state"]
    assert 2 <= len(b_states) <= 1 + 30 * 0.4 + 1
    last = dict(zip(b_states[-1].params[::2], b_states[-1].params[1::2], strict=True))
    assert last["x"] == pytest.approx(2 * 0.98 - 1, abs=1e-6)


def test_real_engine_offline_timetag_lands_in_the_journal(tmp_path: Path) -> None:
    """OSC into the real engine (offline rig, stand-in synth): a bundle 0.5 s ahead is applied
    and journalled at that engine time (within one block), bad values answered by the core."""
    import os

    os.environ.setdefault("PYO_GUI_WX", "0")
    from pgesam_live.app.build import OfflineRig
    from pgesam_live.settings import Settings
    from tests.fakes import FakeSynth

    rig = OfflineRig(Settings().replace(audio="offline", cache_spill=False),
                     synth=FakeSynth(24000))
    try:
        engine = rig.engine
        journal = Journal(tmp_path / "s.jsonl", make_header("fake", 0, 120))
        engine.add_listener(journal)
        wall = [5_000_000.0]
        core = OscCore(engine, wall=lambda: wall[0])
        t_now = engine.time_s()
        assert core.handle_datagram(msg("/pgesam/tempo", 90), A) == []
        assert core.handle_datagram(bundle(wall[0] + 0.5, msg("/pgesam/note", "C4")), A) == []
        errs = errors(core.handle_datagram(msg("/pgesam/point", "nowhere"), A))
        assert errs and errs[0][0] == "/pgesam/point" and "nowhere" in errs[0][1]
        rig.run_until(t_now + 1.0)
        journal.close()
        _, entries = read_journal(tmp_path / "s.jsonl")
        by_cmd = {e.cmd: e for e in entries}
        assert set(by_cmd) == {"tempo 90", "note 60"}
        block_s = engine.clock.block_s
        assert abs(by_cmd["note 60"].t_s - (t_now + 0.5)) <= block_s
        assert engine.snapshot()["tempo_bpm"] == 90
    finally:
        rig.close()


def test_touchosc_layout_addresses_are_accepted(tmp_path: Path) -> None:
    """Every OSC message in the generated TouchOSC layout is one the instrument accepts."""
    import importlib.util
    import zlib
    from xml.etree import ElementTree as ET

    from pgesam_live.vocab.commands import from_osc

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "make_layout", root / "examples" / "touchosc" / "make_layout.py")
    assert spec is not None and spec.loader is not None
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    out = tmp_path / "t.tosc"
    layout.write(layout.build(["arp", "pad"]), out)
    doc = ET.fromstring(zlib.decompress(out.read_bytes()).decode("utf-8"))
    seen = set()
    for osc in doc.iter("osc"):
        address = osc.findtext("path/partial/value")
        args: list[Any] = []
        for p in osc.findall("arguments/partial"):
            value, conv = p.findtext("value") or "", p.findtext("conversion")
            if p.findtext("type") == "VALUE":  # a control value 0..1, scaled
                lo, hi = float(p.findtext("scaleMin") or 0), float(p.findtext("scaleMax") or 1)
                args.append(lo + 0.5 * (hi - lo))
            else:
                args.append(int(value) if conv == "INTEGER" else
                            float(value) if conv == "FLOAT" else value)
        seen.add(address)
        if address == "/pgesam/hello":
            continue
        from_osc(address, args)  # raises CommandError if the layout sent something invalid
    assert {"/pgesam/xy", "/pgesam/note", "/pgesam/hush", "/pgesam/panic", "/pgesam/tempo",
            "/pgesam/seq/start", "/pgesam/seq/stop", "/pgesam/hello"} <= seen


def test_one_ready_per_note_even_when_asked_twice() -> None:
    core, engine, _ = make_core()
    for _ in range(2):  # the same prerender twice (the second finds the notes cached)
        core.handle_datagram(msg("/pgesam/prerender", 0.3, -0.2, 60, 61), A)
    for pitch in (60, 61, 60, 61, 60):
        engine.emit({"kind": "ready", "x": 0.3, "y": -0.2, "pitch": pitch})
    readies = [(to, a[2]) for to, addr, a in core.poll() if addr == "/pgesam/ready"]
    # each request answered once per note: two requests, two notes
    assert sorted(readies) == [(A, 60), (A, 60), (A, 61), (A, 61)]
    engine.emit({"kind": "ready", "x": 0.3, "y": -0.2, "pitch": 60})  # a later render there
    assert [r for r in core.poll() if r[1] == "/pgesam/ready"] == []


def test_a_pad_follows_the_point_when_it_moves_by_itself() -> None:
    """A glide moves the point with no command: the controllers still get it pushed."""
    core, engine, clock = make_core()
    core.handle_datagram(msg("/pgesam/hello"), A)
    assert core.poll() == []  # nothing moved
    engine.state["point"] = [-0.4, -0.4]  # the glide's end, reached by itself
    clock.now += 1.0
    pushed = core.poll()
    assert (A, "/pgesam/xy", [pytest.approx(0.3), pytest.approx(0.3)]) in pushed
    clock.now += 1.0
    assert core.poll() == []  # once


def test_timed_bundles_keep_their_spacing_through_clock_jitter() -> None:
    """Engine time read once per datagram jitters by a fraction of a block; the bundles'
    engine times keep the spacing of their time tags."""
    core, engine, _ = make_core()
    wall = {"now": 1000.0}
    core.wall = lambda: wall["now"]
    jitter = iter([0.0, 0.0006, -0.0004, 0.0005, -0.0006, 0.0003] * 4)
    engine.time_s = lambda: (wall["now"] - 1000.0) + 5.0 + next(jitter)  # type: ignore[method-assign]
    tags = [1000.5 + k * 0.7003 for k in range(6)]
    for k, tag in enumerate(tags):
        wall["now"] = 1000.0 + k * 0.7003  # each sent 0.5 s ahead of its time
        core.handle_datagram(bundle(tag, msg("/pgesam/note", 60)), A)
    ats = [at for _, line, at in engine.submitted if line.startswith("note")]
    gaps = [b - a for a, b in zip(ats, ats[1:], strict=False)]
    assert max(abs(g - 0.7003) for g in gaps) < 0.0002  # raw readings: up to 1.1 ms off


def test_messages_of_one_bundle_get_one_engine_time() -> None:
    """A note-off and the next note-on in one bundle keep their order at one time."""
    core, engine, _ = make_core()
    wall = {"now": 1000.0}
    core.wall = lambda: wall["now"]
    jitter = iter([0.0, 0.0009, -0.0007, 0.0004] * 4)
    engine.time_s = lambda: 5.0 + next(jitter)  # type: ignore[method-assign]
    core.handle_datagram(bundle(1001.0, msg("/pgesam/release", 62), msg("/pgesam/note", 62),
                                msg("/pgesam/note", 66)), A)
    timed = [(line, at) for _, line, at in engine.submitted]
    assert [line for line, _ in timed] == ["release 62", "note 62", "note 66"]
    assert len({at for _, at in timed}) == 1


def test_a_timed_command_refused_when_it_comes_due_is_answered_to_its_own_sender() -> None:
    wall = [1_000_000.0]
    core, engine, _ = make_core(deferred=True, wall=lambda: wall[0])  # applied later
    B = ("127.0.0.1", 50002)
    # A's bundle is due later than B's, for the same line: each refusal goes to its sender.
    assert core.handle_datagram(bundle(wall[0] + 3.0, msg("/pgesam/cmd", "at nosuch")), A) == []
    assert core.handle_datagram(bundle(wall[0] + 1.0, msg("/pgesam/point", "nosuch")), B) == []
    (_, _, _, tag_a), (_, _, _, tag_b) = engine.queue
    # The engine applies B's first (its time comes first) and refuses it there.
    core.on_event({"kind": "rejected", "src": "osc", "cmd": "at nosuch", "tag": tag_b,
                   "text": "no point named 'nosuch'"})
    assert core.poll() == [(B, "/pgesam/error", ["/pgesam/point", "no point named 'nosuch'"])]
    core.on_event({"kind": "rejected", "src": "osc", "cmd": "at nosuch", "tag": tag_a,
                   "text": "no point named 'nosuch'"})
    assert core.poll() == [(A, "/pgesam/error", ["/pgesam/cmd", "no point named 'nosuch'"])]
    # A refusal of a line from elsewhere (the REPL) is nobody's here.
    core.on_event({"kind": "rejected", "src": "repl", "cmd": "at nosuch", "text": "x"})
    assert core.poll() == []


def test_hello_and_bye_take_no_arguments() -> None:
    core, _, _ = make_core()
    for address in ("/pgesam/hello", "/pgesam/bye"):
        assert errors(core.handle_datagram(msg(address, 1), A)) == [
            (address, f"{address} takes no arguments")]
    assert core.controllers == {}


def test_hello_clients_hear_voices_in_use_and_late_notes_change_by_themselves() -> None:
    """No command changes them (notes end, renders come late): the watch pushes them, at
    most push_hz a second, and nothing when they stay put."""
    core, engine, clock = make_core()
    core.handle_datagram(msg("/pgesam/hello"), A)
    clock.now += 1
    core.poll()  # the first look: what the controller was greeted with
    clock.now += 1
    assert [r for r in core.poll() if r[1] == "/pgesam/state"] == []  # nothing changed
    for key, value in (("voices_in_use", 5), ("late_notes", 2)):
        engine.state[key] = value
        clock.now += 1
        states = [a for to, addr, a in core.poll() if addr == "/pgesam/state" and to == A]
        assert len(states) == 1, key
        assert dict(zip(states[0][::2], states[0][1::2], strict=True))[key] == value
    clock.now += 1
    assert [r for r in core.poll() if r[1] == "/pgesam/state"] == []


def test_osc_errors_are_said_in_the_terminal_rate_limited() -> None:
    """What a controller is answered with /pgesam/error also reaches the terminal (an engine
    message: a line above the prompt), at most one every 2 s; the ones between are counted."""
    core, engine, clock = make_core()
    said: list[str] = []
    engine.add_listener(lambda ev: said.append(ev["text"]) if ev.get("kind") == "message"
                        else None)
    assert errors(core.handle_datagram(msg("/pgesam/tempo", 900), A))
    assert len(said) == 1 and said[0].startswith("osc 127.0.0.1:") and "/pgesam/tempo" in said[0]
    assert "900" in said[0]
    for _ in range(5):  # a controller's burst: answered each time, said once
        assert errors(core.handle_datagram(msg("/pgesam/nope"), A))
        clock.now += 0.1
    assert errors(core.handle_datagram(b"garbage", A))
    assert len(said) == 1
    clock.now += 2.0
    assert errors(core.handle_datagram(msg("/pgesam/tempo", "fast"), A))
    assert len(said) == 2 and "(and 6 more OSC errors since the last shown)" in said[1]


def test_an_export_is_reported_to_its_sender_and_the_controllers() -> None:
    """`/pgesam/cmd "export NAME"`: answered at once, then progress and the end (the path,
    or the error) reported to the sender and to every controller; other senders hear
    nothing."""
    core, engine, _ = make_core()
    started: list[tuple[Any, Any]] = []

    def start_export(point: Any = None, out_dir: Any = None, pitches: Any = None,
                     src: str = "repl", name: Any = None) -> Reply:
        started.append((out_dir, src))
        return Reply(True, "export: rendering 2 notes into sessions/export-pad")

    engine.start_export = start_export  # type: ignore[attr-defined]
    C = ("127.0.0.1", 50003)
    core.handle_datagram(msg("/pgesam/hello"), B)
    assert core.handle_datagram(msg("/pgesam/cmd", "export pad"), A) == [
        (A, "/pgesam/export", ["export: rendering 2 notes into sessions/export-pad"])]
    assert started == [("pad", "osc")]
    core.poll()
    engine.emit({"kind": "export", "name": "pad", "done": 1, "total": 2, "sfz": None,
                 "error": None})
    engine.emit({"kind": "export", "name": "pad", "done": 2, "total": 2,
                 "sfz": "/s/export-pad/pad.sfz", "error": None})
    engine.emit({"kind": "export", "name": "pad", "done": 0, "total": 2, "sfz": None,
                 "error": "disk full"})
    got = [r for r in core.poll() if r[1].startswith("/pgesam/export")]
    for to in (A, B):
        assert [(addr, args) for t, addr, args in got if t == to] == [
            ("/pgesam/export/progress", ["pad", 1, 2]),
            ("/pgesam/export/done", ["pad", "/s/export-pad/pad.sfz"]),
            ("/pgesam/export/error", ["pad", "disk full"])]
    assert not any(t == C for t, _, _ in got)
