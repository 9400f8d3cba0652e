"""Scoped streams: rooms with member data, watch lists, occupancy, served
in-process against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from presence import PRESENCE, RoomUnreadable, Settings, create_app

from .support import (
    Event,
    EventStream,
    Redis,
    Serve,
    StartPresence,
    metric,
    open_events,
    poll,
)


def _url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


async def _room(session: aiohttp.ClientSession, server: TestServer, room: str) -> Any:
    async with session.get(server.make_url(f"/rooms/{room}")) as response:
        assert response.status == 200
        return await response.json()


async def _members(session: aiohttp.ClientSession, server: TestServer, room: str) -> set[str]:
    return {c["client"] for c in (await _room(session, server, room))["clients"]}


async def _has(session: aiohttp.ClientSession, server: TestServer, room: str, client: str) -> bool:
    return client in await _members(session, server, room)


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
    bob = await open_events(session, _url(server, f"/clients/bob/events?room=lobby&data={data}"))
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


async def test_scopes_filter_what_a_stream_receives(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(leave_grace=0.2)))
    red = await open_events(session, _url(server, "/clients/alice/events?room=red"))
    await red.next()
    await poll(lambda: _members(session, server, "red"), what="alice in red")
    watcher = await open_events(session, _url(server, "/clients/dave/events?watch=bob&room=red"))
    snapshot = await watcher.next()
    assert snapshot.data == {
        "clients": [],
        "rooms": {"red": [{"client": "alice", "server": "test-1"}]},
    }
    # Traffic none of them asked for: a blue room, a global stream, carol.
    blue = await open_events(session, _url(server, "/clients/bob/events?room=blue"))
    await blue.next()
    carol = await open_events(session, _url(server, "/clients/carol/events"))
    await carol.next()
    online = await _presence(watcher, None, "bob", "ONLINE")
    assert online.data == {"client": "bob", "status": "ONLINE", "server": "test-1"}
    carol.close()
    blue.close()
    await _presence(watcher, None, "bob", "OFFLINE")
    # The last of the traffic: erin joins red. Before her, red heard nothing.
    erin = await open_events(session, _url(server, "/clients/erin/events?room=red"))
    await erin.next()
    # Before erin, red heard of dave alone (a member too), then erin.
    heard = [await red.next()]
    while heard[-1].data["client"] != "erin":
        heard.append(await red.next())
    assert {(e.event, e.data["client"], e.data["room"]) for e in heard} == {
        ("presence", "dave", "red"),
        ("presence", "erin", "red"),
    }
    joined = await watcher.next()
    assert (joined.data["client"], joined.data["room"]) == ("erin", "red")
    for stream in (red, watcher, erin):
        stream.close()


async def test_a_client_leaves_one_room_and_stays_in_the_other(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    server = await serve(create_app(settings.replace(leave_grace=0.2)))
    watcher = await open_events(
        session, _url(server, "/clients/w/events?room=a&room=b&watch=alice")
    )
    await watcher.next()
    in_a = await open_events(session, _url(server, "/clients/alice/events?room=a"))
    in_b = await open_events(session, _url(server, "/clients/alice/events?room=b"))
    await in_a.next()
    await in_b.next()
    await _presence(watcher, "a", "alice", "ONLINE")
    await _presence(watcher, "b", "alice", "ONLINE")
    in_a.close()
    await _presence(watcher, "a", "alice", "OFFLINE")
    assert await _members(session, server, "b") == {"alice", "w"}
    assert await redis.hget("online.servers", "alice") == b"test-1"
    in_b.close()
    left = await watcher.until(lambda e: e.data.get("status") == "OFFLINE")
    assert left.data.get("room") in ("b", None)
    watcher.close()


async def test_external_platform_puts_a_member_in_a_room_through_redis_alone(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    server = await serve(create_app(settings))
    watcher = await open_events(session, _url(server, "/clients/w/events?room=ops"))
    await watcher.next()
    fields = {"client": "ext", "server": "node-7", "room": "ops", "data": '{"b": 1, "a": "x"}'}
    await redis.xadd("heartbeat", fields)
    online = await _presence(watcher, "ops", "ext", "ONLINE")
    assert online.data["data"] == {"a": "x", "b": 1}
    assert await redis.hget("online.servers", "ext") == b"node-7"  # globally online too
    assert await redis.hget("room.{ops}.data", "ext") == b'{"a":"x","b":1}'
    # The same data again changes nothing; new data is one UPDATE.
    await redis.xadd("heartbeat", {**fields, "data": '{"a":"x","b":1}'})
    await redis.xadd("heartbeat", {**fields, "data": '{"a":"y"}'})
    update = await _presence(watcher, "ops", "ext", "UPDATE")
    assert update.data["data"] == {"a": "y"}
    # No more heartbeats: out of the room at its deadline.
    left = await _presence(watcher, "ops", "ext", "OFFLINE")
    assert left.data["server"] == "node-7"
    statuses = [f[b"status"] for _, f in await redis.xrange("room.{ops}.presence")]
    assert statuses.count(b"UPDATE") == 1
    watcher.close()


async def test_a_scoped_stream_resumes_after_its_last_event_id(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(leave_grace=5)))
    url = _url(server, "/clients/alice/events?room=r&watch=bob")
    alice = await open_events(session, url)
    await alice.next()
    bob = await open_events(session, _url(server, "/clients/bob/events?room=r"))
    await bob.next()
    # bob's ONLINE in the room and in the watch list, in either order: each
    # comes from its own stream's reader.
    seen: set[str | None] = set()
    while seen != {"r", None}:
        event = await alice.next()
        if event.event == "presence" and (event.data["client"], event.data["status"]) == (
            "bob",
            "ONLINE",
        ):
            seen.add(event.data.get("room"))
    last = alice.last_id
    assert last is not None
    alice.close()
    carol = await open_events(session, _url(server, "/clients/carol/events?room=r"))
    await carol.next()
    await poll(lambda: _has(session, server, "r", "carol"), what="carol in r")
    async with session.put(server.make_url("/rooms/r/clients/bob/data"), json={"s": 1}):
        pass
    resumed = await open_events(session, url, headers={"Last-Event-ID": last})
    first = await resumed.next()
    assert (first.event, first.data["client"], first.data["status"]) == (
        "presence",
        "carol",
        "ONLINE",
    )
    second = await resumed.next()
    assert (second.data["client"], second.data["status"]) == ("bob", "UPDATE")
    resumed.close()
    # An id from another scope cannot be exact: a reset snapshot.
    other = await open_events(
        session, _url(server, "/clients/alice/events?room=r"), headers={"Last-Event-ID": last}
    )
    reset = await other.next()
    assert reset.event == "snapshot"
    assert reset.data["reset"] is True
    assert {m["client"] for m in reset.data["rooms"]["r"]} == {"bob", "carol"}
    for stream in (other, bob, carol):
        stream.close()


async def test_occupancy_counts_members_without_listing_them(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings))
    counter = await open_events(session, _url(server, "/clients/counter/events?occupancy=big"))
    first = await counter.next()
    assert (first.event, first.data) == ("occupancy", {"room": "big", "count": 0})
    members = [
        await open_events(session, _url(server, f"/clients/m{n}/events?room=big")) for n in range(3)
    ]
    counted = await counter.until(lambda e: e.data["count"] == 3, timeout=5)
    assert counted.event == "occupancy"
    for member in members:
        member.close()
    counter.close()


async def test_scope_limits_and_bad_data_get_a_400_in_json(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(max_rooms_per_connection=2, max_watch=2)))
    cases = {
        "room=a&room=b&occupancy=c": "at most 2 rooms",
        "watch=a&watch=b&watch=c": "at most 2 ids",
        "room=bad%20name": "room must be",
        "watch=": "watched client id must be",
        "room=a&data=%7B": "valid JSON",
        "room=a&data=%5B1%5D": "a JSON object",
        "room=a&data=" + "%7B%22a%22%3A%22" + "x" * 1100 + "%22%7D": "at most 1024 bytes",
        "data=%7B%7D": "data needs a room",
        "room=a&data=%7B%7D&data=%7B%7D": "data may be given once",
    }
    for query, message in cases.items():
        async with session.get(server.make_url(f"/clients/alice/events?{query}")) as response:
            assert response.status == 400, query
            assert message in (await response.json())["error"], query
    # Repeated rooms count once.
    ok = await open_events(session, _url(server, "/clients/alice/events?room=a&room=a&room=b"))
    assert (await ok.next()).data == {"rooms": {"a": [], "b": []}}
    ok.close()
    put = server.make_url("/rooms/a/clients/alice/data")
    for body in (b"[]", b"{", b'{"a": NaN}', b'"x"'):
        async with session.put(put, data=body) as response:
            assert response.status == 400, body
    async with session.get(server.make_url("/rooms/bad%20name")) as response:
        assert response.status == 400


async def test_track_holds_memberships_in_process(
    settings: Settings, start_presence: StartPresence, redis: Redis
) -> None:
    presence = await start_presence(settings)
    async with presence.track("svc", rooms=["ops"], data={"role": "bot"}):
        await poll(lambda: redis.hget("room.{ops}.data", "svc"), what="svc in ops")
        room = await presence.room("ops")
        assert [m.to_dict() for m in room.members] == [
            {"client": "svc", "server": "test-1", "data": {"role": "bot"}}
        ]
        assert await presence.set_data("ops", "svc", {"role": "admin"}) is True
        assert await presence.set_data("ops", "svc", {"role": "admin"}) is False
        assert await presence.set_data("ops", "nobody", {}) is None
    with pytest.raises(ValueError, match="JSON object"):
        async with presence.track("svc", rooms=["ops"], data=[1]):  # type: ignore[arg-type]
            pass


async def test_data_beyond_json_gets_a_400_on_the_stream_and_on_put(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings))
    alice = await open_events(session, _url(server, "/clients/alice/events?room=lobby"))
    await alice.next()
    await poll(lambda: _has(session, server, "lobby", "alice"), what="alice in the lobby")
    async with session.put(
        server.make_url("/rooms/lobby/clients/alice/data"), data=b'{"a":1e400}'
    ) as response:
        assert response.status == 400
        assert "out of range" in (await response.json())["error"]
    async with session.get(
        server.make_url("/clients/bob/events?room=lobby&data=%7B%22a%22%3A1e400%7D")
    ) as response:
        assert response.status == 400
    alice.close()


async def test_metrics_count_rooms_memberships_and_scoped_streams(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings))
    url = str(server.make_url("")).rstrip("/")
    stream = await open_events(session, _url(server, "/clients/alice/events?room=a&room=b"))
    await stream.next()
    watcher = await open_events(session, _url(server, "/clients/w/events?watch=alice"))
    await watcher.next()
    assert await metric(session, url, "presence_rooms") == 2
    assert await metric(session, url, "presence_room_memberships") == 2
    assert await metric(session, url, "presence_scoped_connections") == 2
    assert await metric(session, url, "presence_sse_connections") == 2
    stream.close()
    watcher.close()


async def _applied(redis: Redis, entry_id: bytes) -> bool:
    """Whether the consumer group applied the heartbeat entry ``entry_id`` (each
    script call acknowledges its own entries)."""
    [group] = await redis.xinfo_groups("heartbeat")
    delivered = _position(group["last-delivered-id"]) >= _position(entry_id)
    return delivered and (await redis.xpending("heartbeat", "presence"))["pending"] == 0


def _position(entry_id: bytes) -> tuple[int, ...]:
    return tuple(map(int, entry_id.split(b"-")))


async def _first_beat(redis: Redis, client: str) -> bytes | None:
    """The id of ``client``'s first heartbeat entry, if it is in."""
    for entry_id, f in await redis.xrange("heartbeat"):
        if f[b"client"] == client.encode():
            return bytes(entry_id)
    return None


