"""OFFLINE at once for online keys deleted outright, on a Redis Cluster.

Each primary publishes the events of its own keys only. redis-py's cluster
keyspace notifications subscribe to every primary and follow failovers and
new primaries; what they cannot do is set ``notify-keyspace-events`` on a
primary that was a replica a moment ago (configuration is not replicated),
so every primary's setting is checked again whenever the primaries change.
A key deleted while a primary was not listened to is found by reconciling
every shard, as the standalone listener does.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from ..contract import Keys, is_valid_id
from ..entries import text
from ..redis_client import BLOCK_MS, Redis
from ..supervise import Worker
from .keyspace import KEYSPACE_FLAGS, reconcile, wanted_flags
from .scripts import Transitions
from .sweeper import SWEEP_BATCH, offline

log = logging.getLogger(__name__)


class ClusterKeyspaceListener:
    """Turns ``del`` events of any shard's online keys into that shard's OFFLINE."""

    def __init__(self, redis: Redis, shards: Sequence[tuple[Keys, Transitions]]) -> None:
        if not isinstance(redis, RedisCluster):
            raise TypeError("a cluster listener needs a cluster client")
        self._cluster: RedisCluster = redis
        self._shards: list[tuple[Keys, Transitions]] = list(shards)
        self._by_prefix: dict[str, Transitions] = {k.online_prefix: t for k, t in shards}
        self._primaries: frozenset[str] = frozenset()
        self.published: int = 0
        #: Whether every primary publishes the events; None until checked.
        self.events: bool | None = None

    async def start(self) -> None:
        await self._follow_primaries()

    async def run(self, worker: Worker) -> None:
        notes = self._cluster.keyspace_notifications()
        try:
            await notes.subscribe_keyevent("del")
            await self._reconcile()  # what was deleted before the subscription
            worker.ok()
            while not worker.stopping:
                await self._follow_primaries()
                found: dict[Transitions, list[str]] = defaultdict(list)
                note = await notes.get_message(timeout=BLOCK_MS / 1000)
                count = 0
                while note is not None and count < SWEEP_BATCH:
                    if (routed := self._route(note.key)) is not None:
                        found[routed[0]].append(routed[1])
                        count += 1
                    note = await notes.get_message(timeout=0)
                for transitions, clients in found.items():
                    self.published += await offline(transitions, clients, deleted=True)
                worker.ok()
        finally:
            await notes.aclose()  # type: ignore[no-untyped-call]

    def _route(self, key: str) -> tuple[Transitions, str] | None:
        """The shard and client of an online key; None for any other key."""
        for prefix, transitions in self._by_prefix.items():
            if key.startswith(prefix):
                client = key[len(prefix) :]
                return (transitions, client) if is_valid_id(client) else None
        return None

    async def _follow_primaries(self) -> None:
        """Set the events on every primary, again whenever the primaries change;
        then reconcile, since a new primary published nothing before."""
        primaries = frozenset(node.name for node in self._cluster.get_primaries())
        if primaries == self._primaries:
            return
        changed = bool(self._primaries)
        self._primaries = primaries
        events = True
        for node in self._cluster.get_primaries():
            events = await _enable(self._cluster, node) and events
        if events != self.events and not events:
            log.warning(
                "a cluster primary publishes no keyspace events and refuses CONFIG SET: "
                "a deleted key goes OFFLINE at its deadline instead of at once; set "
                "notify-keyspace-events to include %r on every node to fix it",
                KEYSPACE_FLAGS,
            )
        self.events = events
        if changed:
            await self._reconcile()

    async def _reconcile(self) -> None:
        for keys, transitions in self._shards:
            self.published += await reconcile(cast(Redis, self._cluster), keys, transitions)


async def _enable(cluster: RedisCluster, node: object) -> bool:
    try:
        reply = await cluster.config_get("notify-keyspace-events", target_nodes=node)
        wanted = wanted_flags(text(next(iter(reply.values()), b"") or b""))
        if wanted is None:
            return True
        await cluster.config_set("notify-keyspace-events", wanted, target_nodes=node)
    except ResponseError as exc:
        log.debug("CONFIG on a cluster node refused: %s", exc)
        return False
    log.info("set notify-keyspace-events to %r on %s", wanted, getattr(node, "name", node))
    return True
