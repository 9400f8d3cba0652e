"""Scoped streams: rooms with member data, watch lists, occupancy, served
in-process against a real redis-server."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from presence import Settings, create_app

from .support import Event, EventStream, Redis, Serve, open_events, poll


def _url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


async def _room(session: aiohttp.ClientSession, server: TestServer, room: str) -> Any:
    async with session.get(server.make_url(f"/rooms/{room}")) as response:
        assert response.status == 200
        return await response.json()


async def _members(session: aiohttp.ClientSession, server: TestServer, room: str) -> set[str]:
    return {c["client"] for c in (await _room(session, server, room))["clients"]}


def _presence(stream: EventStream, room: str | None, client: str, status: str) -> Any:
    def match(event: Event) -> bool:
        return (
            event.event == "presence"
            and event.data.get("room") == room
            and event.data["client"] == client
            and event.data["status"] == status
        )

    return stream.until(match)


async def test_room_members_see_each_other_join_update_and_leave(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    server = await serve(create_app(settings))
    alice = await open_events(session, _url(server, "/clients/alice/events?room=lobby"))
    first = await alice.next()
    assert (first.event, first.data) == ("snapshot", {"rooms": {"lobby": []}})
    await poll(lambda: _members(session, server, "lobby"), what="alice in the lobby")

    data = json.dumps({"status": "here"})
    bob = await open_events(
        session, _url(server, f"/clients/bob/events?room=lobby&data={data}")
    )
    snapshot = await bob.next()
    assert snapshot.data == {"rooms": {"lobby": [{"client": "alice", "server": "test-1"}]}}
    joined = await _presence(alice, "lobby", "bob", "ONLINE")
    assert joined.data == {
        "room": "lobby",
        "client": "bob",
        "status": "ONLINE",
        "server": "test-1",
        "data": {"status": "here"},
    }

    async with session.put(
        server.make_url("/rooms/lobby/clients/bob/data"), json={"status": "away"}
    ) as response:
        assert response.status == 200
        assert (await response.json())["changed"] is True
    updated = await _presence(alice, "lobby", "bob", "UPDATE")
    assert updated.data["data"] == {"status": "away"}
    async with session.put(
        server.make_url("/rooms/lobby/clients/bob/data"), json={"status": "away"}
    ) as response:
        assert (await response.json())["changed"] is False

    room = await _room(session, server, "lobby")
    assert room == {
        "room": "lobby",
        "clients": [
            {"client": "alice", "server": "test-1"},
            {"client": "bob", "server": "test-1", "data": {"status": "away"}},
        ],
        "count": 2,
    }
    bob.close()
    left = await _presence(alice, "lobby", "bob", "OFFLINE")
    assert "data" not in left.data
    # The room's own stream has every transition once; the global one none of them.
    entries = await redis.xrange("room.{lobby}.presence")
    statuses = [(f[b"client"], f[b"status"]) for _, f in entries]
    assert statuses == [
        (b"alice", b"ONLINE"),
        (b"bob", b"ONLINE"),
        (b"bob", b"UPDATE"),
        (b"bob", b"OFFLINE"),
    ]
    global_entries = await redis.xrange("presence")
    assert all(f[b"status"] in (b"ONLINE", b"OFFLINE") for _, f in global_entries)
    alice.close()
