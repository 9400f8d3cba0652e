"""A realtime platform that uses presence only through Redis, as one in any language would.

    python examples/external_platform.py --redis-url redis://localhost:6379/0 --user carol

It keeps its own users online by adding heartbeats to the ``heartbeat`` stream
(fields ``client`` and ``server``), and prints every transition it reads from
the ``presence`` stream (fields ``client``, ``status`` and ``server``). It does
not import presence: plain redis-py and the documented contract. A presence
server must run against the same Redis to apply the heartbeats.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis


async def heartbeat(redis: aioredis.Redis, users: list[str], name: str, interval: float) -> None:
    """One heartbeat per user per interval: online while this runs, OFFLINE after the TTL."""
    while True:
        pipe = redis.pipeline(transaction=False)
        for user in users:
            pipe.xadd("heartbeat", {"client": user, "server": name}, maxlen=100_000)
        await pipe.execute()
        await asyncio.sleep(interval)


async def follow(redis: aioredis.Redis) -> None:
    """Print each transition from now on; XREAD BLOCK stays below redis-py's 5 s timeout."""
    position = "$"
    while True:
        reply: Any = await redis.xread({"presence": position}, block=1000)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                position = entry_id
                print(
                    f"{fields['client']} is {fields['status']} (on {fields['server']})", flush=True
                )


async def main(args: argparse.Namespace) -> None:
    redis = aioredis.from_url(args.redis_url, decode_responses=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks = [
        asyncio.create_task(heartbeat(redis, args.user, args.name, args.interval)),
        asyncio.create_task(follow(redis)),
    ]
    print(f"{args.name}: keeping {', '.join(args.user)} online; following presence", flush=True)
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
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
