"""Command line: ``python -m presence serve | watch | status``. Parses arguments, nothing more."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, terminal, workers
from .contract import ID_RULE, ROOM_RULE, is_valid_id
from .doctor import cli as checkup
from .errors import PresenceError
from .serve import serve
from .settings import Settings
from .web import auth

log = logging.getLogger("presence")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="presence", description="Presence server: who is online, live.")
    parser.add_argument("--version", action="version", version=f"presence {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the presence server",
        description="Run the presence server. Every option can also be set as "
        "PRESENCE_<OPTION> in the environment (e.g. PRESENCE_REDIS_URL); flags win.",
    )
    opt = serve.add_argument
    opt("--host", help="interface to listen on (default 127.0.0.1)")
    opt("--port", type=int, help="port to listen on (default 8080)")
    opt(
        "--redis-url",
        help="redis:// (one Redis, or any node of a Redis Cluster), rediss://, unix://, "
        "redis+sentinel:// or memory:// (default: in-process)",
    )
    opt("--server-id", help="id of this server in Redis (default <host name>:<port>)")
    opt("--heartbeat-interval", type=float, metavar="SECONDS", help="default 5")
    opt("--ttl-factor", type=float, help="key TTL = factor x interval (default 1.5)")
    opt("--namespace", help="prefix of every Redis key (default none)")
    opt(
        "--shards",
        type=int,
        metavar="N",
        help="logical shards on a Redis Cluster, the same on every server (default 12)",
    )
    opt(
        "--heartbeat-maxlen",
        type=int,
        metavar="N",
        help="heartbeat stream ceiling; it is trimmed by age, 2 x TTL (default 1000000)",
    )
    opt("--presence-maxlen", type=int, metavar="N", help="presence stream cap (default 100000)")
    opt("--keepalive-interval", type=float, metavar="SECONDS", help="SSE keep-alive (default 15)")
    opt("--queue-size", type=int, metavar="N", help="events a connection may lag (default 16384)")
    opt(
        "--stall-timeout",
        type=float,
        metavar="SECONDS",
        help="drop a stream that fell behind and sent nothing this long, or a connection "
        "that reads nothing of a response (default 10)",
    )
    opt(
        "--leave-grace",
        type=float,
        metavar="SECONDS",
        help="OFFLINE this long after a client's last connection closes; 0: at TTL (default 2)",
    )
    opt(
        "--claim-after",
        type=float,
        metavar="SECONDS",
        help="claim heartbeats pending this long (a stopped server's, or failed); at most "
        "half of TTL - interval (default: a third of it, at most 1)",
    )
    opt(
        "--forget-after",
        type=float,
        metavar="SECONDS",
        help="remove consumers idle this long with nothing pending (default 60)",
    )
    opt(
        "--auth-secret",
        help="HS256 secret verifying client tokens; prefer PRESENCE_AUTH_SECRET (default: off)",
    )
    opt("--auth-public-key", metavar="PEM", help="public key file verifying RS256/ES256 tokens")
    opt("--auth-leeway", type=float, metavar="SECONDS", help="clock skew allowed (default 5)")
    opt(
        "--auth-reads",
        action="store_const",
        const=True,
        help="require a token on /clients, /clients/<id> and /metrics too",
    )
    opt(
        "--max-connections",
        type=int,
        metavar="N",
        help="SSE connections; all connections: an eighth more (default 10000, or what "
        "the open-file limit holds)",
    )
    opt(
        "--max-connections-per-client",
        type=int,
        metavar="N",
        help="SSE connections of one client id (default 16)",
    )
    opt(
        "--max-connections-per-address",
        type=int,
        metavar="N",
        help="connections one client address may hold; 0: no cap (default 0)",
    )
    opt(
        "--trusted-proxies",
        metavar="LIST",
        help="comma-separated proxy addresses or networks whose X-Forwarded-For is "
        "believed (default none)",
    )
    opt(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help="a request's line and headers, then its body, must arrive within it (default 5)",
    )
    opt(
        "--max-rooms-per-connection",
        type=int,
        metavar="N",
        help="rooms (room and occupancy) one stream may ask for (default 100)",
    )
    opt(
        "--max-rooms",
        type=int,
        metavar="N",
        help="distinct rooms (room and occupancy) this server's streams may follow (default 10000)",
    )
    opt("--max-watch", type=int, metavar="N", help="ids one stream may watch (default 1000)")
    opt("--room-maxlen", type=int, metavar="N", help="each room stream's cap (default 10000)")
    opt(
        "--last-seen-retention",
        type=float,
        metavar="SECONDS",
        help="keep each client's last OFFLINE time this long; 0: none (default 2592000, 30 days)",
    )
    opt("--cors-origins", metavar="LIST", help="comma-separated origins allowed (default none)")
    opt("--max-line-size", type=int, metavar="BYTES", help="request line cap (default 8190)")
    opt("--max-field-size", type=int, metavar="BYTES", help="header field cap (default 8190)")
    opt("--connect-retries", type=int, metavar="N", help="attempts to reach Redis (default 5)")
    opt("--webhook-url", metavar="URL", help="POST transitions here, in batches (default: off)")
    opt(
        "--webhook-secret",
        help="HMAC-SHA256 key signing webhook requests; prefer PRESENCE_WEBHOOK_SECRET",
    )
    opt(
        "--webhook-events",
        choices=("global", "rooms", "all"),
        help="which transitions go to the webhook (default all)",
    )
    opt(
        "--workers",
        type=int,
        metavar="N",
        help="server processes on one port, each its own server id <id>.w<k> "
        "(default 1; 0: one per core; needs --redis-url)",
    )
    opt(
        "--worker-ports",
        type=int,
        metavar="BASE",
        help="worker k also listens on BASE+k-1 alone, for its own /healthz and /metrics "
        "(default none)",
    )
    opt("--log-level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)")
    opt("--log-format", choices=("text", "json"), help="text, or json for log shippers")

    watch = commands.add_parser(
        "watch",
        help="follow the presence stream (or a room's), one line per transition",
        description="Follow the presence stream live: time, status, client and server. "
        "With --room, the room's stream: ONLINE, UPDATE and OFFLINE, with the member's data.",
    )
    _redis_options(watch)
    watch.add_argument("--room", help="follow this room's stream instead")
    watch.add_argument(
        "--last", type=int, default=0, metavar="N", help="first show the last N transitions"
    )
    status = commands.add_parser(
        "status",
        help="list the online clients (or a room's members), with counts per server",
        description="The online clients as a table, then how many each server holds. "
        "With --room, the room's members and their data. With a client id, that client "
        "alone (in --room, if given): ONLINE and its server, or OFFLINE and when it was "
        "last seen.",
    )
    _redis_options(status)
    status.add_argument(
        "client", nargs="?", help="show this client alone: its server, or when it was last seen"
    )
    status.add_argument("--room", help="list this room's members instead (with a client: in it)")
    token = commands.add_parser(
        "token",
        help="mint a client token (HS256) for development",
        description="Print a token for CLIENT signed with the auth secret "
        "(--auth-secret or PRESENCE_AUTH_SECRET).",
    )
    token.add_argument("client", help="the client id (the token's sub)")
    token.add_argument("--ttl", type=float, default=3600, metavar="SECONDS", help="default 3600")
    token.add_argument("--auth-secret", help="default: PRESENCE_AUTH_SECRET")
    token.add_argument(
        "--room",
        action="append",
        default=[],
        dest="rooms",
        metavar="ROOM",
        help="a room it may join (a name, or a prefix ending in *); repeatable",
    )
    doctor = commands.add_parser(
        "doctor", help="check a Redis against what presence needs", description=checkup.DESCRIPTION
    )
    _redis_options(doctor)
    checkup.add_arguments(doctor)
    return parser


def _redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        help="redis://, rediss://, unix:// or redis+sentinel:// (or PRESENCE_REDIS_URL)",
    )
    parser.add_argument("--namespace", help="prefix of every Redis key (default none)")
    parser.add_argument(
        "--shards", type=int, metavar="N", help="shards on a Redis Cluster (default 12)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    last = args.pop("last", 0)
    room = args.pop("room", None)
    client = args.pop("client", None) if command == "status" else None
    if command == "token":
        return _token(args["client"], args["ttl"], args["auth_secret"], args["rooms"])
    if command == "doctor":
        return checkup.main(args)
    if room is not None and not is_valid_id(room):
        print(f"presence: error: room {ROOM_RULE}", file=sys.stderr)
        return 2
    if client is not None and not is_valid_id(client):
        print(f"presence: error: client id {ID_RULE}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(**args)
    except PresenceError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 2
    if command == "serve":
        given = args["max_connections"] is not None or "PRESENCE_MAX_CONNECTIONS" in os.environ
        if settings.workers == 1:
            return serve(settings, explicit_max_connections=given)
        try:
            count = workers.worker_count(settings.workers)
            return workers.serve_workers(settings, count, explicit_max_connections=given)
        except PresenceError as exc:
            print(f"presence: error: {exc}", file=sys.stderr)
            return 2
    try:
        if command == "watch":
            asyncio.run(_watch(settings, room, last))
        elif client is not None:
            asyncio.run(terminal.client_status(settings, client, room))
        elif room is not None:
            asyncio.run(terminal.room_status(settings, room))
        else:
            asyncio.run(terminal.status(settings))
    except PresenceError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _token(client: str, ttl: float, secret: str | None, rooms: list[str]) -> int:
    secret = secret or os.environ.get("PRESENCE_AUTH_SECRET", "")
    if not secret:
        print("presence: error: pass --auth-secret or set PRESENCE_AUTH_SECRET", file=sys.stderr)
        return 2
    if not is_valid_id(client):
        print(f"presence: error: client id {ID_RULE}", file=sys.stderr)
        return 2
    if not ttl > 0:
        print("presence: error: --ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    print(auth.mint(secret, client, ttl, rooms))
    return 0


async def _watch(settings: Settings, room: str | None, last: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await terminal.watch(settings, room=room, last=last, stop=stop)
