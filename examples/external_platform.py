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
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel


async def heartbeat(redis: aioredis.Redis, args: argparse.Namespace) -> None:
    """One heartbeat per user (per room) per interval: online while this runs,
    OFFLINE after the TTL. Data goes with the first; later ones keep it."""
    data = args.data
    while True:
        pipe = redis.pipeline(transaction=False)
        for user in args.user:
            for room in args.room or [None]:
                fields = {"client": user, "server": args.name}
                if room is not None:
                    fields["room"] = room
                    if data is not None:
                        fields["data"] = data
                # Trimmed by age: entries two TTLs old (3 intervals at the
                # default TTL factor) are stale, whoever reads them.
                oldest = f"{int((time.time() - 3 * args.interval) * 1000)}-0"
                pipe.xadd("heartbeat", fields, minid=oldest)  # type: ignore[arg-type]
        await pipe.execute()
        data = None
        await asyncio.sleep(args.interval)


async def ends(redis: aioredis.Redis, rooms: list[str]) -> dict[str, str]:
    """Where each stream to follow ends now, as an id: "$" in every read would
    skip what came between two reads."""
    positions = {}
    for stream in [f"room.{{{room}}}.presence" for room in rooms] or ["presence"]:
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


def connect(url: str) -> aioredis.Redis:
    """A client for ``url``; ``redis+sentinel://host:port[,host:port...]/service[/db]``
    reaches the primary the sentinels name, through redis-py's Sentinel."""
    scheme, _, rest = url.partition("://")
    if not scheme.endswith("+sentinel"):
        return aioredis.from_url(url, decode_responses=True)
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
    return primary


async def main(args: argparse.Namespace) -> None:
    redis = connect(args.redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    positions = await ends(redis, args.room)  # before the first heartbeat: its ONLINE is seen
    tasks = [
        asyncio.create_task(follow(redis, positions)),
        asyncio.create_task(heartbeat(redis, args)),
    ]
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
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
