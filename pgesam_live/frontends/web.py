"""The web page (aiohttp, on the app's asyncio loop): the timbre map live in a browser.

Routes (the contract's "Web page"):
  GET  /            the page (frontends/web_static/: plain HTML, CSS, JS; nothing from a CDN)
  GET  /static/F    its script, style sheet and audio worklet
  GET  /map.json    the map as `pgesam-live map --json` prints it (vocab/views.py)
  GET  /ws          WebSocket: the page sends {"cmd": "<REPL line>", "id"?: n}, answered
                    {"reply": ..., "id"?} or {"error": ..., "id"?}; {"listen": true|false}
                    streams the master output as binary PCM frames (below); {"ping": t} is
                    answered {"pong": t}. The server pushes {"state": {...}, "status": LINE}
                    (the OSC /pgesam/state snapshot as native JSON and the REPL's status
                    line; at most push_hz a second, latest wins, never echoing the page's
                    own moves: seam.py) and {"message": TEXT} (what the REPL prints above
                    its prompt).
  POST /cmd         one line (JSON {"cmd": LINE}, a form's cmd=LINE, or plain text), answered
                    as on the socket.

Every line goes through the seam's `run_line` with src `web`: the same command table, the
same door, journalled with `src` `web`; a `load` only of patches in the patch folder, no
`quit` or `keys` (vocab/sources.py).

Security: a WebSocket handshake or POST whose Origin is not the page's own (or that has
none) is refused with 403, so no other web site the performer visits can drive the
instrument. Bound to loopback (the default), a request whose Host is not a loopback name is
refused too (DNS rebinding); beyond loopback (`--web-host 0.0.0.0`) every request needs the
token the printed URL carries (`?token=`, then a cookie). The token is printed at start and
never shown by `status`.

A client is read one message at a time and written by its own task, from bounded queues
(replies dropped oldest first past MAX_QUEUED, state latest-wins, audio at most
AUDIO_QUEUE_S behind): one that floods is slowed (MAX_MESSAGES_PER_S, then refused with an
error), one that stops reading loses its oldest audio, one that disconnects mid-message is
forgotten; none holds up the audio thread, OSC, MIDI or the REPL. Lines run in a worker
thread, so a view waiting for the audio block (`status`) never blocks the loop.

Audio frames (little-endian): magic b"PGA1", uint32 sample rate, uint16 channels, uint16 0,
uint32 frames, float64 engine time of the first frame, float64 engine time when sent; then
int16 interleaved PCM. The audio engine's tap (record and none backends; a sound card's
output is not tapped) only appends each block to a deque on the audio thread; the loop
packs and sends every AUDIO_PACKET_S.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hmac
import itertools
import json
import math
import os
import secrets
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live import faults
from pgesam_live.errors import ConfigError
from pgesam_live.frontends.seam import Clients, LineResult, LoopService, run_line
from pgesam_live.vocab.commands import Command
from pgesam_live.vocab.views import (
    EngineView,
    Reply,
    engine_map_data,
    json_state,
    status_line,
    view_region,
)

STATIC_DIR = Path(__file__).with_name("web_static")
STATIC_FILES = {  # name -> content type: nothing else is served
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "listen-worklet.js": "text/javascript; charset=utf-8",
}
DEFAULT_PORT = 8765
SRC = "web"
MAX_MESSAGE_BYTES = 64 * 1024      # a socket message; larger closes the socket (1009)
MAX_LINE_CHARS = 4000              # a line longer than this is refused, not parsed
MAX_MESSAGES_PER_S = 120.0         # per client, sustained (a drag at 60 Hz plus keys)
BURST_MESSAGES = 240.0
MAX_QUEUED = 512                   # replies and messages waiting for a slow client
MAX_SOCKETS = 32                   # pages open at once (each one is a control surface)
AUDIO_PACKET_S = 0.04              # the loop sends the master output this often
AUDIO_QUEUE_S = 1.0                # at most this much audio waits for a slow client
REFRESH_S = 0.5                    # the state again when what the page shows changed
TOKEN_COOKIE = "pgesam_token"
AUDIO_MAGIC = b"PGA1"
AUDIO_HEADER = struct.Struct("<4sIHHIdd")

_LOOPBACK_NAMES = ("localhost", "localhost.")


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or a Host header's name) is this machine only."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name part of a Host header (`127.0.0.1:8765`, `[::1]:8765`, `localhost`)."""
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """The one line a failed bind is, naming the option that fixes it."""
    if exc.errno == errno.EADDRINUSE:
        fix = ("another program has it (another instrument, a live replay?): choose another "
               "with --web-port, or --no-web")
    else:
        fix = "give --web-host an address of this machine (127.0.0.1, or 0.0.0.0 for every " \
              "interface), or --no-web"
    # (an unknown host name is a socket.gaierror: its errno is a resolver code, not errno's)
    why = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return f"web page: cannot listen on {host}:{port} ({why}); {fix}"


