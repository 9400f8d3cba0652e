"""The room reader against a real redis-server: bounded reads that yield, the
server's cap on rooms followed, idle rooms read a window at a time, and
resets that reach only the streams whose part was lost.

Each test here failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from presence import PRESENCE, Presence, Settings, create_app
from presence.cli import build_parser
from presence.updates.scoped import Scope, ScopedSubscriber

from .support import (
    Redis,
    Serve,
    StartPresence,
    metric,
    open_events,
    poll,
    redis_ms,
    redis_past,
    truthy,
)


def _url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


def _base(server: TestServer) -> str:
    return _url(server, "").rstrip("/")


def _entry(room: str, client: str) -> dict[str, str]:
    """A room transition as another server's script writes it."""
    return {"room": room, "client": client, "status": "ONLINE", "server": "elsewhere"}


@contextmanager
def _following(
    presence: Presence, rooms: list[str], per_room: int = 1, per_stream: int = 1
) -> Iterator[list[ScopedSubscriber]]:
    """Streams here in ``rooms`` (``per_room`` in each, ``per_stream`` rooms
    each), started at each room's beginning, as a stream's start does."""
    with ExitStack() as stack:
        subscribers = [
            stack.enter_context(
                presence._service.scoped(
                    f"s{k}-{start}", Scope(rooms=tuple(rooms[start : start + per_stream]))
                )
            )
            for start in range(0, len(rooms), per_stream)
            for k in range(per_room)
        ]
        for room in rooms:
            read = presence._service.room_reader.join(room)
            presence._service.room_reader.start_at(room, "0-0", read=read)
        yield subscribers


async def test_a_burst_across_rooms_is_routed_a_bounded_amount_at_a_time_in_order(
    settings: Settings, start_presence: StartPresence, redis: Redis
) -> None:
    """10,000 entries in 20 rooms of 5 streams: 50,000 pushes, which one read
    took and routed in one pass. Now no read may return more than 5,000
    entries (its COUNT times its rooms), a task beside it sees at most about a
    thousand routed between two of its turns, and every stream gets its
    room's entries, all of them, in order."""
    presence = await start_presence(settings)
    rooms = [f"r{n}" for n in range(20)]
    pipe = redis.pipeline(transaction=False)
    for room in rooms:
        for n in range(500):
            pipe.xadd(f"room.{{{room}}}.presence", _entry(room, f"m{n}"))
    await pipe.execute()
    expected = {
        room: [i.decode() for i, _ in await redis.xrange(f"room.{{{room}}}.presence")]
        for room in rooms
    }
    largest = turns = 0
    subscribers: list[ScopedSubscriber] = []

    def queued() -> int:
        return sum(len(s.queue) for s in subscribers)

    async def beside() -> None:
        nonlocal largest, turns
        before = 0
        while True:
            await asyncio.sleep(0)
            now = queued()
            turns += now != before
            largest = max(largest, now - before)
            before = now

    reads: list[list[str]] = []
    monitoring = asyncio.Event()

    async def watch_reads() -> None:
        async with redis.monitor() as monitor:
            monitoring.set()
            while True:
                command = (await monitor.next_command())["command"]
                if command.startswith("XREAD ") and "room.{" in command:
                    reads.append(command.split(" "))

    task = asyncio.create_task(beside())
    watcher = asyncio.create_task(watch_reads())
    await asyncio.wait_for(monitoring.wait(), 5)  # both run before the rooms are followed
    with _following(presence, rooms, per_room=5) as following:
        subscribers.extend(following)
        try:
            await poll(lambda: truthy(queued() == 50_000), timeout=30, what="every entry routed")
        finally:
            task.cancel()
            watcher.cancel()
            await asyncio.gather(task, watcher, return_exceptions=True)
        assert reads
        for words in reads:
            share, named = int(words[2]), sum(w.startswith("room.{") for w in words)
            assert share * named <= 5000, f"COUNT {share} of {named} rooms"
        assert largest <= 1100, f"{largest} pushes routed between two turns of another task"
        assert turns >= 40
        for subscriber in subscribers:
            (room,) = subscriber.scope.rooms
            assert [item.id for item in subscriber.queue] == expected[room]  # type: ignore[union-attr]


def test_the_rooms_cap_is_a_setting_a_flag_and_a_variable() -> None:
    assert Settings(server_id="s").max_rooms == 10_000
    assert Settings.from_env({"PRESENCE_MAX_ROOMS": "7"}, server_id="s").max_rooms == 7
    args = build_parser().parse_args(["serve", "--max-rooms", "5"])
    assert args.max_rooms == 5
    with pytest.raises(ValueError, match="max rooms must be at least 1"):
        Settings(server_id="s", max_rooms=0)


