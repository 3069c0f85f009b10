"""A TCP proxy on 127.0.0.1 that can cut the link between the bot and its target.

    proxy = TcpProxy("127.0.0.1", sshd_port)
    await proxy.start()            # proxy.port: point the bot here
    proxy.drop()                   # every open connection reset (RST), both ways
    proxy.stall()                  # open connections stop forwarding; no FIN, no RST: silence
    proxy.refuse = True            # new connections are reset at once
    proxy.heal()                   # new connections are forwarded again (stalled ones stay dead)
    await proxy.close()

Data is forwarded as it arrives; a half close (EOF) is passed on as a half close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


@dataclass
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: bool = False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST, not a FIN: SO_LINGER 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``host:port`` until told to drop or stall."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.upstream_port = port
        self.port = 0
        self.refuse = False
        self.links: list[_Link] = []
        self.accepted = 0
        #: Bytes forwarded towards the upstream server and back to the clients.
        self.bytes_up = 0
        self.bytes_down = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        link.flowing.set()
        self.links.append(link)
        await asyncio.gather(self._pipe(reader, up_writer, link, up=True),
                             self._pipe(up_reader, writer, link, up=False), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *,
                    up: bool) -> None:
        while True:
            data = await reader.read(65536)
            await link.flowing.wait()  # a stalled link holds everything, forever
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            if up:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            writer.write(data)
            await writer.drain()

    def drop(self) -> int:
        """Reset every open connection, both sides; returns how many."""
        n = 0
        for link in self.links:
            if not link.stalled:
                _reset(link.client)
                _reset(link.upstream)
                n += 1
        self.links = [link for link in self.links if link.stalled]
        return n

    def stall(self) -> int:
        """Stop forwarding on every open connection, without closing it; returns how many."""
        n = 0
        for link in self.links:
            if not link.stalled:
                link.stalled = True
                link.flowing.clear()
                n += 1
        return n

    def heal(self) -> None:
        """Accept and forward new connections again (a stalled connection stays stalled)."""
        self.refuse = False

    async def close(self) -> None:
        """Stop listening and reset everything still open."""
        if self._server is not None:
            self._server.close()
        for link in self.links:
            _reset(link.client)
            _reset(link.upstream)
        self.links = []
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
