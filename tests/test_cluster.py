"""Presence servers on a Redis Cluster of 3 primaries and 3 replicas.

The servers are given one node's URL; they find the cluster and spread
clients and rooms over the shards. Everything is checked from outside: SSE
streams, ``GET /clients``, and the keys and streams of the contract.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import aiohttp
from redis.crc import key_slot

from presence.shards import shard_of, shard_tags

from .servers import Spawn, events_of, health, listed, settled, start_server
from .support import (
    Follower,
    Redis,
    ServerProcess,
    entry_ms,
    follow,
    open_events,
    poll,
    truthy,
)
from .test_sentinel import contradictions
from .topology import SHARDS, Cluster

INTERVAL = 1.0
#: The slot of shard 0, on the first of the 3 primaries.
SHARD_0 = key_slot(shard_tags(SHARDS)[0].encode())


def tag_of(client: str) -> str:
    return shard_tags(SHARDS)[shard_of(client, SHARDS)]


def transitions(follower: Follower, client: str) -> list[str]:
    """The statuses of ``client`` in the events the follower got (no snapshots)."""
    return [
        e.data["status"]
        for e in follower.events
        if e.event == "presence" and e.data.get("client") == client
    ]


async def test_servers_on_a_cluster_see_everyone_exactly_once(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    servers = [await start_server(spawn, cluster.url, f"node-{i}", INTERVAL) for i in range(3)]
    watcher = await follow(session, events_of(servers[0], "watcher"))
    clients = [f"user-{i}" for i in range(24)]
    # The clients land on most shards, and so on every primary.
    assert len({tag_of(c) for c in clients}) >= 8
    followers = {
        c: await follow(session, events_of(servers[i % 3], c)) for i, c in enumerate(clients)
    }
    everyone = {*clients, "watcher"}
    await settled(tuple(servers), lambda s: listed(session, s), everyone, timeout=10, what="online")
    await poll(lambda: truthy(watcher.view() == set(clients)), what="the watcher's view")

    # Each client's key is on its own shard's slot, with its server as value.
    for i, c in enumerate(clients):
        assert await cluster_redis.get(f"{{{tag_of(c)}}}.online.clients.{c}") == (
            f"node-{i % 3}".encode()
        )
    # Half of them leave: each OFFLINE reaches the watcher once.
    leaving = clients[::2]
    for c in leaving:
        followers[c].close()
    staying = set(clients) - set(leaving)
    await settled(
        tuple(servers),
        lambda s: listed(session, s),
        {*staying, "watcher"},
        timeout=10,
        what="the leaves",
    )
    await poll(lambda: truthy(watcher.view() == staying), what="the watcher's view after")
    for c in clients:
        assert transitions(watcher, c) == (["ONLINE", "OFFLINE"] if c in leaving else ["ONLINE"])
    # The transitions are in the shards' own presence streams.
    for c in leaving:
        stream = await cluster_redis.xrange(f"{{{tag_of(c)}}}.presence")
        statuses = [f[b"status"] for _, f in stream if f[b"client"] == c.encode()]
        assert statuses == [b"ONLINE", b"OFFLINE"]
        # Last seen at that entry, in the shard's own last_seen, from any server.
        left = max(entry_ms(i) for i, f in stream if f[b"client"] == c.encode())
        async with session.get(f"{servers[1].url}/clients/{c}") as response:
            assert (await response.json())["last_seen"] == left
        assert await cluster_redis.zscore(f"{{{tag_of(c)}}}.online.last_seen", c) == left


async def test_a_resume_on_a_cluster_replays_every_shard_gaplessly(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    one = await start_server(spawn, cluster.url, "node-1", INTERVAL)
    two = await start_server(spawn, cluster.url, "node-2", INTERVAL)
    watcher = await open_events(session, events_of(one, "watcher"))
    first = await watcher.next()
    assert first.event == "snapshot"
    # One entry id per shard, shard 0 first.
    assert first.id is not None
    assert len(first.id.split(",")) == SHARDS
    early = [await follow(session, events_of(two, f"early-{i}")) for i in range(6)]
    last_id = first.id
    for _ in early:
        event = await watcher.until(lambda e: e.event == "presence")
        assert event.id is not None
        last_id = event.id
    watcher.close()
    # Away: some leave, some come.
    for f in early[:3]:
        f.close()
    late = [await follow(session, events_of(two, f"late-{i}")) for i in range(6)]
    expected = {f"early-{i}" for i in range(3, 6)} | {f"late-{i}" for i in range(6)}
    await settled((one, two), lambda s: listed(session, s), expected, timeout=10, what="away")

    resumed = await open_events(session, events_of(one, "watcher"), {"Last-Event-ID": last_id})
    missed = {(f"early-{i}", "OFFLINE") for i in range(3)} | {
        (f"late-{i}", "ONLINE") for i in range(6)
    }
    got = []
    for _ in missed:
        event = await resumed.next()
        assert event.event == "presence", "a resume within the streams got a snapshot"
        got.append((event.data["client"], event.data["status"]))
    # Each missed event once, none it had already.
    assert sorted(got) == sorted(missed), (got, last_id)
    resumed.close()
    for f in late + early[3:]:
        f.close()


async def test_rooms_on_a_cluster_join_update_and_leave_once(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    servers = [await start_server(spawn, cluster.url, f"node-{i}", INTERVAL) for i in range(3)]
    rooms = [f"room-{i}" for i in range(6)]
    watchers = {
        room: await follow(session, f"{events_of(servers[0], 'w-' + room)}?room={room}")
        for room in rooms
    }
    members = {}
    for i, (room, client) in enumerate(itertools.product(rooms, ["ann", "ben"])):
        data = json.dumps({"n": i})
        url = f"{events_of(servers[i % 3], client)}?room={room}&data={data}"
        members[room, client] = await follow(session, url)

    def room_view(follower: Follower, room: str) -> dict[str, object]:
        view: dict[str, object] = {}
        for e in follower.events:
            if e.event == "snapshot":
                view = {m["client"]: m.get("data") for m in e.data["rooms"][room]}
            elif e.event == "presence":
                if e.data["status"] == "OFFLINE":
                    view.pop(e.data["client"], None)
                else:
                    view[e.data["client"]] = e.data.get("data")
        return view

    async def members_of(room: str, expected: set[str]) -> None:
        await poll(
            lambda: truthy(set(room_view(watchers[room], room)) == expected),
            what=f"{room}'s members",
        )

    for room in rooms:
        await members_of(room, {"ann", "ben"})
    # A member's data changes: one UPDATE, through its room's shard.
    async with session.put(
        f"{servers[1].url}/rooms/room-3/clients/ann/data", json={"away": True}
    ) as response:
        assert response.status == 200, await response.text()
    await poll(
        lambda: truthy(room_view(watchers["room-3"], "room-3").get("ann") == {"away": True}),
        what="the update",
    )
    # The room's keys are all on its shard's slot.
    tag = shard_tags(SHARDS)[shard_of("room-3", SHARDS)]
    assert await cluster_redis.hexists(f"{{{tag}}}.room.{{room-3}}.members", "ann")
    # Ben leaves every room: one OFFLINE each, and he is offline globally.
    for room in rooms:
        members[room, "ben"].close()
    for room in rooms:
        await members_of(room, {"ann"})
    await settled(
        tuple(servers),
        lambda s: listed(session, s),
        {"ann", *(f"w-{r}" for r in rooms)},
        timeout=10,
        what="ben offline",
    )
    for room in rooms:
        statuses = Counter(
            e.data["status"]
            for e in watchers[room].events
            if e.event == "presence" and e.data["client"] == "ben"
        )
        assert statuses == Counter({"ONLINE": 1, "OFFLINE": 1}), (room, statuses)
        async with session.get(f"{servers[2].url}/rooms/{room}/clients/ben") as response:
            body = await response.json()
        assert (body["status"], type(body["last_seen"])) == ("OFFLINE", int), body


async def test_status_and_watch_read_every_shard(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    server = await start_server(spawn, cluster.url, "node-1", INTERVAL)
    clients = [f"c-{i}" for i in range(8)]
    followers = [await follow(session, events_of(server, c)) for c in clients]
    await settled((server,), lambda s: listed(session, s), set(clients), timeout=10, what="on")
    status = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "presence", "status", "--redis-url", cluster.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    assert "8 online: node-1 8" in status.stdout
    for c in clients:
        assert c in status.stdout
    for f in followers:
        f.close()


async def _churn(
    session: aiohttp.ClientSession,
    servers: list[ServerProcess],
    opened: list[str],
    stop: asyncio.Event,
) -> None:
    """Clients that come and go, on every server, until ``stop``; ``opened``
    gets each stream that had its start. (Not cancelled: a stream cancelled
    while it opens could stay open.)"""
    for n in itertools.count():
        if stop.is_set():
            return
        client = f"churn-{n % 5}"
        try:
            follower = await follow(session, events_of(servers[n % 2], client))
        except (AssertionError, aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(0.1)  # a 503 while a primary is down
            continue
        opened.append(client)
        follower.close()


@asynccontextmanager
async def _churning(
    session: aiohttp.ClientSession, servers: list[ServerProcess]
) -> AsyncIterator[list[str]]:
    """Clients come and go (``_churn``) while the block runs; the streams
    that had their start, as they come."""
    opened: list[str] = []
    stop = asyncio.Event()
    churn = asyncio.create_task(_churn(session, servers, opened, stop))
    try:
        yield opened
    finally:
        stop.set()
        await churn


async def _population(
    spawn: Spawn, cluster: Cluster, session: aiohttp.ClientSession, stable: list[str] | None = None
) -> tuple[list[ServerProcess], dict[str, Follower], list[str], list[Follower]]:
    """Two servers, a watcher on each, and ``stable`` clients (12 by default)
    spread over them, once everyone sees everyone."""
    servers = [await start_server(spawn, cluster.url, f"node-{i}", INTERVAL) for i in range(2)]
    watchers = {
        f"w-{i}": await follow(session, events_of(s, f"w-{i}")) for i, s in enumerate(servers)
    }
    stable = stable or [f"user-{i}" for i in range(12)]
    followers = [await follow(session, events_of(servers[i % 2], c)) for i, c in enumerate(stable)]
    await _converged(session, servers, watchers, {*stable, *watchers}, timeout=10)
    return servers, watchers, stable, followers


async def _converged(
    session: aiohttp.ClientSession,
    servers: list[ServerProcess],
    watchers: dict[str, Follower],
    truth: set[str],
    *,
    timeout: float,
) -> None:
    await settled(
        tuple(servers), lambda s: listed(session, s), truth, timeout=timeout, what="truth"
    )
    for name, watcher in watchers.items():
        expected = truth - {name}
        await poll(partial(_sees, watcher, expected), timeout=timeout, what=f"{name}'s view")


async def _has_seen(follower: Follower, client: str, statuses: list[str]) -> bool:
    return transitions(follower, client) == statuses


async def _sees(watcher: Follower, expected: set[str]) -> bool:
    return watcher.view() == expected


async def test_a_primary_killed_mid_churn_converges_everywhere(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    servers, watchers, stable, followers = await _population(spawn, cluster, session)
    truth = {*stable, *watchers}

    async with _churning(session, servers) as opened:
        await poll(lambda: truthy(len(opened) >= 10), what="churn under way")
        # The primary of shard 0's slot: a third of the shards go with it.
        victim = await asyncio.to_thread(cluster.kill_primary, SHARD_0)
    try:
        # Within two intervals of the promotion, and the churners' leave grace.
        await _converged(session, servers, watchers, truth, timeout=4 * INTERVAL + 6)
        await settled(tuple(servers), lambda s: health(session, s), 200, timeout=5, what="200")
        for name, watcher in watchers.items():
            assert not contradictions(watcher), (name, contradictions(watcher))
            # Nobody stable went OFFLINE, on the lost primary's shards or others.
            flapped = [c for c in stable if "OFFLINE" in transitions(watcher, c)]
            assert not flapped, (name, flapped, [s.output().splitlines()[-60:] for s in servers])
        for server in servers:
            assert server.process is not None
            assert server.process.poll() is None
            assert "Traceback" not in server.output()
    finally:
        await asyncio.to_thread(cluster.rejoin, victim)
    for f in followers:
        f.close()


async def test_a_shard_failed_over_loses_nothing_and_resets_nobody(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    """``CLUSTER FAILOVER``: the replica takes over once it has every write, so
    every transition is seen exactly once, and no stream is reset."""
    servers, watchers, stable, followers = await _population(spawn, cluster, session)
    truth = {*stable, *watchers}
    async with _churning(session, servers) as opened:
        await poll(lambda: truthy(len(opened) >= 10), what="churn under way")
        await asyncio.to_thread(cluster.fail_over, SHARD_0)
        count = len(opened)
        await poll(lambda: truthy(len(opened) >= count + 10), what="churn after the failover")
    await _converged(session, servers, watchers, truth, timeout=4 * INTERVAL + 6)
    for name, watcher in watchers.items():
        assert not contradictions(watcher), (name, contradictions(watcher))
        assert [e.event for e in watcher.events].count("snapshot") == 1, name
        for client in stable:
            if client != name:
                assert transitions(watcher, client) == ["ONLINE"], (name, client)
        # Each churned session: one ONLINE, then one OFFLINE, every one.
        for n in range(5):
            statuses = transitions(watcher, f"churn-{n}")
            assert statuses == ["ONLINE", "OFFLINE"] * (len(statuses) // 2), (name, n, statuses)
    for f in followers:
        f.close()


async def test_a_shard_resharded_under_load_loses_nothing(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    """Shard 0's slot moves to another primary a few keys at a time while
    clients come and go: scripts meeting it half moved get ``ASK`` or
    ``TRYAGAIN``, and are retried; nothing is lost or seen twice."""
    # Stable clients of shard 0 itself, and others.
    of_shard_0 = [c for c in (f"u-{i}" for i in range(200)) if tag_of(c) == shard_tags(SHARDS)[0]]
    servers, watchers, stable, followers = await _population(
        spawn, cluster, session, of_shard_0[:6] + [f"user-{i}" for i in range(6)]
    )
    truth = {*stable, *watchers}
    source = None
    try:
        async with _churning(session, servers) as opened:
            await poll(lambda: truthy(len(opened) >= 5), what="churn under way")
            source = await asyncio.to_thread(cluster.migrate, SHARD_0)
            count = len(opened)
            await poll(lambda: truthy(len(opened) >= count + 5), what="churn after the move")
        await _converged(session, servers, watchers, truth, timeout=4 * INTERVAL + 6)
        for name, watcher in watchers.items():
            assert not contradictions(watcher), (name, contradictions(watcher))
            assert [e.event for e in watcher.events].count("snapshot") == 1, name
            for client in stable:
                assert transitions(watcher, client) == ["ONLINE"], (name, client)
        for server in servers:
            output = server.output()
            assert "Traceback" not in output, output[output.find("Traceback") - 300 :][:3000]
    finally:
        if source is not None:  # as the other tests expect the slots
            await asyncio.to_thread(cluster.move_back, SHARD_0, source)
    for f in followers:
        f.close()


async def test_room_sessions_over_three_servers_come_and_go_exactly_once(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    """Each session, a client id of its own in one room on one of three
    servers: every room's watcher sees its ONLINE and its OFFLINE once, and
    so does a global watcher, whichever shards the room and the client are on."""
    servers = [await start_server(spawn, cluster.url, f"node-{i}", INTERVAL) for i in range(3)]
    rooms = ["red", "green", "blue"]
    watchers = {
        r: await follow(session, f"{events_of(servers[1], 'w-' + r)}?room={r}") for r in rooms
    }
    everyone = await follow(session, events_of(servers[2], "everyone"))
    sessions = [(f"s-{k}", rooms[k % 3], servers[k % 3]) for k in range(18)]
    for start in range(0, len(sessions), 6):
        batch = [
            await follow(session, f"{events_of(server, client)}?room={room}")
            for client, room, server in sessions[start : start + 6]
        ]
        for follower in batch:
            follower.close()
    truth = {"everyone", *(f"w-{r}" for r in rooms)}
    await settled(tuple(servers), lambda s: listed(session, s), truth, timeout=15, what="empty")
    for room in rooms:
        for client, in_room, _ in sessions:
            expected = ["ONLINE", "OFFLINE"] if in_room == room else []
            await poll(
                partial(_has_seen, watchers[room], client, expected), what=f"{client} in {room}"
            )
    for client, _, _ in sessions:
        assert transitions(everyone, client) == ["ONLINE", "OFFLINE"], client
    for follower in [*watchers.values(), everyone]:
        assert [e.event for e in follower.events].count("snapshot") == 1


async def test_a_namespace_with_braces_is_refused_on_a_cluster_in_one_line(
    cluster: Cluster, spawn: Spawn
) -> None:
    server = spawn("--redis-url", cluster.url, "--namespace", "{app}.")
    assert server.process is not None
    code = await asyncio.to_thread(server.process.wait, 30)
    output = server.output().strip()
    assert code == 1
    assert "the namespace must not hold { or }" in output.splitlines()[-1], output
    assert "Traceback" not in output


async def test_one_shard_on_a_cluster_keeps_room_members_online(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    """With one shard, a room heartbeat counts for its client too, as on one Redis."""
    server = spawn(
        "--redis-url", cluster.url, "--server-id", "node-1", "--shards", "1",
        "--heartbeat-interval", str(INTERVAL),
    )  # fmt: skip
    await server.wait_healthy()
    alice = await follow(session, f"{events_of(server, 'alice')}?room=lobby")
    await settled((server,), lambda s: listed(session, s), {"alice"}, timeout=10, what="alice")
    tag = shard_tags(1)[0]
    assert await cluster_redis.exists(f"{{{tag}}}.online.clients.alice")
    alice.close()


async def test_a_server_given_another_number_of_shards_is_refused_in_one_line(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn
) -> None:
    await start_server(spawn, cluster.url, "node-1", INTERVAL)
    assert await cluster_redis.get("shards") == b"12"
    other = spawn("--redis-url", cluster.url, "--server-id", "node-2", "--shards", "6")
    assert other.process is not None
    code = await asyncio.to_thread(other.process.wait, 30)
    output = other.output().strip()
    assert code == 1
    assert "use 12 shards (shards); start every server with --shards 12" in output.splitlines()[-1]
    assert "Traceback" not in output
