"""``presence watch`` and ``presence status``, of everyone or of a room: the Redis
contract, read from a terminal.

Both read only the documented keys, as any other platform would.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from . import last_seen
from .entries import parse_event, parse_room_delivery, stream_entries, text
from .errors import PresenceError, RedisUnavailable
from .positions import stream_position
from .redis_client import BLOCK_MS, REDIS_FAILURES, Redis, open_redis, unparsed_streams
from .redis_cluster import cluster_of
from .settings import Settings
from .shards import Router

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
    members' data) as it comes, after the ``last`` ones. On a cluster, every
    shard's presence stream (or the room's shard's stream), each as it comes.

    Runs until ``stop`` is set (checked after each read: a cancellation could
    be lost inside redis-py while it reads).
    """
    stop = stop or asyncio.Event()
    redis, shards = await _connect(settings)
    streams = unparsed_streams(redis)
    if room is None:
        names = [s.keys.presence for s in shards]
    else:
        names = [_shard(shards, room).keys.room(room).presence]
    show = _print if room is None else _print_room
    try:
        history: list[tuple[str, list[bytes]]] = []
        heads: list[str] = []
        for stream in names:
            found: Any = await streams.xrevrange(stream, count=last) if last else []
            history += [(text(i), f) for i, f in found]
            heads.append(text(found[0][0]) if found else await _head(streams, stream))
        history.sort(key=lambda entry: stream_position(entry[0]))
        for entry_id, fields in history[-last:] if last else ():
            show(out, entry_id, fields)
        await asyncio.gather(
            *(_follow(streams, n, h, out, show, stop) for n, h in zip(names, heads, strict=True))
        )
    finally:
        await redis.aclose()


def _shard(shards: list[Settings], room: str) -> Settings:
    router = Router(shards)
    return router[router.of(room)]


async def _head(streams: Redis, stream: str) -> str:
    head: Any = await streams.xrevrange(stream, count=1)
    return text(head[0][0]) if head else "0-0"


async def _follow(
    streams: Redis,
    stream: str,
    position: str,
    out: TextIO,
    show: Callable[[TextIO, str, list[bytes] | None], None],
    stop: asyncio.Event,
) -> None:
    delay = 0.2
    while not stop.is_set():
        try:
            reply = await streams.xread({stream: position}, count=500, block=BLOCK_MS)
        except REDIS_FAILURES as exc:
            print(f"lost Redis ({exc}); retrying", file=sys.stderr, flush=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            continue
        delay = 0.2
        for entry_id, fields in stream_entries(reply):
            position = text(entry_id)
            show(out, position, fields)


async def status(settings: Settings, out: TextIO = sys.stdout) -> None:
    """Print the online clients as a table, then the count per server."""
    redis, shards = await _connect(settings)
    try:
        found = [await redis.hgetall(s.keys.servers) for s in shards]
    except REDIS_FAILURES as exc:
        raise RedisUnavailable(f"cannot read Redis: {exc}") from None
    finally:
        await redis.aclose()
    rows = sorted((text(c), text(s)) for flat in found for c, s in flat.items())
    width = max([len("CLIENT"), *(len(c) for c, _ in rows)])
    print(f"{'CLIENT':<{width}}  SERVER", file=out)
    for client, server in rows:
        print(f"{client:<{width}}  {server}", file=out)
    per_server = Counter(server for _, server in rows)
    counts = ", ".join(f"{server} {n}" for server, n in sorted(per_server.items()))
    print(f"\n{len(rows)} online" + (f": {counts}" if counts else ""), file=out)


async def room_status(settings: Settings, room: str, out: TextIO = sys.stdout) -> None:
    """Print the members of ``room`` with their data as a table, then the count."""
    redis, shards = await _connect(settings)
    keys = _shard(shards, room).keys.room(room)
    try:
        # One transaction: a member's data is read with its membership.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.members)
            pipe.hgetall(keys.data)
            members, data = await pipe.execute()
    except REDIS_FAILURES as exc:
        raise RedisUnavailable(f"cannot read Redis: {exc}") from None
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


async def client_status(
    settings: Settings, client: str, room: str | None = None, out: TextIO = sys.stdout
) -> None:
    """Print one client (or room member): ONLINE with its server (and data),
    or OFFLINE with when it was last seen."""
    redis, shards = await _connect(settings)
    shard = _shard(shards, client if room is None else room)
    keys = shard.keys
    try:
        if room is None:
            server, data = await redis.hget(keys.servers, client), None
            seen = await last_seen.read(redis, keys.last_seen, client, settings.last_seen_ms)
        else:
            r = keys.room(room)
            server, data = await redis.hget(r.members, client), await redis.hget(r.data, client)
            seen = await last_seen.read(redis, r.last_seen, client, settings.last_seen_ms)
    except REDIS_FAILURES as exc:
        raise RedisUnavailable(f"cannot read Redis: {exc}") from None
    finally:
        await redis.aclose()
    where = "" if room is None else f" in {room}"
    if server is not None:
        line = f"{client}{where}  ONLINE  {text(server)}"
        print(line + ("" if data is None else f"  {text(data)}"), file=out)
    elif seen is None:
        print(f"{client}{where}  OFFLINE  last seen: unknown", file=out)
    else:
        ago = _ago(time.time() - seen / 1000)
        print(f"{client}{where}  OFFLINE  last seen {last_seen.iso(seen)} ({ago})", file=out)


def _ago(seconds: float) -> str:
    """``4 s ago``, ``3 min ago``, ``2 h ago``, ``5 days ago``."""
    seconds = max(0, seconds)
    for unit, size in (("days", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


async def _connect(settings: Settings) -> tuple[Redis, list[Settings]]:
    """A client, and the settings of each shard (one, unless Redis is a cluster)."""
    if settings.in_memory:
        raise PresenceError(
            "pass --redis-url (or PRESENCE_REDIS_URL): the in-process Redis lives inside a server"
        )
    redis = open_redis(settings)
    try:
        await redis.ping()
    except REDIS_FAILURES as exc:
        await redis.aclose()
        raise RedisUnavailable(
            f"cannot reach Redis at {settings.masked_redis_url}: {exc}"
        ) from None
    try:
        cluster = await cluster_of(redis, settings)
    except REDIS_FAILURES as exc:
        await redis.aclose()
        raise RedisUnavailable(
            f"cannot read the cluster at {settings.masked_redis_url}: {exc}"
        ) from None
    if cluster is None:
        return redis, [settings]
    await redis.aclose()
    return cluster, settings.sharded()


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
