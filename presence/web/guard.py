"""Connections before their requests: what the caps decide, and refusals
that cost nothing (``serve`` only; an application that embeds presence owns
its listener). ``protocol`` applies them, and the deadlines, to each
connection.

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
import json
import logging
from typing import TYPE_CHECKING, Any

from ..logs import Throttle
from ..settings import Settings
from .addresses import AddressCounts, is_trusted

if TYPE_CHECKING:
    from .protocol import GuardedHandler

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
        self._per_address = AddressCounts()
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
            if self._per_address[address] >= self.per_address:
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
            self._per_address.add(counted)
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
        if counted is not None:
            self._per_address.remove(counted)

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
