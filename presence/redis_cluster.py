"""Redis Cluster: found at start, then one client that follows the cluster.

redis-py's ``RedisCluster`` discovers the nodes from any one of them and
follows ``MOVED``, ``ASK``, ``TRYAGAIN`` and failovers by itself. Presence
keeps every script call on one slot (see ``shards``), and sends what a
standalone Redis gets as one pipeline as separate commands at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_client import Redis, leave_streams_unparsed, options
from .sentinel_url import is_sentinel_url
from .settings import Settings


def _closed_under_use(exc: Exception) -> RedisConnectionError | None:
    """A connection redis-py closed while a command used it: after a
    connection error, it disconnects a node's free connections while other
    tasks take them (a failover, a moved slot). It is a lost connection, which
    every caller retries, not a failure of presence."""
    if isinstance(exc, (AttributeError, TypeError)) and "'NoneType' object" in str(exc):
        return RedisConnectionError(f"a connection closed under a command: {exc}")
    return None


class _Pipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except Exception as exc:
            if (lost := _closed_under_use(exc)) is not None:
                raise lost from None
            raise


class _Cluster(RedisCluster):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except Exception as exc:
            if (lost := _closed_under_use(exc)) is not None:
                raise lost from None
            raise

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused, as it says why
        return _Pipeline(self, transaction)  # type: ignore[abstract]


class PresenceCluster(_Cluster):
    """A cluster client, and a second one whose stream reads are left as
    Redis sends them (see ``unparsed_streams``); closed together."""

    unparsed: RedisCluster | None = None
    #: The turns ``Calls`` take, one set for the process's client.
    turns: asyncio.Semaphore | None = None

    async def aclose(self) -> None:
        if self.unparsed is not None:
            await self.unparsed.aclose()
        await super().aclose()


async def cluster_of(redis: Redis, settings: Settings) -> Redis | None:
    """A cluster client when ``redis`` (answering already) is a cluster node, else None."""
    if settings.in_memory or is_sentinel_url(settings.redis_url):
        return None
    info = await redis.info("cluster")
    if not int(info.get("cluster_enabled", 0)):
        return None
    kwargs = options()
    del kwargs["retry"]  # a cluster client retries MOVED and failovers its own way
    cluster = cast(PresenceCluster, PresenceCluster.from_url(settings.redis_url, **kwargs))
    raw = _Cluster.from_url(settings.redis_url, **kwargs)
    leave_streams_unparsed(raw)
    cluster.unparsed = raw
    cluster.turns = asyncio.Semaphore(IN_FLIGHT)
    await cluster.initialize()
    await raw.initialize()
    # Typed as the standalone client: the commands presence sends are the same.
    return cast(Redis, cluster)


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


#: Commands of ``Calls`` in flight at once, in the whole process: redis-py
#: refuses a command past 100 connections to one node, and a burst of
#: heartbeats is hundreds of script calls.
IN_FLIGHT = 48


class Calls:
    """A pipeline's calls, sent to a cluster as separate commands at once:
    each goes to the node of its keys, and redis-py refuses scripts in a
    cluster pipeline. As with ``execute(raise_on_error=False)``, a command's
    error is its result, but a lost connection, and a cluster that is down
    or a slot still moving, are raised: they are Redis away, not a call's
    own failure."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._calls: list[tuple[Any, ...]] = []
        turns = getattr(redis, "turns", None)
        self._turns: asyncio.Semaphore = (
            turns if turns is not None else asyncio.Semaphore(IN_FLIGHT)
        )

    def evalsha(self, *args: Any) -> None:
        self._calls.append(("EVALSHA", *args))

    def execute_command(self, *args: Any) -> None:
        self._calls.append(args)

    def xack(self, stream: str, group: str, *ids: Any) -> None:
        self._calls.append(("XACK", stream, group, *ids))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        replies = await asyncio.gather(*map(self._call, self._calls), return_exceptions=True)
        lost = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, OSError)
        for reply in replies:
            if isinstance(reply, lost) or (raise_on_error and isinstance(reply, BaseException)):
                raise reply
        return replies

    async def _call(self, command: tuple[Any, ...]) -> Any:
        async with self._turns:
            return await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
