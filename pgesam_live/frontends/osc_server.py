"""The OSC server: moves datagrams between a UDP socket on the app's asyncio loop and
OscCore (frontends/osc.py), which does everything else."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import Counter
from typing import Any

from pgesam_live.frontends.osc import Addr, OscCore, OscReply
from pgesam_live.frontends.osc_wire import encode_message
from pgesam_live.frontends.seam import LoopService
from pgesam_live.vocab.views import EngineView

RECV_BUFFER_BYTES = 4 * 1024 * 1024


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: OscServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server._received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP "port unreachable" from a controller that went away: not our problem
        self.server.core.stats["send_errors"] += 1


def _bind_error(host: str, port: int, exc: OSError) -> str:
    busy = exc.errno == errno.EADDRINUSE
    fix = ("another program has it (another instrument?): choose another with --osc-port"
           if busy else "give --osc-host an address of this machine (127.0.0.1, 0.0.0.0 for "
           "every interface)")
    return f"OSC: cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}"


def osc_port_problem(host: str, port: int) -> str | None:
    """Why the OSC server could not listen on host:port now (None: it can), by binding and
    closing a socket: checked before a live start writes anything."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        return _bind_error(host, port, exc)
    finally:
        sock.close()
    return None


class OscServer:
    """`OscServer(engine, host, port)`; `await start()` on the app's loop, `close()` at exit.
    Port 0 binds an ephemeral port (see `.port` after start)."""

    def __init__(self, engine: EngineView, host: str = "127.0.0.1", port: int = 9000,
                 **core_options: Any) -> None:
        self.host = host
        self.port = port
        self.core = OscCore(engine, **core_options)
        self._service = LoopService(self._serve, clock=lambda: self.core.clock())
        self.core.wake = self._service.wake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        from pgesam_live.errors import ConfigError

        self._loop = asyncio.get_running_loop()
        self._service.bind(self._loop)
        try:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(self.host, self.port))
        except OSError as exc:
            raise ConfigError(_bind_error(self.host, self.port, exc)) from None
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # a burst arriving while the loop is busy waits in the kernel instead of being
            # dropped; the kernel caps the request at net.core.rmem_max
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
            except OSError:
                pass

    @property
    def stats(self) -> Counter[str]:
        return self.core.stats

    def _received(self, data: bytes, addr: Addr) -> None:
        self._send(self.core.handle_datagram(data, addr))
        self._service.run()

    def _send(self, replies: list[OscReply]) -> None:
        if self._transport is None:
            return
        for addr, address, args in replies:
            try:
                self._transport.sendto(encode_message(address, args), addr)
            except Exception:  # an unencodable value or a vanished peer: count, carry on
                self.core.stats["send_errors"] += 1

    def _serve(self) -> float | None:
        """Due replies and pushes out; the clock time of the next (LoopService)."""
        if self._transport is None:
            return None
        self._send(self.core.poll())
        return self.core.next_due()

    def close(self) -> None:
        self._service.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None


# The table's words that OSC reaches only through /pgesam/cmd (no address of their own).
