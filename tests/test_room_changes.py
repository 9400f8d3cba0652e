"""In-process room listeners, ``Presence.changes(rooms=...)``, against a real
redis-server: the members first, then every transition, fresh members after
a loss, and the end of the iteration with the service."""

from __future__ import annotations

import asyncio
import logging

import pytest

from presence import (
    OFFLINE,
    ONLINE,
    UPDATE,
    InvalidClientId,
    Member,
    RoomEvent,
    RoomSnapshot,
    Settings,
)

from .support import Redis, StartPresence, poll, truthy


async def test_a_room_listener_gets_the_members_then_each_transition(
    settings: Settings, start_presence: StartPresence, redis: Redis
) -> None:
    presence = await start_presence(settings.replace(leave_grace=0.2))
    async with presence.track("alice", rooms=["lobby"], data={"s": "here"}):
        await poll(lambda: redis.hget("room.{lobby}.data", "alice"), what="alice in lobby")
        async with presence.changes(rooms=["lobby", "lobby"]) as events:
            first = await anext(events)
            assert isinstance(first, RoomSnapshot)
            assert (first.room, first.members) == (
                "lobby",
                [Member("alice", "test-1", '{"s":"here"}')],
            )
            async with presence.track("bob", rooms=["lobby"]), presence.track("carol", ["other"]):
                joined = await anext(events)
                assert isinstance(joined, RoomEvent)
                assert joined == RoomEvent(joined.id, "lobby", "bob", ONLINE, "test-1")
                assert stream_after(joined.id, first.position)
                assert await presence.set_data("lobby", "alice", {"s": "away"}) is True
                updated = await anext(events)
                assert isinstance(updated, RoomEvent)
                assert updated.to_dict() == {
                    "room": "lobby",
                    "client": "alice",
                    "status": UPDATE,
                    "server": "test-1",
                    "data": {"s": "away"},
                }
            left = await asyncio.wait_for(anext(events), 5)
            assert isinstance(left, RoomEvent)
            assert (left.client, left.status, left.data) == ("bob", OFFLINE, None)
            await presence.close()
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(events), 5)


async def test_a_room_listener_that_falls_behind_gets_the_members_again(
    settings: Settings, start_presence: StartPresence, redis: Redis
) -> None:
    presence = await start_presence(settings.replace(queue_size=5))
    async with presence.changes(rooms=["r"]) as events:
        start = await anext(events)
        assert isinstance(start, RoomSnapshot)
        assert start.members == []
        entry = {"room": "r", "status": ONLINE, "server": "ext"}
        for n in range(20):
            await redis.xadd("room.{r}.presence", {**entry, "client": f"c{n}"})
        reader = presence._service.room_reader
        await poll(lambda: truthy(reader.delivered == 20), what="routed, not read")
        fresh = await asyncio.wait_for(anext(events), 5)
        assert isinstance(fresh, RoomSnapshot)  # not 20 events: the queue holds 5
        assert fresh.room == "r"
        await redis.xadd("room.{r}.presence", {**entry, "client": "late"})
        late = await asyncio.wait_for(anext(events), 5)
        assert isinstance(late, RoomEvent)
        assert late.client == "late"


async def test_room_listeners_refuse_what_is_not_a_list_of_rooms(
    settings: Settings, start_presence: StartPresence
) -> None:
    presence = await start_presence(settings)
    with pytest.raises(InvalidClientId):
        presence.changes(rooms=["not valid"])
    with pytest.raises(TypeError, match="not one string"):
        presence.changes(rooms="lobby")
    with pytest.raises(ValueError, match="at least one room"):
        presence.changes(rooms=[])


def stream_after(entry_id: str, position: str) -> bool:
    def order(value: str) -> tuple[int, int]:
        ms, _, seq = value.partition("-")
        return int(ms), int(seq)

    return order(entry_id) > order(position)


async def test_a_room_that_redis_lost_is_reset_before_any_later_event(
    settings: Settings, start_presence: StartPresence, redis: Redis
) -> None:
    """Redis flushed under a room listener: its next item is the room's fresh
    members, never an ONLINE of a member it has already (nor nothing at all)."""
    presence = await start_presence(settings)
    async with presence.track("bob", rooms=["lobby"]):
        await poll(lambda: redis.hget("room.{lobby}.members", "bob"), what="bob in lobby")
        async with presence.changes(rooms=["lobby"]) as events:
            first = await anext(events)
            assert isinstance(first, RoomSnapshot)
            assert [m.client for m in first.members] == ["bob"]
            await redis.flushall()  # as a failover that lost everything would
            after = await asyncio.wait_for(anext(events), 10)
            assert isinstance(after, RoomSnapshot), after
            assert after.room == "lobby"


async def test_a_room_whose_stream_is_not_a_stream_stops_no_other_room(
    settings: Settings,
    start_presence: StartPresence,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The read of every room fails on the one key of another type: that room
    is set aside, with one warning naming it, and the reader goes on."""
    caplog.set_level(logging.WARNING, logger="presence")
    presence = await start_presence(settings)
    async with (
        presence.changes(rooms=["good"]) as good,
        presence.changes(rooms=["bad"]) as bad,
    ):
        assert isinstance(await anext(good), RoomSnapshot)
        assert isinstance(await anext(bad), RoomSnapshot)
        async with presence.track("eve", rooms=["bad"]):
            assert isinstance(await asyncio.wait_for(anext(bad), 10), RoomEvent)
        await redis.delete("room.{bad}.presence")
        await redis.set("room.{bad}.presence", "not a stream")
        await poll(
            lambda: truthy("room bad cannot be read from Redis" in caplog.text),
            timeout=10,
            what="the bad room set aside",
        )
        async with presence.track("dave", rooms=["good"]):
            joined = await asyncio.wait_for(anext(good), 10)
            assert isinstance(joined, RoomEvent)
            assert (joined.client, joined.status) == ("dave", ONLINE)
    assert "room reader failed" not in caplog.text
    assert caplog.text.count("room bad cannot be read from Redis") == 1
