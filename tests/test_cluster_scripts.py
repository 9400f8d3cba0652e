"""The scripts on a real Redis Cluster: each shard's keys on one slot, every
call routed to the node that serves it, and the script cache refilled on
every primary after ``NOSCRIPT``."""

from __future__ import annotations

from functools import partial

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from presence import Settings
from presence.heartbeats.held import HeldClients
from presence.heartbeats.publisher import HeartbeatPublisher
from presence.redis_cluster import cluster_of
from presence.shards import Router, shard_of, shard_tags
from presence.supervise import Outage
from presence.transitions.lua import CAME_ONLINE, LEFT, REFRESHED
from presence.transitions.scripts import Transitions

from .support import Redis
from .topology import SHARDS, Cluster, client, shard_settings, tag_settings


async def test_a_standalone_url_of_a_cluster_node_is_found_to_be_a_cluster(
    cluster: Cluster,
) -> None:
    async with aioredis.from_url(cluster.url) as probe:
        found = await cluster_of(probe, Settings(redis_url=cluster.url))
    assert isinstance(found, RedisCluster)
    assert len(found.get_primaries()) == 3
    await found.aclose()


async def test_each_clients_calls_run_on_its_shards_node(
    cluster: Cluster, cluster_redis: Redis
) -> None:
    clients = [f"user-{i}" for i in range(24)]
    scripts = {c: Transitions(cluster_redis, shard_settings(cluster, c)) for c in clients}
    await next(iter(scripts.values())).load()  # SCRIPT LOAD goes to every primary

    for c, t in scripts.items():
        line = f"{c} node-1 0".encode()
        [[code]] = await t.execute(partial(t.heartbeats, lines=[line]))
        assert code == CAME_ONLINE
    # Each client's key, stream entry and index sit on the node of its shard's slot.
    for c in scripts:
        keys = shard_settings(cluster, c).keys
        node = cluster_redis.get_node_from_key(keys.presence)
        with client(node.port) as direct:
            assert direct.get(keys.online(c)) == "node-1"
            assert direct.zscore(keys.deadlines, c) is not None
            assert direct.xlen(keys.presence) >= 1
    spread = {
        cluster_redis.get_node_from_key(shard_settings(cluster, c).keys.presence).port
        for c in clients
    }
    assert len(spread) == 3


async def test_calls_of_several_shards_in_one_batch_each_reach_their_node(
    cluster: Cluster, cluster_redis: Redis
) -> None:
    clients = [f"batch-{i}" for i in range(12)]
    first = Transitions(cluster_redis, shard_settings(cluster, clients[0]))
    await first.load()
    every = [Transitions(cluster_redis, shard_settings(cluster, c)) for c in clients]

    def fill(pipe: object) -> None:
        for c, t in zip(clients, every, strict=True):
            t.heartbeats(pipe, [f"{c} node-1 0".encode()])  # type: ignore[arg-type]

    replies = await first.execute(fill)
    assert [r[0] for r in replies] == [CAME_ONLINE] * 12
    replies = await first.execute(fill)
    assert [r[0] for r in replies] == [REFRESHED] * 12

    def leave(pipe: object) -> None:
        for c, t in zip(clients, every, strict=True):
            t.leave(pipe, c, "node-1")  # type: ignore[arg-type]

    assert await first.execute(leave) == [LEFT] * 12


async def test_scripts_come_back_on_every_primary_after_noscript(
    cluster: Cluster, cluster_redis: Redis
) -> None:
    t = Transitions(cluster_redis, shard_settings(cluster, "alice"))
    await t.load()
    for node in cluster.primaries():  # as a failover does: an empty script cache
        with client(node.port) as direct:
            direct.script_flush()
    [[code]] = await t.execute(lambda pipe: t.heartbeats(pipe, [b"alice node-1 0"]))
    assert code == CAME_ONLINE
    _, online = await t.snapshot()
    assert [o.client for o in online] == ["alice"]


async def test_the_publisher_sends_each_heartbeat_to_its_shards_stream(
    cluster: Cluster, cluster_redis: Redis
) -> None:
    """A membership's heartbeat goes to its room's shard, and the client's own
    to the client's: sharded, a room's shard is seldom its member's."""
    tags = shard_tags(SHARDS)
    every = Router([Transitions(cluster_redis, tag_settings(cluster, t)) for t in tags])
    await every[0].load()
    held = HeldClients()
    for i in range(6):
        held.hold(f"user-{i}")
        held.hold(f"user-{i}", f"room-{i % 3}", '{"n":1}')
    settings = tag_settings(cluster, tags[0])
    publisher = HeartbeatPublisher(settings, held, every[0], Outage(), shards=every)
    await publisher.publish(held.heartbeated())
    assert publisher.published == 12
    found: dict[int, list[tuple[str, str]]] = {}
    for shard in range(SHARDS):
        stream = tag_settings(cluster, tags[shard]).keys.heartbeat
        entries = await cluster_redis.xrange(stream)
        found[shard] = [(f[b"client"].decode(), f.get(b"room", b"").decode()) for _, f in entries]
    for i in range(6):
        client_id, room = f"user-{i}", f"room-{i % 3}"
        assert (client_id, "") in found[shard_of(client_id, SHARDS)]
        assert (client_id, room) in found[shard_of(room, SHARDS)]
    assert sum(map(len, found.values())) == 12


async def test_a_membership_heartbeat_on_its_rooms_shard_counts_for_the_room_alone(
    cluster: Cluster, cluster_redis: Redis
) -> None:
    """Sharded, the client's global presence is its own shard's: the room's
    shard announces the member, and no second global presence of the client."""
    room = "lobby"
    client_id = next(
        c for c in ("alice", "bob", "carol") if shard_of(c, SHARDS) != shard_of(room, SHARDS)
    )
    room_shard = shard_tags(SHARDS)[shard_of(room, SHARDS)]
    settings = tag_settings(cluster, room_shard)
    t = Transitions(cluster_redis, settings, rooms_alone=True)
    await t.load()
    lines = [
        f"{client_id} node-1 0 lobby".encode(),
        f'{client_id} node-1 0 hall ?{{"s":1}}'.encode(),
    ]
    [codes] = await t.execute(partial(t.heartbeats, lines=lines))
    assert codes == [CAME_ONLINE, CAME_ONLINE]
    keys = settings.keys
    assert await cluster_redis.hget(keys.room(room).members, client_id) == b"node-1"
    assert await cluster_redis.hget(keys.room("hall").data, client_id) == b'{"s":1}'
    assert await cluster_redis.exists(keys.online(client_id)) == 0
    assert await cluster_redis.zscore(keys.deadlines, client_id) is None
    assert await cluster_redis.xlen(keys.presence) == 0
    [codes] = await t.execute(partial(t.heartbeats, lines=lines[:1]))
    assert codes == [REFRESHED]
