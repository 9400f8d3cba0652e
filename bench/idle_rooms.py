"""Idle rooms: what following many rooms that say nothing costs Redis.

One in-process ``Presence`` follows N rooms (streams of ``ROOMS_PER_STREAM``
rooms each, as ``?room=`` streams do), none of which has a transition. Measured
over a window: Redis's CPU per second (``INFO cpu``, ``used_cpu_sys`` +
``used_cpu_user``) beside the same process following no room, this process's
CPU per second, the room reader's reads per second, and the delay of an idle
room's first event (an entry added to a random idle room, until it is in its
stream's queue): the price of reading idle rooms less often.

``python -m bench.idle_rooms [--rooms N] [--seconds S] [--probes K]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from contextlib import ExitStack

import redis

from presence import Presence, Settings
from presence.updates import room_reader
from presence.updates.scoped import Scope

from .procs import redis_server

ROOMS_PER_STREAM = 100


def redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def measure(presence: Presence, r: redis.Redis, seconds: float) -> tuple[float, float, float]:
    """Redis CPU/s, this process's CPU/s and room reads/s over ``seconds``."""
    reads = getattr(presence._service.room_reader, "reads", 0)
    cpu, own, start = redis_cpu(r), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    read = getattr(presence._service.room_reader, "reads", 0) - reads
    return (
        (redis_cpu(r) - cpu) / elapsed,
        (time.process_time() - own) / elapsed,
        read / elapsed,
    )


async def first_event(
    presence: Presence, r: redis.Redis, rooms: list[str], probes: int
) -> list[float]:
    """Seconds from an entry in an idle room to its delivery, for ``probes`` rooms."""
    found: list[float] = []
    for room in random.Random(1).sample(rooms, probes):
        (subscriber,) = presence._service.scopes.rooms[room]
        fields = {"room": room, "client": "probe", "status": "ONLINE", "server": "bench"}
        start = time.monotonic()
        r.xadd(presence.settings.keys.room(room).presence, fields)  # type: ignore[arg-type]
        async with asyncio.timeout(30):
            await subscriber.items()
        found.append(time.monotonic() - start)
    return found


async def run(url: str, rooms: int, seconds: float, probes: int) -> None:
    r = redis.Redis.from_url(url)
    settings = Settings(redis_url=url, server_id="bench", log_level="WARNING")
    async with Presence(settings) as presence:
        await asyncio.sleep(1)
        base_redis, base_own, _ = await measure(presence, r, seconds)
        names = [f"idle-{n}" for n in range(rooms)]
        with ExitStack() as stack:
            for start in range(0, rooms, ROOMS_PER_STREAM):
                chunk = tuple(names[start : start + ROOMS_PER_STREAM])
                stack.enter_context(presence._service.scoped(f"c{start}", Scope(rooms=chunk)))
                for room in chunk:
                    presence._service.room_reader.join(room)
                    presence._service.room_reader.start_at(room, "0-0", read=False)
            # Every room read once, and gone idle (rooms just started are warm).
            await asyncio.sleep(2 + getattr(room_reader, "WARM_SECONDS", 0))
            busy_redis, busy_own, reads = await measure(presence, r, seconds)
            delays = await first_event(presence, r, names, probes)
    r.close()
    print(f"{rooms} idle rooms followed, {seconds:g} s windows")
    print(f"redis cpu/s: {busy_redis:.3f} (no room: {base_redis:.3f})")
    print(f"process cpu/s: {busy_own:.3f} (no room: {base_own:.3f})")
    print(f"room reads/s: {reads:.1f}")
    print(
        f"idle room's first event: median {statistics.median(delays) * 1000:.0f} ms, "
        f"max {max(delays) * 1000:.0f} ms ({probes} rooms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_rooms")
    parser.add_argument("--rooms", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    with redis_server() as (url, _, _):
        asyncio.run(run(url, args.rooms, args.seconds, args.probes))


if __name__ == "__main__":
    main()
