"""A realtime platform that uses presence only through Redis, as one in any language would.

    python examples/external_platform.py --redis-url redis://localhost:6379/0 --user carol
    python examples/external_platform.py --redis-url ... --user carol --room lobby \
        --data '{"status": "here"}'

It keeps its own users online by adding heartbeats to the ``heartbeat`` stream
(fields ``client`` and ``server``), and prints every transition it reads from
the ``presence`` stream (fields ``client``, ``status`` and ``server``). With
``--room``, its users are members of those rooms instead (one heartbeat per
room, with the ``room`` field and, once, ``data``), and it prints the
transitions of each room's stream, ``room.{<room>}.presence``. It does not
import presence: plain redis-py and the documented contract. A presence
server must run against the same Redis to apply the heartbeats. A
``redis+sentinel://`` URL reaches the primary through its sentinels.

On a Redis Cluster (found by itself, from any node's URL) every key carries
its shard's hash tag: a user's own heartbeat goes to its shard's
``{<tag>}.heartbeat``, and a room heartbeat to the room's shard, which
counts it for the room alone. It follows every shard's presence stream (or
each room's, on the room's shard), one read per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot


class Layout:
    """Where the contract's keys are: as named, or on a cluster, under a
    shard's hash tag (``{<tag>}.``)."""

    def __init__(self, shards: int | None) -> None:
        self.tags = [_tag(i, shards) for i in range(shards)] if shards else []

    def prefix(self, id: str) -> str:
        """The prefix of the keys of a client's or a room's shard."""
        if not self.tags:
            return ""
        return f"{{{self.tags[zlib.crc32(id.encode()) % len(self.tags)]}}}."

    def presence_streams(self) -> list[str]:
        return [f"{{{t}}}.presence" for t in self.tags] or ["presence"]


def _tag(index: int, shards: int) -> str:
    """Shard ``index``'s tag: the first ``s<index>.<k>`` whose slot is in the
    middle half of the index-th of ``shards`` equal parts of the 16,384 slots."""
    part = 16384 / shards
    low, high = index * part + part / 4, index * part + 3 * part / 4
    k = 0
    while not low <= key_slot(f"s{index}.{k}".encode()) < high:
        k += 1
    return f"s{index}.{k}"


async def heartbeat(redis: aioredis.Redis, layout: Layout, args: argparse.Namespace) -> None:
    """One heartbeat per user (per room) per interval: online while this runs,
    OFFLINE after the TTL. Data goes with the first; later ones keep it."""
    data = args.data
    while True:
        pipe = redis.pipeline(transaction=False)
        # Trimmed by age: entries two TTLs old (3 intervals at the default
        # TTL factor) are stale, whoever reads them.
        oldest = f"{int((time.time() - 3 * args.interval) * 1000)}-0"
        for user in args.user:
            fields = {"client": user, "server": args.name}
            # On one Redis a room heartbeat keeps its user online too; on a
            # cluster the user's own shard needs one of its own.
            if layout.tags or not args.room:
                stream = f"{layout.prefix(user)}heartbeat"
                pipe.xadd(stream, fields, minid=oldest)  # type: ignore[arg-type]
            for room in args.room:
                in_room = {**fields, "room": room}
                if data is not None:
                    in_room["data"] = data
                stream = f"{layout.prefix(room)}heartbeat"
                pipe.xadd(stream, in_room, minid=oldest)  # type: ignore[arg-type]
        await pipe.execute()
        data = None
        await asyncio.sleep(args.interval)


async def ends(redis: aioredis.Redis, layout: Layout, rooms: list[str]) -> dict[str, str]:
    """Where each stream to follow ends now, as an id: "$" in every read would
    skip what came between two reads."""
    positions = {}
    streams = [f"{layout.prefix(room)}room.{{{room}}}.presence" for room in rooms]
    for stream in streams or layout.presence_streams():
        last: Any = await redis.xrevrange(stream, count=1)
        positions[stream] = last[0][0] if last else "0-0"
    return positions


async def follow(redis: aioredis.Redis, positions: dict[str, str]) -> None:
    """Print each transition after ``positions``; XREAD BLOCK stays below
    redis-py's 5 s timeout."""
    while True:
        reply: Any = await redis.xread(positions, block=1000)  # type: ignore[arg-type]
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                positions[stream] = entry_id
                where = f" in {fields['room']}" if "room" in fields else ""
                extra = f" {fields['data']}" if "data" in fields else ""
                print(
                    f"{fields['client']} is {fields['status']}{where} (on {fields['server']})"
                    + extra,
                    flush=True,
                )


async def connect(url: str, shards: int) -> tuple[aioredis.Redis, Layout]:
    """A client for ``url``, and where the keys are. A cluster node's URL gives
    a cluster client; ``redis+sentinel://host:port[,host:port...]/service[/db]``
    reaches the primary the sentinels name, through redis-py's Sentinel."""
    scheme, _, rest = url.partition("://")
    if not scheme.endswith("+sentinel"):
        redis: aioredis.Redis = aioredis.from_url(url, decode_responses=True)
        if not int((await redis.info("cluster")).get("cluster_enabled", 0)):
            return redis, Layout(None)
        await redis.aclose()
        cluster: Any = RedisCluster.from_url(url, decode_responses=True)
        return cluster, Layout(shards)
    parts = urlsplit(f"x://{rest}")
    hosts = [h.rpartition(":") for h in parts.netloc.rpartition("@")[2].split(",")]
    service, _, db = parts.path.strip("/").partition("/")
    sentinel = Sentinel([(host, int(port)) for host, _, port in hosts])  # type: ignore[no-untyped-call]
    primary: aioredis.Redis = sentinel.master_for(
        service,
        db=int(db or 0),
        username=parts.username,
        password=parts.password,
        ssl=scheme.startswith("rediss"),
        decode_responses=True,
    )
    return primary, Layout(None)


async def main(args: argparse.Namespace) -> None:
    redis, layout = await connect(args.redis_url, args.shards)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # Before the first heartbeat: its ONLINE is seen.
    positions = await ends(redis, layout, args.room)
    # On a cluster one read per stream: a read of several spans slots.
    reads = [{s: p} for s, p in positions.items()] if layout.tags else [positions]
    tasks = [asyncio.create_task(follow(redis, read)) for read in reads]
    tasks.append(asyncio.create_task(heartbeat(redis, layout, args)))
    followed = ", ".join(args.room) if args.room else "presence"
    print(f"{args.name}: keeping {', '.join(args.user)} online; following {followed}", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await redis.aclose()


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--user", action="append", required=True, help="repeat for several")
    parser.add_argument("--name", default="platform-x", help="the server id it heartbeats as")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between heartbeats")
    parser.add_argument("--room", action="append", default=[], help="a room; repeat for several")
    parser.add_argument("--data", help="the users' data in their rooms, a JSON object")
    parser.add_argument(
        "--shards", type=int, default=12, help="the servers' --shards, on a cluster (default 12)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
