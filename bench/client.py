"""A minimal HTTP/1.1 client for the load generator: keep-alive, one request at a time.

Raw asyncio streams, because a general client (httpx) costs far more per request than
the servers under test would, and the load must not be what limits a measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["EXCHANGE_ERRORS", "ConnectionPool", "HttpConnection", "ProtocolError"]

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client understands."""


class HttpConnection:
    """One keep-alive connection: write a request, read exactly one response."""

    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        """Connect (asyncio sets TCP_NODELAY on TCP transports)."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def exchange(self, wire: bytes) -> tuple[int, bytes]:
        """Send one complete request; return the response's status and body."""
        self._writer.write(wire)
        head = await self._reader.readuntil(_HEAD_END)
        if not head.startswith(b"HTTP/1.1 "):
            raise ProtocolError("not an HTTP/1.1 response")
        status = int(head[9:12])
        # Tornado sends Content-Length for every finished, uncompressed response.
        start = head.lower().find(_CONTENT_LENGTH)
        if start < 0:
            raise ProtocolError("response without Content-Length")
        end = head.index(b"\r\n", start + 2)
        length = int(head[start + len(_CONTENT_LENGTH) : end])
        body = await self._reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        """Close without waiting."""
        self._writer.close()

    async def aclose(self) -> None:
        """Close and wait until the transport is gone."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


# What a failed exchange raises; the connection is then unusable.
EXCHANGE_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                   ProtocolError, ValueError)  # fmt: skip


class ConnectionPool:
    """Idle connections to one server; opens more on demand, up to `limit`, then queues."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self._host, self._port, self._limit = host, port, limit
        self._idle: list[HttpConnection] = []
        self._waiters: deque[asyncio.Future[HttpConnection | None]] = deque()
        self.opened = 0
        self.peak = 0

    async def acquire(self) -> HttpConnection:
        """An idle connection, a new one, or (at the limit) the next one released."""
        if self._idle:
            return self._idle.pop()
        if self.opened < self._limit:
            self.opened += 1
            self.peak = max(self.peak, self.opened)
            try:
                return await HttpConnection.open(self._host, self._port)
            except BaseException:
                self.opened -= 1
                raise
        waiter: asyncio.Future[HttpConnection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        conn = await waiter
        return conn if conn is not None else await self.acquire()

    def release(self, conn: HttpConnection | None) -> None:
        """Hand back a connection, or None when it broke (a waiter then opens a new one)."""
        if conn is None:
            self.opened -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.aclose() for c in idle))
