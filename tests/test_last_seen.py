"""Last seen: an offline client's (and room member's) last OFFLINE time,
written by the script that published it, kept for the retention."""

from __future__ import annotations

from typing import Any

import aiohttp

from presence import PRESENCE, Presence, Settings, create_app
from presence.last_seen import iso

from .support import Redis, Serve, entry_ms, open_events, poll


async def _json(session: aiohttp.ClientSession, url: Any) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def _offline_ms(redis: Redis, stream: str, client: str) -> int | None:
    """The Unix ms of the last OFFLINE of ``client`` in ``stream``, if any."""
    for entry_id, fields in reversed(await redis.xrange(stream)):
        if fields[b"client"] == client.encode() and fields[b"status"] == b"OFFLINE":
            return entry_ms(entry_id)
    return None


async def test_an_offline_clients_last_seen_is_its_offline_entrys_time(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    app = create_app(settings.replace(leave_grace=0.05))
    server = await serve(app)
    assert (await _json(session, server.make_url("/clients/nobody")))["last_seen"] is None

    # Leave: the stream closes and the leave script publishes the OFFLINE.
    alice = await open_events(session, str(server.make_url("/clients/alice/events")))
    await alice.next()
    await poll(lambda: redis.exists("online.clients.alice"), what="alice online")
    alice.close()
    left = await poll(lambda: _offline_ms(redis, "presence", "alice"), what="alice OFFLINE")
    assert left is not None
    body = await _json(session, server.make_url("/clients/alice"))
    assert body == {
        "client": "alice",
        "status": "OFFLINE",
        "server": None,
        "last_seen": left,
        "last_seen_iso": iso(left),
    }

    # Deadline: heartbeats stop and the sweeper publishes it.
    await redis.xadd("heartbeat", {"client": "bob", "server": "n1"})
    await poll(lambda: redis.exists("online.clients.bob"), what="bob online")
    gone = await poll(lambda: _offline_ms(redis, "presence", "bob"), what="bob OFFLINE")
    assert (await _json(session, server.make_url("/clients/bob")))["last_seen"] == gone
    assert await app[PRESENCE].last_seen("bob") == gone

    # Back online: the status says so, and the time stays for the next time.
    await redis.xadd("heartbeat", {"client": "bob", "server": "n1"})
    await poll(lambda: redis.exists("online.clients.bob"), what="bob back")
    body = await _json(session, server.make_url("/clients/bob"))
    assert body == {"client": "bob", "status": "ONLINE", "server": "n1"}
    assert await redis.zscore("online.last_seen", "bob") == gone


async def test_a_room_members_last_seen(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    server = await serve(create_app(settings))
    url = server.make_url("/rooms/lobby/clients/carol")
    assert await _json(session, url) == {
        "room": "lobby",
        "client": "carol",
        "status": "OFFLINE",
        "server": None,
        "last_seen": None,
        "last_seen_iso": None,
    }
    await redis.xadd(
        "heartbeat", {"client": "carol", "server": "n1", "room": "lobby", "data": '{"a":1}'}
    )

    async def member() -> Any:
        body = await _json(session, url)
        return body if body["status"] == "ONLINE" else None

    online = await poll(member, what="carol in lobby")
    assert online == {
        "room": "lobby",
        "client": "carol",
        "status": "ONLINE",
        "server": "n1",
        "data": {"a": 1},
    }
    # No more heartbeats: the room sweeper ends the membership at its deadline.
    stream = "room.{lobby}.presence"
    gone = await poll(lambda: _offline_ms(redis, stream, "carol"), what="carol out of lobby")
    assert gone is not None
    body = await _json(session, url)
    assert (body["status"], body["last_seen"], body["last_seen_iso"]) == (
        "OFFLINE",
        gone,
        iso(gone),
    )
    # Kept one retention after its last write, as the empty room's stream is not.
    assert 0 < await redis.pttl("room.{lobby}.last_seen") <= settings.last_seen_ms


async def test_the_retention_bounds_what_is_kept(
    serve: Serve, settings: Settings, redis: Redis
) -> None:
    await serve(create_app(settings.replace(last_seen_retention=0.001)))
    await redis.xadd("heartbeat", {"client": "old", "server": "n1"})
    await poll(lambda: _offline_ms(redis, "presence", "old"), what="old OFFLINE")
    await redis.xadd("heartbeat", {"client": "new", "server": "n1"})
    gone = await poll(lambda: _offline_ms(redis, "presence", "new"), what="new OFFLINE")
    # The newer OFFLINE trimmed the older one, a millisecond past the retention.
    assert await redis.zrange("online.last_seen", 0, -1, withscores=True) == [(b"new", gone)]


async def test_a_zero_retention_keeps_nothing(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    server = await serve(create_app(settings.replace(last_seen_retention=0)))
    await redis.xadd("heartbeat", {"client": "dan", "server": "n1", "room": "r"})
    await poll(lambda: _offline_ms(redis, "room.{r}.presence", "dan"), what="dan out of r")
    await poll(lambda: _offline_ms(redis, "presence", "dan"), what="dan OFFLINE")
    assert (await _json(session, server.make_url("/clients/dan")))["last_seen"] is None
    assert not await redis.exists("online.last_seen", "room.{r}.last_seen")


async def test_embedded_on_the_in_process_redis() -> None:
    presence = Presence(Settings(heartbeat_interval=0.4, leave_grace=0.05))
    async with presence:
        assert await presence.last_seen("eve") is None
        async with presence.track("eve"):
            await poll(lambda: presence.status("eve"), what="eve online")
        await poll(lambda: presence.last_seen("eve"), what="eve seen")
        assert await presence.status("eve") is None


async def test_a_time_past_the_retention_is_not_answered(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    """Older entries are trimmed only by a later OFFLINE: reads check the
    retention themselves, and a retention of 0 answers none of what an earlier
    setting kept."""
    server = await serve(create_app(settings.replace(last_seen_retention=60)))
    old = entry_ms(await redis.xadd("clock", {"x": "1"})) - 61_000
    await redis.zadd("online.last_seen", {"frank": old, "gina": old + 2_000})
    assert (await _json(session, server.make_url("/clients/frank")))["last_seen"] is None
    assert (await _json(session, server.make_url("/clients/gina")))["last_seen"] == old + 2_000
    await server.close()
    server = await serve(create_app(settings.replace(last_seen_retention=0)))
    assert (await _json(session, server.make_url("/clients/gina")))["last_seen"] is None


async def test_someone_elses_key_in_its_place_holds_no_offline_back(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    """Last seen is an extra: a key of another type named like it goes
    unwritten, and every OFFLINE still goes out."""
    await redis.hset("online.last_seen", "theirs", "1")
    await redis.set("room.{r}.last_seen", "theirs")
    server = await serve(create_app(settings.replace(leave_grace=0.05)))
    await redis.xadd("heartbeat", {"client": "hal", "server": "n1", "room": "r"})
    await poll(lambda: _offline_ms(redis, "room.{r}.presence", "hal"), what="hal out of r")
    await poll(lambda: _offline_ms(redis, "presence", "hal"), what="hal OFFLINE")
    ivy = await open_events(session, str(server.make_url("/clients/ivy/events")))
    await ivy.next()
    await poll(lambda: redis.exists("online.clients.ivy"), what="ivy online")
    ivy.close()
    await poll(lambda: _offline_ms(redis, "presence", "ivy"), what="ivy's leave OFFLINE")
    assert (await _json(session, server.make_url("/clients/hal")))["last_seen"] is None
    assert await redis.hgetall("online.last_seen") == {b"theirs": b"1"}
