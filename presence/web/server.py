"""``serve``'s HTTP server: aiohttp's runner, with every connection through
the guard (``guard``).

It opens its own listening sockets so that the kernel's queue (the listen
backlog) can stay long for connect storms while asyncio accepts only
``ACCEPT_BATCH`` connections per loop iteration: each accepted connection
holds a descriptor before the caps see it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from aiohttp import web

from ..logs import PathOnlyAccessLogger
from ..settings import Settings
from .guard import Guard
from .metrics import GuardCollector
from .open_files import ACCEPT_BATCH, connection_cap
from .protocol import GuardedHandler
from .requests import METRICS

ACCESS_LOG = logging.getLogger("presence")

#: Connections the kernel queues before the server accepts them. A connect
#: storm arrives faster than one event loop accepts: with aiohttp's 128, the
#: kernel drops SYNs and clients wait seconds to retry. The kernel caps it at
#: net.core.somaxconn.
LISTEN_BACKLOG = 4096
#: Seconds an idle keep-alive connection is kept (aiohttp's run_app default).
KEEPALIVE_TIMEOUT = 75.0
#: Seconds a response may take to read the rest of a body it ignored.
LINGERING_TIME = 1.0
#: Seconds open streams and requests get to finish at shutdown.
SHUTDOWN_TIMEOUT = 5.0


def run(
    app: web.Application,
    settings: Settings,
    *,
    on_listening: Callable[[], None],
    reuse_port: bool = False,
    own_port: int = 0,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM. Raises ``OSError`` when it cannot
    listen. With ``reuse_port``, other processes listen on the same port and
    the kernel spreads the connections over them; ``own_port``, if not 0, is
    a port of this process alone, where it can be told apart from them."""
    guard = Guard(settings, connection_cap(settings.max_connections))
    app[METRICS].register(GuardCollector(guard))
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(guard.loop_exception)
    main = loop.create_task(_serve(app, settings, guard, on_listening, reuse_port, own_port))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)


async def _serve(
    app: web.Application,
    settings: Settings,
    guard: Guard,
    on_listening: Callable[[], None],
    reuse_port: bool,
    own_port: int,
) -> None:
    # What aiohttp's runner would pass each connection's protocol.
    handler_args: dict[str, Any] = {
        "access_log_class": PathOnlyAccessLogger,
        "access_log": ACCESS_LOG if settings.log_level == "DEBUG" else None,
        "max_line_size": settings.max_line_size,
        "max_field_size": settings.max_field_size,
        "lingering_time": LINGERING_TIME,
        "keepalive_timeout": KEEPALIVE_TIMEOUT,
    }
    # A worker stops on its supervisor's SIGTERM, once: SIGINT (a terminal's
    # Ctrl-C reaches the whole group) and a second SIGTERM (systemd's to the
    # group) must not cut its shutdown short.
    runner = web.AppRunner(
        app, handle_signals=not reuse_port, shutdown_timeout=SHUTDOWN_TIMEOUT, **handler_args
    )
    stopped = _stop_once_on_sigterm() if reuse_port else asyncio.Event()
    await runner.setup()
    try:
        sockets = listen(settings.host, settings.port, reuse_port=reuse_port)
        if own_port:
            try:
                sockets += listen(settings.host, own_port)
            except OSError as exc:
                exc.port = own_port  # type: ignore[attr-defined]  # named in the error
                raise
        for sock in sockets:
            await GuardedSite(runner, sock, guard, handler_args).start()
        on_listening()
        await stopped.wait()
    finally:
        await runner.cleanup()


class GuardedSite(web.SockSite):
    """A listening socket whose connections go through the guard."""

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        guard: Guard,
        handler_args: dict[str, Any],
    ) -> None:
        super().__init__(runner, sock, backlog=ACCEPT_BATCH)
        self._guard = guard
        self._handler_args = handler_args

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def protocol() -> GuardedHandler:
            return GuardedHandler(server, self._guard, loop=loop, **self._handler_args)

        # asyncio listens with the accept batch as backlog: the kernel's queue
        # is set back to its length afterwards.
        self._server = await loop.create_server(protocol, sock=self._sock, backlog=ACCEPT_BATCH)
        self._sock.listen(LISTEN_BACKLOG)


def listen(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bound listening sockets for every address ``host`` resolves to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # one port for all of them
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _stop_once_on_sigterm() -> asyncio.Event:
    """Set on the first SIGTERM; the serving ends, its shutdown as usual."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def stop() -> None:
        # Ignored from now on, outside the loop's handlers: closing the loop
        # would restore the default, and a SIGTERM in the process's last
        # moments would kill it.
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped.set()

    loop.add_signal_handler(signal.SIGTERM, stop)
    return stopped


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
