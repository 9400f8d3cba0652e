"""A presence server that also holds synthetic memberships, as its SSE connections
would: ``python -m bench.held --clients N [--rooms-per-client K --room-size S]
[serve flags]``.

Holding 20,000 clients in 5 rooms each over SSE would take more file
descriptors than a process may open here; held in-process instead (the
``Service.held_online`` an SSE stream enters once it has its start), they
take the server's own path from there: its heartbeat publisher sends one
heartbeat per membership per interval (the PUBLISH script), and its consumer
applies them, beside whatever its HTTP side serves (bench/rooms.py streams a
few clients and PUTs their data meanwhile).

Client ``h<i>`` is in rooms ``m<(i mod G) + k G>`` for k below K, where G = N / S:
every room has S members, and no two of a client's rooms are the same. With
K = 0 the clients are held globally only. Everything else is ``presence serve``'s:
the flags, the listener and its guard, the collector's tuning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack

from aiohttp import web

from presence import logs
from presence.cli import build_parser
from presence.serve import tune_gc
from presence.settings import Settings
from presence.web import server
from presence.web.app import create_app
from presence.web.requests import PRESENCE


def rooms_of(client: int, clients: int, rooms_per_client: int, room_size: int) -> list[str]:
    """The rooms of client ``h<client>``: see the module's documentation."""
    group = clients // room_size
    return [f"m{client % group + k * group}" for k in range(rooms_per_client)]


def memberships(clients: int, rooms_per_client: int) -> int:
    """Heartbeats per interval: one per room, or one for a client in none."""
    return clients * max(1, rooms_per_client)


def _holder(
    clients: int, rooms_per_client: int, room_size: int
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def hold(app: web.Application) -> AsyncIterator[None]:
        presence = app[PRESENCE]  # started: its context comes first
        with ExitStack() as stack:
            for i in range(clients):
                rooms = rooms_of(i, clients, rooms_per_client, room_size)
                stack.enter_context(presence._service.held_online(f"h{i}", rooms))
            yield
            # Released after the streams closed for shutdown: no leave, as for
            # any client of a server that stops.

    return hold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.held", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--clients", type=int, required=True, metavar="N")
    parser.add_argument("--rooms-per-client", type=int, default=0, metavar="K")
    parser.add_argument("--room-size", type=int, default=50, metavar="S")
    args, rest = parser.parse_known_args(argv)
    if args.rooms_per_client and (
        args.clients % args.room_size or args.rooms_per_client > args.clients // args.room_size
    ):
        parser.error("--clients must be a multiple of --room-size, in enough rooms")
    serve = vars(build_parser().parse_args(["serve", *rest]))
    serve.pop("command")
    settings = Settings.from_env(**serve)
    logs.configure(settings)
    tune_gc()
    app = create_app(settings)
    app.cleanup_ctx.append(_holder(args.clients, args.rooms_per_client, args.room_size))
    server.run(app, settings, on_listening=lambda: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