async def test_a_reconnect_with_the_first_url_keeps_the_data_put_since(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    server = await serve(create_app(settings.replace(leave_grace=5)))
    watcher = await open_events(session, _url(server, "/clients/w/events?room=r"))
    await watcher.next()
    url = _url(server, '/clients/alice/events?room=r&data={"s":"join"}')
    alice = await open_events(session, url)
    await alice.next()
    joined = await _presence(watcher, "r", "alice", "ONLINE")
    assert joined.data["data"] == {"s": "join"}
    async with session.put(
        server.make_url("/rooms/r/clients/alice/data"), json={"s": "away"}
    ) as response:
        assert (await response.json())["changed"] is True
    await _presence(watcher, "r", "alice", "UPDATE")
    # A network blip: EventSource reconnects with its first URL, within the grace.
    alice.close()
    again = await open_events(session, url)
    await again.next()
    # A marker joins after it: once the marker's first heartbeat is applied,
    # so is every heartbeat of the reconnect, which the stream holds before it.
    marker = await open_events(session, _url(server, "/clients/marker/events?room=r"))
    await marker.next()
    beat = await poll(lambda: _first_beat(redis, "marker"), what="the marker's heartbeat")
    assert beat is not None
    await poll(lambda: _applied(redis, beat), what="every heartbeat up to the marker's applied")
    entries = await redis.xrange("room.{r}.presence")
    about_alice = [(f[b"status"], f.get(b"data")) for _, f in entries if f[b"client"] == b"alice"]
    assert about_alice == [(b"ONLINE", b'{"s":"join"}'), (b"UPDATE", b'{"s":"away"}')]
    heard = [await watcher.next()]
    while heard[-1].data["client"] != "marker":
        heard.append(await watcher.next())
    assert [(e.data["client"], e.data["status"]) for e in heard] == [("marker", "ONLINE")]
    room = await _room(session, server, "r")
    assert {"client": "alice", "server": "test-1", "data": {"s": "away"}} in room["clients"]
    for stream in (watcher, again, marker):
        stream.close()


def _logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "presence.updates.room_snapshot"]


