"""``presence serve`` in one process: logging, the collector's tuning, the
descriptor budget, then the HTTP server until SIGTERM or SIGINT."""

from __future__ import annotations

import gc
import logging
import sys

from . import logs
from .errors import PresenceError
from .settings import Settings
from .web import open_files, server
from .web.app import create_app

log = logging.getLogger("presence")

#: Allocations between young collections (CPython's default is 700).
GC_THRESHOLD = 20_000
#: Young collections between two middle ones (CPython's default is 10).
GC_MIDDLE = 100


def tune_gc() -> None:
    """Collect cycles less often: a full collection walks every object, and with
    10,000 connections that pauses the event loop for hundreds of
    milliseconds, heartbeats included. What is loaded at start is frozen out
    of collections altogether. (Only for ``serve``: an application embedding
    presence keeps its own policy.)"""
    gc.collect()
    gc.freeze()
    _, _, old = gc.get_threshold()
    # Middle collections ten times rarer too: in a storm, every one of them
    # moves the connections' objects on to the old generation, whose full
    # collections then come sooner.
    gc.set_threshold(GC_THRESHOLD, GC_MIDDLE, old)


def serve(
    settings: Settings,
    *,
    explicit_max_connections: bool = True,
    worker: bool = False,
    own_port: int = 0,
) -> int:
    """Run one server; its exit status. A ``worker`` shares its port with the
    other workers (``SO_REUSEPORT``), and listens on ``own_port`` alone."""
    logs.configure(settings, worker=worker)
    tune_gc()
    try:
        settings = open_files.fit(settings, explicit=explicit_max_connections)
    except PresenceError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 2
    own_port = own_port or (0 if worker else settings.worker_ports)
    log.info("starting with %r", settings)
    if settings.in_memory:
        log.info(
            "using an in-process Redis (memory://): state lives in this process only; "
            "pass --redis-url to share it with other servers"
        )
    try:
        server.run(
            create_app(settings),
            settings,
            reuse_port=worker,
            own_port=own_port,
            on_listening=lambda: _listening(settings, own_port),
        )
    except PresenceError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the shared port, or its own
        where = getattr(exc, "port", settings.port)
        print(
            f"presence: error: cannot listen on {settings.host}:{where}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def _listening(settings: Settings, own_port: int) -> None:
    log.info("listening on http://%s:%d", settings.host, settings.port)
    if own_port:
        log.info("and on http://%s:%d, this worker alone", settings.host, own_port)
