"""Rooms end to end: three ``python -m presence serve`` processes, churn and a crash."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import aiohttp

from .support import EventStream, Redis, RedisServer, ServerProcess, open_events, poll
from .test_e2e import real_redis_args, started

Spawn = Callable[..., ServerProcess]


async def room_statuses(redis: Redis, room: str) -> dict[str, list[str]]:
    """Each client's statuses, in order, in the room's stream (UPDATEs left out)."""
    found: dict[str, list[str]] = {}
    for _, fields in await redis.xrange(f"room.{{{room}}}.presence"):
        status = fields[b"status"].decode()
        if status != "UPDATE":
            found.setdefault(fields[b"client"].decode(), []).append(status)
    return found


def alternate(statuses: list[str]) -> bool:
    """ONLINE, OFFLINE, ONLINE, ...: each transition once."""
    return all(s == ("ONLINE" if i % 2 == 0 else "OFFLINE") for i, s in enumerate(statuses))


async def test_room_transitions_are_exactly_once_across_three_servers_with_churn(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    servers = await asyncio.gather(
        *(started(spawn, *real_redis_args(redis_server, f"s{n}")) for n in range(3))
    )
    rooms = ["red", "blue"]
    clients = [f"c{n}" for n in range(6)]
    rng = random.Random(7)
    open_streams: list[tuple[str, str, EventStream]] = []
    # Churn: tabs open and close on any server, in one room or both, reloads
    # within the leave grace included.
    for _ in range(40):
        if open_streams and rng.random() < 0.45:
            client, room, stream = open_streams.pop(rng.randrange(len(open_streams)))
            stream.close()
        else:
            client = rng.choice(clients)
            room = rng.choice(rooms)
            server = rng.choice(servers)
            stream = await open_events(session, f"{server.url}/clients/{client}/events?room={room}")
            await stream.next()
            open_streams.append((client, room, stream))
        await asyncio.sleep(rng.uniform(0, 0.15))  # churn pacing, not a wait for a state
    held = {(c, r) for c, r, _ in open_streams}

    async def settled() -> bool:
        for room in rooms:
            statuses = await room_statuses(redis, room)
            for client in clients:
                seen = statuses.get(client, [])
                inside = bool(seen) and seen[-1] == "ONLINE"
                if inside != ((client, room) in held):
                    return False
        return True

    await poll(settled, timeout=10, what="every membership settled")
    for _, _, stream in open_streams:
        stream.close()

    async def all_left() -> bool:
        for room in rooms:
            if any(s[-1] != "OFFLINE" for s in (await room_statuses(redis, room)).values()):
                return False
        return True

    await poll(all_left, timeout=10, what="every membership ended")
    for room in rooms:
        for client, statuses in (await room_statuses(redis, room)).items():
            assert alternate(statuses), (room, client, statuses)
        assert await redis.zcard(f"room.{{{room}}}.deadlines") == 0
        assert await redis.hlen(f"room.{{{room}}}.members") == 0


async def test_a_crashed_server_takes_its_clients_out_of_every_room(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    doomed = await started(spawn, *real_redis_args(redis_server, "doomed"))
    other = await started(spawn, *real_redis_args(redis_server, "other"))
    watcher = await open_events(
        session, f"{other.url}/clients/watcher/events?room=a&room=b&watch=alice"
    )
    await watcher.next()
    alice = await open_events(session, f"{doomed.url}/clients/alice/events?room=a&room=b")
    await alice.next()

    async def alice_in_both() -> bool:
        found = [(await room_statuses(redis, r)).get("alice") for r in "ab"]
        return found == [["ONLINE"], ["ONLINE"]]

    await poll(alice_in_both, what="alice in rooms a and b")
    doomed.kill()
    left: set[str | None] = set()
    while len(left) < 3:  # OFFLINE in both rooms, and globally
        event = await watcher.next(timeout=5)
        if event.event == "presence" and event.data["status"] == "OFFLINE":
            assert event.data["client"] == "alice"
            left.add(event.data.get("room"))
    assert left == {"a", "b", None}
    assert (await room_statuses(redis, "a"))["alice"] == ["ONLINE", "OFFLINE"]
    assert await redis.hkeys("room.{a}.members") == [b"watcher"]
    watcher.close()
