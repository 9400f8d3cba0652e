"""End to end: ``python -m presence serve`` processes, a real redis-server, real SSE clients."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable

import aiohttp
import pytest

from .support import (
    Redis,
    RedisServer,
    ServerProcess,
    at,
    entry_ms,
    exists,
    metric,
    open_events,
    poll,
)

Spawn = Callable[..., ServerProcess]
INTERVAL = 0.4
TTL_MS = 600


async def started(spawn: Spawn, *args: str) -> ServerProcess:
    server = spawn(*args)
    await server.wait_healthy()
    return server


def real_redis_args(redis_server: RedisServer, server_id: str) -> list[str]:
    return [
        "--redis-url", redis_server.url,
        "--server-id", server_id,
        "--heartbeat-interval", str(INTERVAL),
        "--keepalive-interval", "1",
    ]  # fmt: skip


async def sessions(redis: Redis) -> list[tuple[str, str, int]]:
    return [
        (f[b"client"].decode(), f[b"status"].decode(), entry_ms(i))
        for i, f in await redis.xrange("presence")
    ]


async def test_two_clients_see_each_other_online_then_offline(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    server = await started(spawn, *real_redis_args(redis_server, "e2e-1"))
    alice = await open_events(session, f"{server.url}/clients/alice/events")
    assert (await alice.next()).data == {"clients": []}
    await poll(lambda: exists(redis, "online.clients.alice"), what="alice ONLINE")
    bob = await open_events(session, f"{server.url}/clients/bob/events")
    assert (await bob.next()).data == {"clients": [{"client": "alice", "server": "e2e-1"}]}
    joined = await alice.next()
    assert (joined.event, joined.data) == (
        "presence",
        {"client": "bob", "status": "ONLINE", "server": "e2e-1"},
    )
    bob.close()
    left = await alice.until(lambda e: e.data["status"] == "OFFLINE", timeout=5)
    assert left.data == {"client": "bob", "status": "OFFLINE", "server": "e2e-1", "at": at(left)}
    alice.close()
    await poll(lambda: _statuses_for(redis, "alice", 2), timeout=5, what="alice OFFLINE")
    # Exactly one ONLINE and one OFFLINE per session.
    assert [(c, s) for c, s, _ in await sessions(redis)] == [
        ("alice", "ONLINE"),
        ("bob", "ONLINE"),
        ("bob", "OFFLINE"),
        ("alice", "OFFLINE"),
    ]


async def test_external_heartbeats_make_a_client_online_then_offline_on_time(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    server = await started(spawn, *real_redis_args(redis_server, "e2e-1"))
    watcher = await open_events(session, f"{server.url}/clients/watcher/events")
    await watcher.next()
    for _ in range(4):  # an external platform heartbeats "ext" for a while
        last = await redis.xadd("heartbeat", {"client": "ext", "server": "node-7"})
        await poll(lambda: exists(redis, "online.clients.ext"), what="ext applied")
    online = await watcher.next()
    assert online.data == {"client": "ext", "status": "ONLINE", "server": "node-7"}
    offline = await watcher.next(timeout=5)
    assert offline.id is not None
    left = {"client": "ext", "status": "OFFLINE", "server": "node-7", "at": at(offline)}
    assert offline.data == left
    # Redis's own clock on both ends: the OFFLINE entry is due TTL after the last heartbeat.
    assert entry_ms(offline.id) - entry_ms(last) <= TTL_MS + 250
    assert [(c, s) for c, s, _ in await sessions(redis) if c == "ext"] == [
        ("ext", "ONLINE"),
        ("ext", "OFFLINE"),
    ]
    watcher.close()


async def test_many_sessions_give_exactly_one_online_and_one_offline_each(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    one = await started(spawn, *real_redis_args(redis_server, "e2e-1"))
    two = await started(spawn, *real_redis_args(redis_server, "e2e-2"))
    for round_ in range(3):
        streams = [
            await open_events(session, f"{server.url}/clients/u{n}/events")
            for n, server in enumerate([one, two] * 10)
        ]
        for stream in streams:
            await stream.next()
        await poll(lambda: _online_count(redis, 20), timeout=5, what=f"round {round_} online")
        for stream in streams:
            stream.close()
        await poll(lambda: _online_count(redis, 0), timeout=5, what=f"round {round_} offline")
    entries = await sessions(redis)
    for n in range(20):
        mine = [s for c, s, _ in entries if c == f"u{n}"]
        assert mine == ["ONLINE", "OFFLINE"] * 3, (f"u{n}", mine)


async def test_invalid_ids_get_400(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await started(spawn)  # embedded Redis
    for path in ("/clients/bad%20id/events", "/clients/" + "a" * 200, "/clients/%00/events"):
        async with session.get(f"{server.url}{path}") as response:
            assert response.status == 400
            assert "error" in await response.json()


async def test_embedded_default_runs_the_whole_pipeline(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    server = await started(spawn, "--heartbeat-interval", str(INTERVAL))
    alice = await open_events(session, f"{server.url}/clients/alice/events")
    await alice.next()
    bob = await open_events(session, f"{server.url}/clients/bob/events")
    await bob.next()
    assert (await alice.next()).data["status"] == "ONLINE"
    bob.close()
    left = await alice.next(timeout=5)
    assert left.data == {
        "client": "bob",
        "status": "OFFLINE",
        "server": f"{_hostname()}:{server.port}",
        "at": at(left),
    }
    alice.close()
    assert server.terminate() == 0
    assert "in-process Redis" in server.output()


async def test_sigterm_closes_open_streams_promptly_without_offline(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    args = real_redis_args(redis_server, "e2e-1")
    args[args.index("--heartbeat-interval") + 1] = "10"  # alice's key outlives the shutdown
    server = await started(spawn, *args)
    stream = await open_events(session, f"{server.url}/clients/alice/events")
    await stream.next()
    await poll(lambda: exists(redis, "online.clients.alice"), what="alice online")
    began = time.monotonic()
    assert server.terminate(timeout=10) == 0
    assert time.monotonic() - began < 5
    with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
        await stream.next()
    assert [s for _, s, _ in await sessions(redis)] == ["ONLINE"]
    assert await redis.get("online.clients.alice") == b"e2e-1"
    stream.close()


async def _online_count(redis: Redis, count: int) -> bool:
    return int(await redis.hlen("online.servers")) == count


async def _statuses_for(redis: Redis, client: str, count: int) -> bool:
    return len([c for c, _, _ in await sessions(redis) if c == client]) >= count


def _hostname() -> str:
    import socket

    return socket.gethostname()


async def test_a_connect_storm_brings_everyone_online_once_without_flapping(
    spawn: Spawn, redis_server: RedisServer, redis: Redis
) -> None:
    """500 clients at once: 500 x 499 join deliveries must not delay heartbeats past the TTL."""
    n = 500
    args = real_redis_args(redis_server, "e2e-1")
    args[args.index("--heartbeat-interval") + 1] = "1"  # TTL 1.5 s
    server = await started(spawn, *args)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        streams = await asyncio.gather(
            *(open_events(session, f"{server.url}/clients/s{i}/events") for i in range(n))
        )
        await poll(lambda: _online_count(redis, n), timeout=20, what=f"{n} online")
        # Several TTLs pass: a heartbeat late past its TTL would show up as an OFFLINE.
        await poll(lambda: _published(session, server, n * 4), timeout=20, what="4 ticks")
        assert [s for _, s, _ in await sessions(redis)] == ["ONLINE"] * n
        for stream in streams:
            stream.close()
        await poll(lambda: _online_count(redis, 0), timeout=20, what="all offline")
    entries = await sessions(redis)
    assert sorted(c for c, s, _ in entries if s == "OFFLINE") == sorted(f"s{i}" for i in range(n))
    assert len(entries) == 2 * n


async def _published(session: aiohttp.ClientSession, server: ServerProcess, count: float) -> bool:
    """Whether ``server`` has published ``count`` heartbeats (the stream itself
    is trimmed by age)."""
    return await metric(session, server.url, "presence_heartbeats_published_total") >= count


async def test_a_killed_server_takes_only_its_own_clients_offline_on_time(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    doomed = await started(spawn, *real_redis_args(redis_server, "doomed"))
    survivor = await started(spawn, *real_redis_args(redis_server, "survivor"))
    alice = await open_events(session, f"{doomed.url}/clients/alice/events")
    bob = await open_events(session, f"{survivor.url}/clients/bob/events")
    await alice.next()
    await bob.next()
    await poll(lambda: _online_count(redis, 2), what="both online")
    assert doomed.process is not None
    doomed.process.kill()  # SIGKILL: no shutdown, no goodbye
    gone = await bob.until(lambda e: e.data["status"] == "OFFLINE", timeout=5)
    assert gone.id is not None
    assert gone.data == {"client": "alice", "status": "OFFLINE", "server": "doomed", "at": at(gone)}
    last = max(entry_ms(i) for i, f in await redis.xrange("heartbeat") if f[b"client"] == b"alice")
    assert entry_ms(gone.id) - last <= TTL_MS + 250
    # bob, on the survivor, is untouched for several more TTLs.
    before = await metric(session, survivor.url, "presence_heartbeats_published_total")
    await poll(lambda: _published(session, survivor, before + 6), timeout=5, what="6 more ticks")
    assert sorted((c, s) for c, s, _ in await sessions(redis)) == [
        ("alice", "OFFLINE"),
        ("alice", "ONLINE"),
        ("bob", "ONLINE"),
    ]
    alice.close()
    bob.close()


async def test_json_logs_mask_the_redis_password(spawn: Spawn, redis_server: RedisServer) -> None:
    # The test Redis has no password; Redis accepts the AUTH with a warning.
    url = redis_server.url.replace("redis://", "redis://:hunter2@")
    server = spawn("--redis-url", url, "--log-format", "json")
    await server.wait_healthy()
    assert server.terminate() == 0
    output = server.output()
    records = [json.loads(line) for line in output.splitlines()]
    assert records[0]["level"] == "INFO"
    assert records[0]["message"].startswith("starting with Settings(")
    assert ":***@127.0.0.1" in records[0]["message"]
    assert "hunter2" not in output


async def test_three_servers_with_churn_publish_each_transition_exactly_once(
    spawn: Spawn, redis_server: RedisServer, redis: Redis
) -> None:
    """1,000 sessions over 3 servers: one ONLINE and one OFFLINE each, whatever races."""
    servers = []
    for n in range(3):
        args = real_redis_args(redis_server, f"node-{n}")
        args[args.index("--heartbeat-interval") + 1] = "1"  # TTL 1.5 s: margin for a busy box
        servers.append(await started(spawn, *args))
    rng = random.Random(7)
    slots = asyncio.Semaphore(100)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def visit(n: int) -> None:
            async with slots:
                server = servers[n % 3]
                stream = await open_events(session, f"{server.url}/clients/v{n}/events")
                await stream.next()
                await asyncio.sleep(rng.uniform(0, 1))  # a session of random length
                stream.close()

        await asyncio.gather(*(visit(n) for n in range(1000)))
    await poll(lambda: _online_count(redis, 0), timeout=20, what="everyone offline")
    by_client: dict[str, list[str]] = {}
    for client, status, _ in await sessions(redis):
        by_client.setdefault(client, []).append(status)
    assert len(by_client) == 1000
    wrong = {c: s for c, s in by_client.items() if s != ["ONLINE", "OFFLINE"]}
    assert not wrong