def web_port_problem(host: str, port: int) -> str | None:
    """Why the page could not listen on host:port now (None: it can): `doctor`'s check."""
    import socket  # noqa: PLC0415

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        sock.bind((host, port))
    except OSError as exc:
        return bind_problem(host, port, exc)
    finally:
        sock.close()
    return None


class _Bucket:
    """A token bucket: `take()` is False when the client sends faster than allowed."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.level = burst
        self.t = clock()

    def take(self) -> bool:
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


def _track_held(held: set[int], cmd: Command) -> None:
    """Keep a page's held keys from an accepted command."""
    if cmd.name in ("note", "note_at") and cmd.args.get("mode") is not None:
        held.add(int(cmd.args["pitch"]))
    elif cmd.name == "release":
        held.discard(int(cmd.args["pitch"]))
    elif cmd.name == "panic":
        held.clear()


@dataclass
class _Client:
    """One page's socket: what waits to be sent to it, and its sender task's wake-up."""

    id: int
    ws: Any
    bucket: _Bucket
    texts: collections.deque[str] = field(default_factory=collections.deque)
    state: str | None = None
    audio: collections.deque[bytes] = field(default_factory=collections.deque)
    audio_s: float = 0.0
    listening: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    last_flood_said_s: float = -math.inf
    held: set[int] = field(default_factory=set)  # keys this page holds (`note P V hold`)


