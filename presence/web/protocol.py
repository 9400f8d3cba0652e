"""aiohttp's protocol for ``serve``: every connection through the ``guard``,
with a deadline for each request's head and a watch on unread responses.

aiohttp's ``RequestHandler`` is subclassed rather than wrapped: its hooks
(``connection_made``, ``data_received``, ``finish_response``) are where a
connection opens, where a request's head arrives, and where a response is
sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from .guard import TIMED_OUT, Guard


class GuardedHandler(RequestHandler):
    """aiohttp's protocol, with the guard's caps and the request deadline."""

    __slots__ = (
        "_address",
        "_body",
        "_conn",
        "_deadline",
        "_guard",
        "_on_lost",
        "_progress",
        "_refused",
        "_send_watch",
    )

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._address = ""
        self._deadline: asyncio.TimerHandle | None = None
        self._on_lost: list[Callable[[], None]] | None = None
        self._refused = False
        #: The body of the last request whose head arrived.
        self._body: StreamReader | None = None
        #: The transport, also once aiohttp has let go of it (closing).
        self._conn: asyncio.Transport | None = None
        self._send_watch: asyncio.TimerHandle | None = None
        #: What of the response in progress was acknowledged, and since when.
        self._progress = (-1, 0.0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = peer[0] if isinstance(peer, tuple) else ""
        refusal = self._guard.admit(self, self._address)
        if refusal is not None:
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            # What the client sent already is read first: closed with it
            # unread, the socket would be reset, losing the refusal.
            with contextlib.suppress(OSError):
                os.read(transport.get_extra_info("socket").fileno(), 65536)
            transport.write(refusal)
            transport.abort()
            return
        assert isinstance(transport, asyncio.Transport)
        self._conn = transport
        super().connection_made(transport)
        self._start_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return  # nothing was started
        self._guard.release(self)
        self._cancel_deadline()
        if self._send_watch is not None:
            self._send_watch.cancel()
            self._send_watch = None
        callbacks, self._on_lost = self._on_lost, None
        super().connection_lost(exc)
        for callback in callbacks or ():
            callback()

    @property
    def guard(self) -> Guard:
        return self._guard

    def on_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` the moment the connection closes; returns a
        function that cancels that (the request ended first)."""
        if self._on_lost is None:
            self._on_lost = []
        callbacks = self._on_lost
        callbacks.append(callback)

        def cancel() -> None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)

        return cancel

    def evict(self) -> None:
        """Close it now, whatever it has still to send."""
        self.force_close()
        if self._conn is not None:
            self._conn.abort()

    def force_close(self) -> None:
        # aiohttp's closes wait for what is still to send: for ever, with a
        # client that does not read.
        transport = self._conn
        super().force_close()
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()

    def data_received(self, data: bytes) -> None:
        reading_body = self._reading_body()
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:
            self._cancel_deadline()
            self._guard.serving(self)
            self._body = self._messages[-1][1] if self._messages else None
        elif data and self._deadline is None and not reading_body:
            self._start_deadline()  # the next request has begun

    def _reading_body(self) -> bool:
        return self._body is not None and not self._body.is_eof()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # A stream's writes are watched by its subscriber; this watches the
        # rest: a client that stops reading its response would hold the
        # connection, unevictable, for ever. Dropped, the response's writes
        # fail as for any client that left.
        self._progress = (-1, self._loop.time())
        self._watch(request)
        try:
            done = await super().finish_response(request, resp, start_time)
        finally:
            if self._send_watch is not None:
                self._send_watch.cancel()
                self._send_watch = None
        if not self._messages:
            self._guard.waiting(self)
        return done

    def _watch(self, request: web.BaseRequest) -> None:
        """Every half stall timeout: drop the connection once nothing of its
        response was acknowledged for a whole one."""
        sent, since = self._progress
        now = self._loop.time()
        acknowledged = request.writer.output_size - self._unacknowledged()
        if acknowledged > sent:
            self._progress = (acknowledged, now)
        elif now - since >= self._guard.write_timeout:
            self._guard.stalled_response()
            self._send_watch = None
            self.evict()
            return
        self._send_watch = self._loop.call_later(
            self._guard.write_timeout / 2, self._watch, request
        )

    def _unacknowledged(self) -> int:
        """Bytes written and not yet acknowledged by the client: in the
        transport's buffer, and in the kernel's send queue."""
        transport = self._conn
        if transport is None:
            return 0
        left = transport.get_write_buffer_size()
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = transport.get_extra_info("socket").fileno()
            left += struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0]
        return left

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # The client's error, not the server's: counted, no traceback per request.
        self._guard.malformed_request(self._address, exc)
        error = "request line or header too long" if isinstance(exc, LineTooLong) else None
        response = web.json_response({"error": error or "malformed request"}, status=400)
        response.force_close()
        return response

    def _start_deadline(self) -> None:
        self._deadline = self._loop.call_later(self._guard.request_timeout, self._late)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return
        if self._request_in_progress or self._messages:
            self._start_deadline()  # a request behind one being served: its turn comes
            return
        if self._reading_body():
            return  # the body of one: its handler's deadline, or aiohttp's lingering
        self._guard.timed_out_request()
        transport.write(TIMED_OUT)
        self.force_close()  # once the 408 is out: at once, but for a client that does not read
        if transport.get_write_buffer_size():
            transport.abort()


def on_connection_lost(
    request: web.BaseRequest, callback: Callable[[], None]
) -> Callable[[], None]:
    """Call ``callback`` as soon as the request's connection closes, where the
    guard runs it (``serve``; elsewhere the stream's own checks notice);
    returns a function that cancels it."""
    protocol = request.protocol
    if isinstance(protocol, GuardedHandler):
        return protocol.on_lost(callback)
    return _nothing


def _nothing() -> None:
    pass


def count_timeout(request: web.BaseRequest) -> None:
    """A request's body did not arrive in time (counted where the guard runs)."""
    protocol = request.protocol
    if isinstance(protocol, GuardedHandler):
        protocol.guard.timed_out_request()
