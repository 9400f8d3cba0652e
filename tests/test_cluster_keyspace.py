"""Deleted online keys on a real Redis Cluster: every primary's ``del`` events
heard, also after a shard's primary fails over to its replica, whose
``notify-keyspace-events`` nobody had set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest

from presence.shards import shard_tags
from presence.supervise import Worker
from presence.transitions.cluster_keyspace import ClusterKeyspaceListener
from presence.transitions.lua import CAME_ONLINE
from presence.transitions.scripts import Transitions

from .support import Redis, poll
from .topology import SHARDS, Cluster, client, shard_settings, tag_settings, wait_for


@pytest.fixture
async def listening(
    cluster: Cluster, cluster_redis: Redis
) -> AsyncIterator[ClusterKeyspaceListener]:
    for node in cluster.nodes:  # as a fresh cluster: no events configured
        with client(node.port) as direct:
            direct.config_set("notify-keyspace-events", "")
    shards = []
    for tag in shard_tags(SHARDS):
        settings = tag_settings(cluster, tag)
        shards.append((settings.keys, Transitions(cluster_redis, settings)))
    await shards[0][1].load()
    listener = ClusterKeyspaceListener(cluster_redis, shards)
    await listener.start()
    worker = Worker("cluster keyspace listener", grace=1.0)
    worker.start(listener.run)
    yield listener
    await worker.stop()


async def online(cluster: Cluster, redis: Redis, client_id: str) -> Transitions:
    t = Transitions(redis, shard_settings(cluster, client_id))
    line = f"{client_id} node-1 0".encode()
    [[code]] = await t.execute(lambda pipe: t.heartbeats(pipe, [line]))
    assert code == CAME_ONLINE
    return t


async def offline_published(redis: Redis, cluster: Cluster, client_id: str) -> bool:
    keys = shard_settings(cluster, client_id).keys
    entries = await redis.xrange(keys.presence)
    return any(
        f[b"client"] == client_id.encode() and f[b"status"] == b"OFFLINE" for _, f in entries
    )


async def test_a_deleted_key_goes_offline_at_once_on_every_primary(
    cluster: Cluster, cluster_redis: Redis, listening: ClusterKeyspaceListener
) -> None:
    assert listening.events is True
    clients = [f"gone-{i}" for i in range(12)]
    for c in clients:
        await online(cluster, cluster_redis, c)
    nodes = {
        cluster_redis.get_node_from_key(shard_settings(cluster, c).keys.online(c)).name
        for c in clients
    }
    assert len(nodes) == 3  # the deletions happen on every primary
    await asyncio.gather(
        *(cluster_redis.delete(shard_settings(cluster, c).keys.online(c)) for c in clients)
    )
    for c in clients:
        # Long before the 1.5 s TTL, and no sweeper runs here: the listener did it.
        await poll(partial(offline_published, cluster_redis, cluster, c), timeout=1.0, what=c)


async def test_after_a_failover_the_new_primary_is_set_up_and_heard(
    cluster: Cluster, cluster_redis: Redis, listening: ClusterKeyspaceListener
) -> None:
    await online(cluster, cluster_redis, "carol")
    key = shard_settings(cluster, "carol").keys.online("carol")
    old = cluster_redis.get_node_from_key(key)
    replica = next(
        n for n in cluster.nodes
        if n.port != old.port and _replica_of(n.port, cluster.node_id_of_port(old.port))
    )  # fmt: skip
    with client(replica.port) as direct:
        direct.execute_command("CLUSTER", "FAILOVER")
    wait_for(lambda: _role(replica.port) == "master", "the replica promoted")
    await poll(
        lambda: _served_by(cluster_redis, key, replica.port), timeout=10, what="client follows"
    )
    with client(replica.port) as direct:
        await poll(
            lambda: _truthy(
                "E" in direct.config_get("notify-keyspace-events")["notify-keyspace-events"]
            ),
            timeout=10,
            what="events set on the new primary",
        )
    await cluster_redis.delete(key)
    await poll(
        lambda: offline_published(cluster_redis, cluster, "carol"), timeout=2, what="OFFLINE"
    )


def _replica_of(port: int, primary_id: str) -> bool:
    with client(port) as direct:
        info = direct.info("replication")
    if info["role"] != "slave":
        return False
    with client(port) as direct:
        return any(n["node_id"] == primary_id for n in direct.cluster("nodes").values()) and str(
            direct.execute_command("CLUSTER", "MYID")
        ) in _replicas_of(port, primary_id)


def _replicas_of(port: int, primary_id: str) -> str:
    with client(port) as direct:
        return str(direct.execute_command("CLUSTER", "REPLICAS", primary_id))


def _role(port: int) -> str:
    with client(port) as direct:
        return str(direct.info("replication")["role"])


async def _served_by(redis: Redis, key: str, port: int) -> bool:
    await redis.get(key)  # a MOVED after the failover refreshes redis-py's map
    return bool(redis.get_node_from_key(key).port == port)


async def _truthy(value: bool) -> bool:
    return value