class WebServer:
    """`WebServer(view, host, port, audio=...)`; `await start()` on the app's loop,
    `await stop()` (or `close()` from another thread) at exit. Port 0 takes a free one."""

    def __init__(self, view: EngineView, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 *, audio: Any = None, token: str | None = None, push_hz: float = 30.0,
                 refresh_s: float | None = REFRESH_S, require_token: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.host = host
        self.port = port
        self.audio = audio
        self.token = token or secrets.token_urlsafe(18)
        # Beyond loopback every request needs the token (tests ask for it on loopback).
        self.needs_token = not is_loopback(host) if require_token is None else require_token
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.clients = Clients(view, SRC, self.stats, clock=clock, push_hz=push_hz,
                               refresh_s=refresh_s)
        self._service = LoopService(self._serve, clock=clock)
        self.clients.wake = self._service.wake
        self._open: dict[int, _Client] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._audio_blocks: collections.deque[tuple[np.ndarray, float]] = \
            collections.deque(maxlen=4096)
        self._tapping = False
        self._audio_task: asyncio.Task[None] | None = None
        self._static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}
        self._page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    # ---------------------------------------------------------------- addresses
    @property
    def url(self) -> str:
        """The page's address, without the token (what `status` shows)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            import socket  # noqa: PLC0415

            host = socket.gethostname()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        """The address to open: beyond loopback it carries the token (printed at start)."""
        return f"{self.url}?token={self.token}" if self.needs_token else self.url

    # ---------------------------------------------------------------- life cycle
    async def start(self) -> None:
        """Listen; a ConfigError (one line naming --web-port) when it cannot."""
        from aiohttp import web  # noqa: PLC0415

        self._loop = asyncio.get_running_loop()
        self._service.bind(self._loop)
        app = web.Application(middlewares=[self._make_guard()],
                              client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_get("/", self._index)
        app.router.add_get("/map.json", self._map_json)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/favicon.ico", self._no_icon)
        app.router.add_get("/ws", self._websocket)
        app.router.add_post("/cmd", self._post_cmd)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(bind_problem(self.host, self.port, exc)) from None
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self.view.add_listener(self._on_engine_event)

    async def stop(self) -> None:
        self.view.remove_listener(self._on_engine_event)
        self._stop_tap()
        self._service.cancel()
        for client in list(self._open.values()):
            with contextlib.suppress(Exception):
                await client.ws.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def close(self, timeout_s: float = 3.0) -> None:
        """stop() from another thread (the app's shutdown)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(self.stop(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout_s)

    # ---------------------------------------------------------------- the guard
    def _refusal(self, request: Any) -> str | None:
        """Why `request` is refused (403), or None."""
        if not self.needs_token and not is_loopback(_host_name(request.host or "")):
            return "this page answers at its loopback address only (open " \
                   f"http://127.0.0.1:{self.port}/)"
        if self.needs_token:
            given = request.query.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return "the address needs the token the instrument printed at start " \
                       "(http://HOST:PORT/?token=...)"
        if request.method == "POST" or request.path == "/ws":
            origin = request.headers.get("Origin")
            own = f"{request.scheme}://{request.host}"
            if origin is None or origin != own:
                self.stats["foreign_origin"] += 1
                return f"Origin {origin or '(none)'} is not this page's own ({own}): only " \
                       "the instrument's page may drive it"
        return None

    def _make_guard(self) -> Any:
        from aiohttp import web  # noqa: PLC0415

        @web.middleware
        async def guard(request: Any, handler: Any) -> Any:
            refusal = self._refusal(request)
            if refusal is not None:
                self.stats["refused"] += 1
                return web.Response(status=403, text=refusal + "\n")
            response = await handler(request)
            if self.needs_token and request.query.get("token"):
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True,
                                    samesite="Strict")
            return response
        return guard

    # ---------------------------------------------------------------- HTTP
    def _headers(self, content_type: str) -> dict[str, str]:
        return {"Content-Type": content_type, "Cache-Control": "no-cache",
                # No other site may frame the page (and trick a click out of the performer).
                # Scripts are not restricted further: the page has none but its own, and
                # test drivers (Playwright's wait_for_function) evaluate code in it.
                "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "frame-ancestors 'none'"}

    async def _index(self, request: Any) -> Any:
        from aiohttp import web  # noqa: PLC0415

        region = view_region(self.view)
        page = self._page.replace("{{TOKEN}}", self.token if self.needs_token else "")
        for key, value in (("X_MIN", region.x_min), ("X_MAX", region.x_max),
                           ("Y_MIN", region.y_min), ("Y_MAX", region.y_max)):
            page = page.replace("{{" + key + "}}", f"{value:g}")
        return web.Response(body=page.encode(), headers=self._headers("text/html; "
                                                                      "charset=utf-8"))

    async def _static_file(self, request: Any) -> Any:
        from aiohttp import web  # noqa: PLC0415

        name = request.match_info["name"]
        if name not in self._static:
            return web.Response(status=404, text="no such file\n")
        return web.Response(body=self._static[name], headers=self._headers(STATIC_FILES[name]))

    async def _no_icon(self, request: Any) -> Any:
        from aiohttp import web  # noqa: PLC0415

        return web.Response(status=204)

    async def _map_json(self, request: Any) -> Any:
        from aiohttp import web  # noqa: PLC0415

        data = await asyncio.get_running_loop().run_in_executor(None, engine_map_data, self.view)
        return web.Response(body=json.dumps(data).encode(),
                            headers=self._headers("application/json"))

    async def _post_cmd(self, request: Any) -> Any:
        from aiohttp import web  # noqa: PLC0415

        try:
            raw = (await request.read()).decode("utf-8")
        except UnicodeDecodeError as exc:
            return web.json_response({"error": f"the body is not UTF-8 text ({exc.reason} at "
                                               f"byte {exc.start}): send the command line, "
                                               "or JSON {\"cmd\": LINE}, as UTF-8"},
                                     status=400)
        line: Any = raw
        # JSON by its type, or by its look (curl -d sends form-encoded; no command line
        # starts with "{"); a form's cmd= field (curl --data-urlencode cmd=...).
        if request.content_type == "application/json" or raw.lstrip().startswith("{"):
            try:
                body = json.loads(raw)
            except ValueError as exc:
                return web.json_response({"error": f"not JSON ({exc}): send "
                                                   "{\"cmd\": LINE} or the line as text"},
                                         status=400)
            line = body.get("cmd") if isinstance(body, dict) else None
        elif request.content_type == "application/x-www-form-urlencoded" and \
                raw.startswith("cmd="):
            from urllib.parse import parse_qs  # noqa: PLC0415

            line = (parse_qs(raw).get("cmd") or [""])[0]
        answer = await self._line(line, client_id=0)
        return web.json_response(answer, status=200 if "reply" in answer else 400)

    # ---------------------------------------------------------------- the socket
    async def _websocket(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web  # noqa: PLC0415

        if len(self._open) >= MAX_SOCKETS:
            self.stats["refused"] += 1
            return web.Response(status=503, text=f"{MAX_SOCKETS} pages are open already: "
                                                 "close one\n")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE_BYTES,
                                   compress=False)
        await ws.prepare(request)
        client = _Client(next(self._ids), ws, _Bucket(MAX_MESSAGES_PER_S, BURST_MESSAGES,
                                                      self.clock))
        self._open[client.id] = client
        self.stats["connections"] += 1
        sender = asyncio.create_task(self._send_loop(client))
        try:
            self._greet(client)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(client, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._say(client, {"error": "the page sends JSON text, not binary "
                                                "frames: {\"cmd\": \"play C4\"}"})
                elif msg.type == WSMsgType.ERROR:
                    break
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception as exc:  # a bug here ends this socket only
            faults.record("web: a page's socket", exc)
        finally:
            await self._release_held(client)  # before it is gone: then nothing is left held
            self._open.pop(client.id, None)
            self.clients.forget(client.id)
            if client.listening:
                client.listening = False
                self._update_tap()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        return ws

    def _greet(self, client: _Client) -> None:
        info = {"model": self.view.model.model_id, "url": self.url,
                "sample_rate": getattr(self.audio, "sample_rate", None),
                "channels": getattr(self.audio, "n_channels", None),
                "listen": self._can_listen()}
        self._say(client, {"hello": info})
        self.clients.listen(client.id)
        # The first state is built in a worker thread (a snapshot waits for the audio block).
        loop = asyncio.get_running_loop()

        def first() -> None:
            try:
                snap = self.clients.greeted(client.id, self.view.snapshot())
                loop.call_soon_threadsafe(self._set_state, client, snap)
            except Exception as exc:  # the page gets the state with the next push
                faults.record("web: a page's first state", exc)
        loop.run_in_executor(None, first)
        self._service.run()

    async def _on_text(self, client: _Client, data: str) -> None:
        self.stats["messages"] += 1
        if not client.bucket.take():
            self.stats["flood_dropped"] += 1
            now = self.clock()
            if now - client.last_flood_said_s >= 1.0:
                client.last_flood_said_s = now
                self._say(client, {"error": f"too many messages (over "
                                            f"{MAX_MESSAGES_PER_S:g} a second): dropped"})
            return
        try:
            msg = json.loads(data)
        except ValueError as exc:
            self._say(client, {"error": f"not JSON ({exc}); send {{\"cmd\": \"play C4\"}}"})
            return
        if not isinstance(msg, dict):
            self._say(client, {"error": "send a JSON object: {\"cmd\": \"play C4\"}"})
            return
        ident = msg.get("id")
        if ident is not None and not (isinstance(ident, int | str) and len(str(ident)) <= 64):
            self._say(client, {"error": "id must be a number or a short string"})
            return
        keys = set(msg) - {"id"}
        if keys == {"cmd"}:
            answer = await self._line(msg["cmd"], client.id, client.held)
        elif keys == {"listen"} and isinstance(msg["listen"], bool):
            answer = self._listen(client, msg["listen"])
        elif keys == {"ping"} and isinstance(msg["ping"], int | float) \
                and not isinstance(msg["ping"], bool):
            answer = {"pong": msg["ping"], "time_s": round(self.view.time_s(), 6)}
        else:
            answer = {"error": "unknown message: send {\"cmd\": LINE}, {\"listen\": true|false}"
                               " or {\"ping\": T}"}
        if ident is not None:
            answer["id"] = ident
        self._say(client, answer)
        self._service.run()  # pushes due now, and the timer of the next (the point's watch)

    async def _release_held(self, client: _Client) -> None:
        """A page gone with keys down (closed, reloaded, its network lost) lets them go as
        a key-up would: `release P`, journalled, so neither the room nor a replay keeps a
        stuck note."""
        for pitch in sorted(client.held):
            with contextlib.suppress(Exception):
                await self._line(f"release {pitch}", client.id)
        client.held.clear()

    async def _line(self, line: Any, client_id: int,
                    held: set[int] | None = None) -> dict[str, Any]:
        """A line from a page -> {"reply": ...} or {"error": ...} (never raises). held: the
        page's held keys, kept up to date from the lines accepted."""
        if not isinstance(line, str):
            return {"error": "cmd must be a string: one REPL line, e.g. \"play C4\""}
        if len(line) > MAX_LINE_CHARS:
            return {"error": f"the line is {len(line)} characters long; at most "
                             f"{MAX_LINE_CHARS}"}

        def submit(cmd: Command) -> Reply:
            return self.clients.submit(cmd, client_id)

        loop = asyncio.get_running_loop()
        try:
            result: LineResult = await loop.run_in_executor(
                None, lambda: run_line(self.view, line, SRC, submit=submit))
        except Exception as exc:  # the executor itself failing: said, never raised
            return {"error": f"internal error: {type(exc).__name__}: {exc}"}
        if not result.ok:
            self.stats["errors"] += 1
            return {"error": result.text or "rejected"}
        out: dict[str, Any] = {"reply": result.text}
        if held is not None and result.command is not None:
            _track_held(held, result.command)
        if result.command is not None and result.command.journal:
            out["cmd"] = result.command.to_line()  # accepted, journalled as this line
        a = result.answer
        if a is not None and a.word == "status":
            out = {"reply": a.text, "data": json_state(a.data)}
        elif a is not None and a.word == "points":
            out["data"] = list(a.data)
        elif a is not None and a.word == "seqs":
            names, running = a.data
            out["data"] = {"names": list(names), "running": list(running)}
        return out

    # ---------------------------------------------------------------- sending
    def _say(self, client: _Client, obj: dict[str, Any]) -> None:
        """Queue a reply or message for `client` (on the loop); the oldest goes past
        MAX_QUEUED."""
        client.texts.append(json.dumps(obj))
        while len(client.texts) > MAX_QUEUED:
            client.texts.popleft()
            client.dropped += 1
            self.stats["dropped"] += 1
        client.ready.set()

    def _set_state(self, client: _Client, snap: dict[str, Any]) -> None:
        if client.id not in self._open:
            return
        client.state = json.dumps({"state": json_state(snap), "status": status_line(snap)})
        client.ready.set()

    async def _send_loop(self, client: _Client) -> None:
        ws = client.ws
        while not ws.closed:
            await client.ready.wait()
            client.ready.clear()
            try:
                while client.texts or client.state is not None or client.audio:
                    if client.texts:
                        await ws.send_str(client.texts.popleft())
                    elif client.state is not None:
                        text, client.state = client.state, None
                        await ws.send_str(text)
                    else:
                        packet = client.audio.popleft()
                        client.audio_s -= _packet_seconds(packet)
                        await ws.send_bytes(packet)
            except (ConnectionError, RuntimeError, asyncio.CancelledError):
                return

    def _serve(self) -> float | None:
        """State pushes and late refusals out (on the loop, LoopService); next due time."""
        pushes, refused = self.clients.poll()
        for r in refused:
            client = self._open.get(r.client)  # type: ignore[call-overload]
            if client is not None:
                self._say(client, {"error": r.text})
        for to, snap in pushes:
            client = self._open.get(to)  # type: ignore[call-overload]
            if client is not None:
                self._set_state(client, snap)
        return self.clients.next_due()

    def _on_engine_event(self, event: dict[str, Any]) -> None:
        """Engine listener (any thread): the seam's bookkeeping; messages to every page."""
        if event.get("kind") == "message":
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._broadcast_message,
                                              str(event.get("text", "")))
            return
        self.clients.on_event(event)

    def _broadcast_message(self, text: str) -> None:
        for client in self._open.values():
            self._say(client, {"message": text})

    # ---------------------------------------------------------------- listening
    def _can_listen(self) -> str | None:
        """None when the master output can be streamed, else why not."""
        if self.audio is None or not hasattr(self.audio, "add_tap"):
            return "no audio engine to listen to"
        if getattr(self.audio, "backend", "record") not in ("record", "none", "offline"):
            return f"the {self.audio.backend} output is a sound card's: listen there (the " \
                   "page streams --audio record or none)"
        return None

    def _listen(self, client: _Client, on: bool) -> dict[str, Any]:
        why = self._can_listen()
        if on and why is not None:
            return {"error": f"listen: {why}"}
        client.listening = on
        if not on:
            client.audio.clear()
            client.audio_s = 0.0
        self._update_tap()
        if on:
            return {"listening": {"sample_rate": int(self.audio.sample_rate),
                                  "channels": int(self.audio.n_channels)}}
        return {"listening": False}

    def _update_tap(self) -> None:
        wanted = any(c.listening for c in self._open.values())
        if wanted and not self._tapping:
            self._audio_blocks.clear()
            self.audio.add_tap(self._tap)
            self._tapping = True
            self._audio_task = asyncio.get_running_loop().create_task(self._audio_loop())
        elif not wanted and self._tapping:
            self._stop_tap()

    def _stop_tap(self) -> None:
        if self._tapping:
            with contextlib.suppress(Exception):
                self.audio.remove_tap(self._tap)
            self._tapping = False
        if self._audio_task is not None:
            self._audio_task.cancel()
            self._audio_task = None

    def _tap(self, block: np.ndarray, t_s: float) -> None:
        """The audio thread's part: keep the block (a copy already); nothing else."""
        self._audio_blocks.append((block, t_s))

    async def _audio_loop(self) -> None:
        while True:
            await asyncio.sleep(AUDIO_PACKET_S)
            try:
                self._send_audio()
            except Exception as exc:  # a packing bug: counted, the loop goes on
                faults.record("web: packing the master output", exc)

    def _send_audio(self) -> None:
        blocks: list[tuple[np.ndarray, float]] = []
        while self._audio_blocks:
            blocks.append(self._audio_blocks.popleft())
        if not blocks:
            return
        pcm = np.concatenate([b for b, _ in blocks], axis=0)
        frames, channels = pcm.shape
        pcm16 = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2")
        header = AUDIO_HEADER.pack(AUDIO_MAGIC, int(self.audio.sample_rate), channels, 0,
                                   frames, float(blocks[0][1]), float(self.audio.time_s()))
        packet = header + pcm16.tobytes()
        seconds = frames / float(self.audio.sample_rate)
        for client in self._open.values():
            if not client.listening:
                continue
            client.audio.append(packet)
            client.audio_s += seconds
            while client.audio_s > AUDIO_QUEUE_S and len(client.audio) > 1:
                client.audio_s -= _packet_seconds(client.audio.popleft())
                self.stats["audio_dropped"] += 1
            client.ready.set()
        self.stats["audio_packets"] += 1


def _packet_seconds(packet: bytes) -> float:
    _, rate, _, _, frames, _, _ = AUDIO_HEADER.unpack_from(packet)
    return frames / max(1, rate)


def start_web(view: Any, loop: asyncio.AbstractEventLoop, host: str, port: int, *,
              audio: Any = None, message: Callable[[str], None] = print
              ) -> WebServer | None:
    """The page for the live app, on its loop: says where (the token beyond loopback) or,
    when it cannot listen, why in one line; returns None then (the instrument plays on)."""
    server = WebServer(view, host, port, audio=audio)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    except ConfigError as exc:
        message(f"{exc}; playing on without the page")
        return None
    except Exception as exc:  # aiohttp missing or broken: one line, the instrument plays on
        message(f"web page: cannot start ({type(exc).__name__}: {exc}); playing on without "
                "it (--no-web says nothing)")
        return None
    extra = "" if not server.needs_token else " (beyond loopback: keep the token to yourself)"
    message(f"web page on {server.page_url}{extra}")
    return server
