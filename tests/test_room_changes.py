"""In-process room listeners, ``Presence.changes(rooms=...)``, against a real
redis-server: the members first, then every transition, fresh members after
a loss, and the end of the iteration with the service."""

from __future__ import annotations

import asyncio

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
