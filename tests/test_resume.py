"""Gapless resume: ``Last-Event-ID`` (or ``lastEventId``) replays what was missed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from presence import Settings, create_app

from .support import Event, EventStream, Redis, open_events, poll


@pytest.fixture
async def server(redis: Redis, settings: Settings) -> AsyncIterator[TestServer]:
    server = TestServer(create_app(settings.replace(heartbeat_interval=30, queue_size=50)))
    await server.start_server()
    yield server
    await server.close()


async def connect(
    session: aiohttp.ClientSession, server: TestServer, client: str, **headers: str
) -> EventStream:
    url = str(server.make_url(f"/clients/{client}/events"))
    return await open_events(session, url, {k.replace("_", "-"): v for k, v in headers.items()})


async def online(redis: Redis, *clients: str) -> None:
    for client in clients:
        await redis.xadd("heartbeat", {"client": client, "server": "ext"})


async def presence_ids(redis: Redis) -> list[str]:
    return [i.decode() for i, _ in await redis.xrange("presence")]


def summary(event: Event) -> tuple[str, str, str]:
    return event.event, event.data.get("client", ""), event.data.get("status", "")


async def test_a_reconnect_with_last_event_id_gets_every_missed_event_then_live_ones(
    server: TestServer, session: aiohttp.ClientSession, redis: Redis
) -> None:
    alice = await connect(session, server, "alice")
    await alice.next()  # snapshot
    await online(redis, "bob")
    seen = await alice.until(lambda e: e.data.get("client") == "bob")
    alice.close()
    # While alice is away: joins, a leave, and alice's own transitions.
    await online(redis, "carol", "dave")
    await redis.delete("online.clients.bob")
    await poll(lambda: _entries(redis, 5), what="entries while away")  # + alice's ONLINE
    assert seen.id is not None
    back = await connect(session, server, "alice", Last_Event_ID=seen.id)
    replayed = [await back.next() for _ in range(3)]
    # Exactly the stream's entries after seen.id, in its order, alice's own left out.
    missed = [
        (i.decode(), f[b"client"].decode(), f[b"status"].decode())
        for i, f in await redis.xrange("presence", f"({seen.id}", "+")
        if f[b"client"] != b"alice"
    ]
    assert [(e.id, *summary(e)[1:]) for e in replayed] == missed
    assert {summary(e) for e in replayed} == {
        ("presence", "carol", "ONLINE"),
        ("presence", "dave", "ONLINE"),
        ("presence", "bob", "OFFLINE"),
    }
    await online(redis, "erin")
    live = await back.next()
    assert summary(live) == ("presence", "erin", "ONLINE")  # no duplicate, no snapshot
    back.close()


async def _entries(redis: Redis, count: int) -> bool:
    return bool(await redis.xlen("presence") >= count)


async def test_the_query_parameter_resumes_a_first_connection_too(
    server: TestServer, session: aiohttp.ClientSession, redis: Redis
) -> None:
    await online(redis, "bob")
    await poll(lambda: _entries(redis, 1), what="bob ONLINE")
    (mark,) = await presence_ids(redis)
    await online(redis, "carol")
    await poll(lambda: _entries(redis, 2), what="carol ONLINE")
    url = str(server.make_url("/clients/alice/events")) + f"?lastEventId={mark}"
    alice = await open_events(session, url)
    assert summary(await alice.next()) == ("presence", "carol", "ONLINE")
    alice.close()


@pytest.mark.parametrize(
    "last_event_id",
    ["1-0", "0-0", "not-an-id", "99999999999999999999-1", "18446744073709551615-0", "1-0-0"],
)
async def test_an_id_the_stream_no_longer_holds_or_never_held_gets_a_reset_snapshot(
    last_event_id: str, server: TestServer, session: aiohttp.ClientSession, redis: Redis
) -> None:
    await online(redis, "bob")
    await poll(lambda: _entries(redis, 1), what="bob ONLINE")
    alice = await connect(session, server, "alice", Last_Event_ID=last_event_id)
    first = await alice.next()
    assert first.event == "snapshot"
    assert first.data == {"clients": [{"client": "bob", "server": "ext"}], "reset": True}
    alice.close()


async def test_a_trimmed_position_or_too_many_missed_events_get_a_reset_snapshot(
    server: TestServer, session: aiohttp.ClientSession, redis: Redis
) -> None:
    await online(redis, "first")
    await poll(lambda: _entries(redis, 1), what="first ONLINE")
    (mark,) = await presence_ids(redis)
    await online(redis, *(f"c{n}" for n in range(60)))  # more than queue_size (50)
    await poll(lambda: _entries(redis, 61), what="61 entries")
    alice = await connect(session, server, "alice", Last_Event_ID=mark)
    assert (await alice.next()).data["reset"] is True
    alice.close()
    await redis.xtrim("presence", minid="99999999999999-0")  # the position is gone
    alice = await connect(session, server, "alice", Last_Event_ID=mark)
    assert (await alice.next()).data["reset"] is True
    alice.close()