async def test_a_stream_past_the_servers_rooms_gets_a_503_and_the_rooms_followed_are_counted(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(max_rooms=3)))
    base = _base(server)
    first = await open_events(session, _url(server, "/clients/alice/events?room=a&room=b"))
    await first.next()
    assert await metric(session, base, "presence_rooms_followed") == 2
    async with session.get(_url(server, "/clients/bob/events?room=c&occupancy=d")) as response:
        assert response.status == 503
        assert await response.json() == {
            "error": "this server follows at most 3 rooms: try another server"
        }
    # Rooms followed already cost nothing more; occupancy counts as following.
    second = await open_events(
        session, _url(server, "/clients/bob/events?room=a&occupancy=b&occupancy=c")
    )
    await second.next()
    assert await metric(session, base, "presence_rooms_followed") == 3
    first.close()
    second.close()

    async def none_followed() -> bool:
        return await metric(session, base, "presence_rooms_followed") == 0

    await poll(none_followed, what="the rooms let go")
    third = await open_events(session, _url(server, "/clients/carol/events?room=x&room=y&room=z"))
    assert (await third.next()).event == "snapshot"
    third.close()


async def test_idle_rooms_are_read_a_bounded_window_at_a_time_and_still_delivered(
    settings: Settings, start_presence: StartPresence, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 idle rooms: each read that waits (one per tick) used to name all
    of them; now a tick reads a window of a thousand and the 250 most recent,
    and no read names more than 250. An idle room's entry still arrives."""
    monkeypatch.setattr("presence.updates.room_reader.WARM_SECONDS", 0.2, raising=False)
    presence = await start_presence(settings)
    rooms = [f"idle{n}" for n in range(3000)]
    with _following(presence, rooms, per_stream=100) as subscribers:
        started = await redis_ms(redis)
        await poll(lambda: redis_past(redis, started + 1000), what="the rooms gone idle")
        sizes: list[tuple[int, bool]] = []  # (rooms named, whether it blocks)
        async with redis.monitor() as monitor, asyncio.timeout(20):
            while sum(blocks for _, blocks in sizes) < 20:
                command = (await monitor.next_command())["command"]
                if command.startswith("XREAD ") and "room.{" in command:
                    words = command.split(" ")
                    sizes.append((sum(w.startswith("room.{") for w in words), "BLOCK" in words))
        named = sum(n for n, _ in sizes)
        waits = sum(blocks for _, blocks in sizes)
        assert named / waits <= 2000, f"{named} rooms read in {waits} ticks"
        assert max(n for n, _ in sizes) <= 250
        # The last idle room in the rotation still gets its entry.
        room = rooms[-1]
        (subscriber,) = [s for s in subscribers if room in s.scope.rooms]
        await redis.xadd(f"room.{{{room}}}.presence", _entry(room, "late"))
        await poll(lambda: truthy(subscriber.queue), what="the idle room's entry")


async def test_a_lost_presence_stream_resets_global_and_watch_streams_but_not_room_only_ones(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    app = create_app(settings)
    server = await serve(app)
    everyone = await open_events(session, _url(server, "/clients/alice/events"))
    await everyone.next()
    watcher = await open_events(session, _url(server, "/clients/wendy/events?room=r&watch=bob"))
    await watcher.next()
    member = await open_events(session, _url(server, "/clients/carol/events?room=r"))
    assert (await member.next()).event == "snapshot"
    bob = await open_events(session, _url(server, "/clients/bob/events"))
    await bob.next()
    await everyone.until(lambda e: e.data.get("client") == "bob")
    await watcher.until(lambda e: e.data.get("client") == "bob" and "room" not in e.data)
    reader = app[PRESENCE]._service.reader
    await redis.xtrim("presence", maxlen=0)
    await poll(lambda: truthy(reader.resyncs == 1), what="the loss seen")
    for stream in (everyone, watcher):
        reset = await stream.until(lambda e: e.event == "snapshot")
        assert reset.data["reset"] is True
    # The room lost nothing: carol's next event is dave joining it, no snapshot.
    dave = await open_events(session, _url(server, "/clients/dave/events?room=r"))
    await dave.next()
    joined = await member.until(lambda e: e.event == "snapshot" or e.data["client"] == "dave")
    assert joined.event == "presence", joined.data
    assert (joined.data["client"], joined.data["room"]) == ("dave", "r")
    for stream in (everyone, watcher, member, bob, dave):
        stream.close()
