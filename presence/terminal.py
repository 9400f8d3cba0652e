"""``presence watch`` and ``presence status``, of everyone or of a room: the Redis
contract, read from a terminal.

Both read only the documented keys, as any other platform would.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import datetime
from typing import Any, TextIO

from redis.exceptions import RedisError

from .entries import parse_event, parse_room_delivery, stream_entries, text
from .errors import PresenceError, RedisUnavailable
from .redis_client import BLOCK_MS, Redis, open_redis, unparsed_streams
from .settings import Settings

RETRY_MAX = 5.0


async def watch(
    settings: Settings,
    out: TextIO = sys.stdout,
    *,
    room: str | None = None,
    last: int = 0,
    stop: asyncio.Event | None = None,
) -> None:
    """Print each transition of the presence stream (or of ``room``'s, with the
    members' data) as it comes, after the ``last`` ones.

    Runs until ``stop`` is set (checked after each read: a cancellation could
    be lost inside redis-py while it reads).
    """
    stop = stop or asyncio.Event()
    redis = await _connect(settings)
    streams = unparsed_streams(redis)
    stream = settings.keys.presence if room is None else settings.keys.room(room).presence
    show = _print if room is None else _print_room
    try:
        history: Any = await streams.xrevrange(stream, count=last) if last else []
        for entry_id, fields in reversed(history):
            show(out, text(entry_id), fields)
        head: Any = await streams.xrevrange(stream, count=1)
        position = text(head[0][0]) if head else "0-0"
        delay = 0.2
        while not stop.is_set():
            try:
                reply = await streams.xread({stream: position}, count=500, block=BLOCK_MS)
            except RedisError as exc:
                print(f"lost Redis ({exc}); retrying", file=sys.stderr, flush=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = 0.2
            for entry_id, fields in stream_entries(reply):
                position = text(entry_id)
                show(out, position, fields)
    finally:
        await redis.aclose()


async def status(settings: Settings, out: TextIO = sys.stdout) -> None:
    """Print the online clients as a table, then the count per server."""
    redis = await _connect(settings)
    try:
        flat = await redis.hgetall(settings.keys.servers)
    finally:
        await redis.aclose()
    rows = sorted((text(c), text(s)) for c, s in flat.items())
    width = max([len("CLIENT"), *(len(c) for c, _ in rows)])
    print(f"{'CLIENT':<{width}}  SERVER", file=out)
    for client, server in rows:
        print(f"{client:<{width}}  {server}", file=out)
    per_server = Counter(server for _, server in rows)
    counts = ", ".join(f"{server} {n}" for server, n in sorted(per_server.items()))
    print(f"\n{len(rows)} online" + (f": {counts}" if counts else ""), file=out)


async def room_status(settings: Settings, room: str, out: TextIO = sys.stdout) -> None:
    """Print the members of ``room`` with their data as a table, then the count."""
    keys = settings.keys.room(room)
    redis = await _connect(settings)
    try:
        # One transaction: a member's data is read with its membership.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.members)
            pipe.hgetall(keys.data)
            members, data = await pipe.execute()
    finally:
        await redis.aclose()
    found = {text(c): text(d) for c, d in data.items()}
    rows = sorted((text(c), text(s), found.get(text(c), "")) for c, s in members.items())
    width = max([len("CLIENT"), *(len(c) for c, _, _ in rows)])
    servers = max([len("SERVER"), *(len(s) for _, s, _ in rows)])
    print(f"{'CLIENT':<{width}}  {'SERVER':<{servers}}  DATA", file=out)
    for client, server, value in rows:
        print(f"{client:<{width}}  {server:<{servers}}  {value}".rstrip(), file=out)
    per_server = Counter(server for _, server, _ in rows)
    counts = ", ".join(f"{server} {n}" for server, n in sorted(per_server.items()))
    print(f"\n{len(rows)} in {room}" + (f": {counts}" if counts else ""), file=out)


async def _connect(settings: Settings) -> Redis:
    if settings.in_memory:
        raise PresenceError(
            "pass --redis-url (or PRESENCE_REDIS_URL): the in-process Redis lives inside a server"
        )
    redis = open_redis(settings)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        raise RedisUnavailable(
            f"cannot reach Redis at {settings.masked_redis_url}: {exc}"
        ) from None
    return redis


def _print(out: TextIO, entry_id: str, fields: list[bytes] | None) -> None:
    event = parse_event(entry_id, fields)
    if event is None:
        return
    line = f"{_when(entry_id)}  {event.status:<7}  {event.client}  ({event.server})"
    print(line, file=out, flush=True)


def _print_room(out: TextIO, entry_id: str, fields: list[bytes] | None) -> None:
    delivery = parse_room_delivery(entry_id, fields)
    if delivery is None:
        return
    line = f"{_when(entry_id)}  {delivery.status:<7}  {delivery.client}  ({delivery.server})"
    if delivery.data is not None:
        line += f"  {delivery.data}"
    print(line, file=out, flush=True)


def _when(entry_id: str) -> str:
    """The local time an entry was added, from its id's ms part."""
    ms = int(entry_id.split("-")[0])
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
