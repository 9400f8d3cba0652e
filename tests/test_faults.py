"""Faults against real ``python -m presence serve`` processes and real redis-servers.

Redis killed and restarted under connected clients, a Redis that refuses
``CONFIG``, malformed heartbeats from outside.
"""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis

from .servers import Spawn, events_of, health, listed, settled, start_server
from .support import (
    Follower,
    Redis,
    RedisServer,
    StartRedis,
    entry_ms,
    follow,
    metric,
    poll,
    truthy,
)

INTERVAL = 1.0
TTL_MS = 1500
# State must converge within two intervals of Redis answering again; the extra
# second is for process scheduling on a busy machine, not for the product.
CONVERGE = 2 * INTERVAL + 1.0


async def statuses(redis: Redis, client: str) -> list[str]:
    entries = await redis.xrange("presence")
    return [f[b"status"].decode() for _, f in entries if f[b"client"] == client.encode()]


@pytest.mark.parametrize("data", ["kept", "lost"])
async def test_redis_killed_and_restarted_under_connected_clients(
    data: str, spawn: Spawn, start_redis: StartRedis, session: aiohttp.ClientSession
) -> None:
    """Stays up through the outage, then converges within two intervals, flapping nobody."""
    own = start_redis()
    one = await start_server(spawn, own.url, "node-1")
    two = await start_server(spawn, own.url, "node-2")
    alice = await follow(session, events_of(one, "alice"))
    bob = await follow(session, events_of(two, "bob"))
    carol = await follow(session, events_of(one, "carol"))

    async def everyone_sees(expected: dict[Follower, set[str]]) -> bool:
        return all(f.view() == v for f, v in expected.items())

    await poll(
        lambda: everyone_sees({alice: {"bob", "carol"}, bob: {"alice", "carol"}}),
        what="everyone online",
    )
    if data == "kept":
        async with aioredis.from_url(own.url) as before:
            await before.save()
    redis: Redis = None
    try:
        own.stop()  # SIGKILL: nothing more is written
        await settled((one, two), lambda s: health(session, s), 503, timeout=10, what="503")
        async with session.get(f"{two.url}/clients/dave/events") as refused:
            assert refused.status == 503
            assert "Redis" in (await refused.json())["error"]
        carol.close()  # leaves during the outage
        # Keep-alives go on; the outage outlasts the TTL, so keys expire meanwhile.
        pings = alice.comments, bob.comments
        await poll(
            lambda: truthy(alice.comments >= pings[0] + 8 and bob.comments >= pings[1] + 8),
            what="keep-alives during the outage",
        )
        assert not alice.ended
        assert not bob.ended
        own.start()
        redis = aioredis.from_url(own.url)
        await settled(
            (one, two),
            lambda s: listed(session, s),
            {"alice", "bob"},
            timeout=CONVERGE,
            what="GET /clients converged",
        )
        await poll(
            lambda: everyone_sees({alice: {"bob"}, bob: {"alice"}}),
            timeout=CONVERGE,
            what="SSE views converged",
        )
        await settled((one, two), lambda s: health(session, s), 200, timeout=CONVERGE, what="200")
        if data == "kept":
            # The reader went on from its position: carol's OFFLINE came as an event.
            assert alice.about("carol") == ["ONLINE", "OFFLINE"]
            assert [e.event for e in alice.events].count("snapshot") == 1
            assert await statuses(redis, "carol") == ["ONLINE", "OFFLINE"]
        else:
            # The stream was lost: a fresh snapshot, marked as a reset.
            assert any(e.event == "snapshot" and e.data.get("reset") for e in alice.events)
        # Those who stayed were never flapped, in the stream or on the wire.
        assert await statuses(redis, "alice") == ["ONLINE"]
        assert await statuses(redis, "bob") == ["ONLINE"]
        assert "OFFLINE" not in alice.about("bob") + bob.about("alice")
    finally:
        if redis is not None:
            await redis.aclose()
        for follower in (alice, bob):
            follower.close()
    for server in (one, two):
        output = server.output()
        assert output.count("Redis unreachable") == 1, output
        assert output.count("Redis reachable again") == 1, output


async def test_redis_refusing_config_still_publishes_offline_through_the_sweeper(
    spawn: Spawn, start_redis: StartRedis, session: aiohttp.ClientSession
) -> None:
    managed = start_redis("--rename-command", "CONFIG", "")
    server = await start_server(spawn, managed.url, "node-1")
    output = server.output().splitlines()
    warnings = [line for line in output if "WARNING" in line and "keyspace" in line]
    assert len(warnings) == 1, warnings
    assert "notify-keyspace-events" in warnings[0]
    assert await metric(session, server.url, "presence_keyspace_events") == 0
    alice = await follow(session, events_of(server, "alice"))
    bob = await follow(session, events_of(server, "bob"))
    await poll(lambda: truthy(alice.view() == {"bob"}), what="bob ONLINE")
    bob.close()
    await poll(lambda: truthy(alice.about("bob") == ["ONLINE", "OFFLINE"]), what="bob OFFLINE")
    redis: Redis = aioredis.from_url(managed.url)
    try:
        heartbeats = await redis.xrange("heartbeat")
        last = max(entry_ms(i) for i, f in heartbeats if f[b"client"] == b"bob")
        offline = next(e for e in alice.events if e.data.get("status") == "OFFLINE")
        assert offline.id is not None
        assert entry_ms(offline.id) - last <= TTL_MS + 250
    finally:
        await redis.aclose()
        alice.close()


async def test_malformed_heartbeats_among_valid_ones_are_skipped_and_counted(
    spawn: Spawn,
    redis_server: RedisServer,
    redis: Redis,
    session: aiohttp.ClientSession,
) -> None:
    server = await start_server(spawn, redis_server.url, "node-1")
    watcher = await follow(session, events_of(server, "watcher"))
    bad: list[dict[str, bytes | str]] = [
        {"client": "no-server"},
        {"server": "no-client"},
        {"client": "bad id", "server": "ext"},
        {"client": "x" * 129, "server": "ext"},
        {"client": b"\xff\xfe", "server": "ext"},
        {"client": "ok-ish", "server": "a/b"},
        {"nonsense": "1"},
    ]
    pipe = redis.pipeline(transaction=False)
    for n in range(30):
        pipe.xadd("heartbeat", bad[n % len(bad)])
        pipe.xadd("heartbeat", {"client": f"valid-{n}", "server": "ext", "extra": "ignored"})
    await pipe.execute()
    expected = {f"valid-{n}" for n in range(30)}
    await poll(lambda: truthy(watcher.view() == expected), what="every valid client ONLINE")
    assert await metric(session, server.url, "presence_heartbeats_malformed_total") == 30
    assert await health(session, server) == 200
    assert await listed(session, server) == expected | {"watcher"}
    assert "malformed heartbeat" in server.output()
    keys = {k.decode() for k in await redis.keys("online.clients.*")}
    assert keys == {f"online.clients.{c}" for c in expected | {"watcher"}}
    watcher.close()
