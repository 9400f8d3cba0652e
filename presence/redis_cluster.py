"""Redis Cluster: found at start, then one client that follows the cluster.

redis-py's ``RedisCluster`` discovers the nodes from any one of them and
follows ``MOVED``, ``ASK``, ``TRYAGAIN`` and failovers by itself. Presence
keeps every script call on one slot (see ``shards``), and sends what a
standalone Redis gets as one pipeline as separate commands at once.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any, cast

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_client import Redis, leave_streams_unparsed, options
from .sentinel_url import is_sentinel_url
from .settings import Settings

_CONNECTION_CODE = (
    "redis/asyncio/connection.py",
    "asyncio/streams.py",
    "asyncio/selector_events.py",
)


def _closed_under_use(exc: Exception) -> RedisConnectionError | None:
    """A connection redis-py closed while a command used it: after a
    connection error, it disconnects a node's free connections while other
    tasks take them (a failover, a moved slot). It is a lost connection, which
    every caller retries, not a failure of presence."""
    if not isinstance(exc, (AttributeError, TypeError)) or "'NoneType' object" not in str(exc):
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    # Only where it happens: in redis-py's connection code, or asyncio's streams under it.
    if not frames or not any(part in frames[-1].filename for part in _CONNECTION_CODE):
        return None
    return RedisConnectionError(f"a connection closed under a command: {exc}")


def _unsent(exc: Exception) -> bool:
    """Whether a connection closed under a command failed at its write."""
    return "'writelines'" in str(exc) or "'write'" in str(exc)


_STREAM_READS = ("XREAD", "XREADGROUP")


def _upper(value: str | bytes) -> str:
    return (value.decode(errors="replace") if isinstance(value, bytes) else value).upper()


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
    #: Commands in flight at once (but blocking reads): redis-py refuses a
    #: command past 100 connections to one node, at once, and a burst of
    #: heartbeats or of requests is hundreds of commands.
    turns: asyncio.Semaphore | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._turn(*args, **kwargs)
        except Exception as exc:
            if (lost := _closed_under_use(exc)) is None:
                raise
            if not _unsent(exc):
                raise lost from None
        # Closed before it was written (redis-py reconnecting the cluster
        # under it): nothing reached Redis, so once more at once.
        try:
            return await self._turn(*args, **kwargs)
        except Exception as exc:
            if (lost := _closed_under_use(exc)) is not None:
                raise lost from None
            raise

    async def _turn(self, *args: Any, **kwargs: Any) -> Any:
        if self.turns is None or "BLOCK" in args or b"BLOCK" in args:
            return await super().execute_command(*args, **kwargs)
        async with self.turns:
            return await super().execute_command(*args, **kwargs)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        # A stream read's keys move (they follow STREAMS), so redis-py asks a
        # node with COMMAND GETKEYS before every read. Presence's reads are
        # of one slot each (a shard's streams): the first stream says which.
        if isinstance(command, (str, bytes)) and _upper(command) in _STREAM_READS:
            names = [_upper(a) if isinstance(a, (str, bytes)) else "" for a in args]
            if "STREAMS" in names:
                return self.keyslot(args[names.index("STREAMS") + 1])
        return await super()._determine_slot(command, *args)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused, as it says why
        return _Pipeline(self, transaction)  # type: ignore[abstract]


class PresenceCluster(_Cluster):
    """A cluster client, and a second one whose stream reads are left as
    Redis sends them (see ``unparsed_streams``); closed together."""

    unparsed: RedisCluster | None = None

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
    raw = cast(_Cluster, _Cluster.from_url(settings.redis_url, **kwargs))
    leave_streams_unparsed(raw)
    cluster.unparsed = raw
    cluster.turns = raw.turns = asyncio.Semaphore(IN_FLIGHT)
    try:
        await cluster.initialize()
        await raw.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    # Typed as the standalone client: the commands presence sends are the same.
    return cast(Redis, cluster)


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


#: Commands in flight at once in the whole process, besides blocking reads.
IN_FLIGHT = 48


class Calls:
    """A pipeline's calls, sent to a cluster as separate commands at once:
    each goes to the node of its keys, and redis-py refuses scripts in a
    cluster pipeline. As with ``execute(raise_on_error=False)``, a command's
    error is its result, but a lost connection, and a cluster that is down
    or a slot still moving, are raised: they are Redis away, not a call's
    own failure."""

    def __init__(self, redis: Redis, *, partial: bool = False) -> None:
        self._redis = redis
        self._partial = partial
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
        replies = await asyncio.gather(
            *(self._redis.execute_command(*c) for c in self._calls),  # type: ignore[no-untyped-call]
            return_exceptions=True,
        )
        lost = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, OSError)
        for reply in replies:
            if isinstance(reply, lost) and not self._partial:
                raise reply
            if raise_on_error and isinstance(reply, BaseException):
                raise reply
        return replies