async def test_a_room_redis_cannot_read_fails_only_the_streams_that_join_it(
    serve: Serve,
    settings: Settings,
    session: aiohttp.ClientSession,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(settings)
    server = await serve(app)
    presence = app[PRESENCE]
    await redis.set("room.{bad}.members", "x")
    with caplog.at_level(logging.WARNING, logger="presence.updates.room_snapshot"):
        # Asked for in one loop iteration, before the reader runs: one batch.
        good, both = await asyncio.gather(
            presence._service.room_snapshots(["good"]),
            presence._service.room_snapshots(["good", "bad"]),
            return_exceptions=True,
        )
        assert isinstance(good, dict), good
        assert good["good"].members == []
        assert isinstance(both, RoomUnreadable)
        assert both.room == "bad"
        [record] = _logged(caplog)
        assert "room bad" in record.getMessage()
        # Over HTTP, the stream joining it gets a JSON 503 naming it; one
        # joining another room at the same time gets its snapshot.
        refused, ok = await asyncio.gather(
            session.get(server.make_url("/clients/alice/events?room=good&room=bad")),
            open_events(session, _url(server, "/clients/bob/events?room=good")),
        )
        assert refused.status == 503
        error = (await refused.json())["error"]
        assert error.startswith("room bad cannot be read from Redis: WRONGTYPE"), error
        refused.close()
        assert (await ok.next()).data == {"rooms": {"good": []}}
        assert len(_logged(caplog)) == 1  # throttled: once per 10 s
    async with session.get(server.make_url("/rooms/bad")) as response:
        assert response.status == 503
        assert "room bad" in (await response.json())["error"]
    # The room that failed held nothing: alice never joined anything.
    assert await redis.hget("online.servers", "alice") is None
    ok.close()
