"""Connections before their requests: the caps, a deadline for a request's
head, and refusals that cost nothing (``serve`` only; an application that
embeds presence owns its listener).

aiohttp accepts every connection and waits for its request until the
keep-alive timeout, 75 s. One host sending half a request on thousands of
connections would hold every descriptor of the process, and with them
``/healthz``, new streams and, through clients that cannot reconnect, who is
online. So, deliberately unlike aiohttp's defaults:

- a connection's request line and headers must arrive within
  ``request_timeout`` (a keep-alive connection's next request: once its
  first bytes arrive);
- the process holds at most ``cap`` connections. At the cap, the connection
  waiting longest for a request (half-sent, or idle between two) is closed
  to make room; a stream or a request being served never is. With none
  waiting, the new connection is refused;
- one address holds at most ``max_connections_per_address`` (trusted
  proxies excepted: their clients are counted per forwarded address, in
  ``addresses``);
- a refusal is a canned response written once, then the socket is closed;
- a connection stops counting the moment its transport closes.

Malformed requests and failed accepts are counted, and logged at most once
in a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import struct
import termios
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from ..logs import Throttle
from ..settings import Settings
from .addresses import is_trusted

log = logging.getLogger(__name__)

#: Seconds between two log lines about the same kind of refusal.
LOG_EVERY = 10.0
ACCEPT_FAILED = "socket.accept() out of system resource"


def _canned(status: str, error: str, *extra: str) -> bytes:
    body = json.dumps({"error": error}).encode()
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


FULL = _canned(
    "503 Service Unavailable", "this server holds all the connections it may", "Retry-After: 1"
)
TOO_MANY = _canned("429 Too Many Requests", "too many connections from this address")
TIMED_OUT = _canned("408 Request Timeout", "the request did not arrive in time")


class Guard:
    """The process's connections, counted by kind and by address."""

    def __init__(self, settings: Settings, cap: int) -> None:
        #: Connections of every kind this process holds at most.
        self.cap = cap
        self.per_address = settings.max_connections_per_address
        self.request_timeout = settings.request_timeout
        #: Seconds a response other than a stream may take to be sent.
        self.write_timeout = settings.stall_timeout
        self._trusted = settings.networks
        # Each open connection, with the address it counts against (None: uncounted).
        self._open: dict[GuardedHandler, str | None] = {}
        self._per_address: dict[str, int] = {}
        # Connections waiting for a request, oldest first: the ones to close at the cap.
        self._waiting: dict[GuardedHandler, None] = {}
        self.refused_full = 0
        self.refused_address = 0
        self.evicted = 0
        self.timed_out = 0
        self.malformed = 0
        self.accept_errors = 0
        self._logs = {
            kind: Throttle(LOG_EVERY)
            for kind in ("full", "address", "evicted", "timeout", "stalled", "malformed", "accept")
        }

    @property
    def connections(self) -> int:
        return len(self._open)

    def admit(self, handler: GuardedHandler, address: str) -> bytes | None:
        """Count a new connection in; or the refusal to write to it."""
        counted = None
        if self.per_address and not is_trusted(address, self._trusted):
            counted = address
            if self._per_address.get(address, 0) >= self.per_address:
                self.refused_address += 1
                self._log(
                    "address",
                    "refused %d connection(s) from %s: at most %d per address "
                    "(--max-connections-per-address)",
                    address,
                    self.per_address,
                )
                return TOO_MANY
        if len(self._open) >= self.cap:
            if not self._waiting:
                self.refused_full += 1
                self._log(
                    "full", "refused %d connection(s): this process holds all %d it may", self.cap
                )
                return FULL
            victim = next(iter(self._waiting))
            self.release(victim)
            victim.evict()
            self.evicted += 1
            self._log(
                "evicted",
                "closed %d connection(s) waiting for a request, to make room (%d open)",
                self.cap,
            )
        self._open[handler] = counted
        self._waiting[handler] = None
        if counted is not None:
            self._per_address[counted] = self._per_address.get(counted, 0) + 1
        return None

    def _log(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        """Log ``message`` with the count of its kind since its last line."""
        if due := self._logs[kind].count():
            log.log(level, message, due, *args)

    def release(self, handler: GuardedHandler) -> None:
        """Count a connection out (once, however often it is called)."""
        if handler not in self._open:
            return
        counted = self._open.pop(handler)
        self._waiting.pop(handler, None)
        if counted is not None and (left := self._per_address.pop(counted) - 1) > 0:
            self._per_address[counted] = left

    def serving(self, handler: GuardedHandler) -> None:
        """A request arrived whole: the connection is no longer one to close."""
        self._waiting.pop(handler, None)

    def waiting(self, handler: GuardedHandler) -> None:
        """Its response is sent; it waits for the next request."""
        if handler in self._open:
            self._waiting[handler] = None

    def stalled_response(self) -> None:
        self.timed_out += 1
        self._log(
            "stalled",
            "dropped %d connection(s) that did not read their response within %g s",
            self.write_timeout,
        )

    def timed_out_request(self) -> None:
        self.timed_out += 1
        self._log(
            "timeout",
            "closed %d connection(s) whose request did not arrive within %g s (--request-timeout)",
            self.request_timeout,
            level=logging.INFO,
        )

    def malformed_request(self, address: str, exc: BaseException) -> None:
        self.malformed += 1
        # The exception's name only: its message quotes what the client sent.
        self._log(
            "malformed",
            "refused %d malformed request(s) (last from %s: %s)",
            address,
            type(exc).__name__,
        )

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: a failed ``accept()`` (out of
        descriptors) is counted, not logged with a traceback each time."""
        if context.get("message") != ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        self.accept_errors += 1
        self._log(
            "accept",
            "accept() failed %d time(s): %s (%d connections open); new connections "
            "wait in the kernel's queue",
            context.get("exception"),
            len(self._open),
        )


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
        protocol._guard.timed_out_request()
