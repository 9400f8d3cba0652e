"""The deployment under check: the client presence would open, its mode and
its primaries.

It is opened exactly as a server opens it (``open_redis``, ``cluster_of``),
but tried once: a doctor reports an unreachable Redis instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError

from ..errors import ConfigError, RedisMisconfigured, RedisUnavailable
from ..redis_client import REDIS_FAILURES, Redis, database, open_redis, wait_for_redis
from ..redis_cluster import cluster_of
from ..sentinel_url import is_sentinel_url
from ..settings import Settings

Mode = Literal["standalone", "cluster", "sentinel"]


@dataclass(frozen=True, slots=True)
class Target:
    redis: Redis
    mode: Mode
    settings: Settings
    #: Each shard's settings, shard 0 first: one, unless Redis is a cluster.
    shards: list[Settings]

    @property
    def cluster(self) -> RedisCluster | None:
        return self.redis if isinstance(self.redis, RedisCluster) else None

    @property
    def db(self) -> int:
        return database(self.redis)

    def primaries(self) -> list[str]:
        """The primaries' names (``host:port``); one Redis is ``redis``."""
        if self.cluster is None:
            return ["redis"]
        return sorted(node.name for node in self.cluster.get_primaries())

    async def on(self, node: str, *args: Any) -> Any:
        """``args`` sent to the primary ``node``; a refusal is raised."""
        if self.cluster is None:
            return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]
        found = next((n for n in self.cluster.get_primaries() if n.name == node), None)
        if found is None:  # failed over meanwhile
            raise RedisConnectionError(f"{node} is no longer a primary")
        return await self.cluster.execute_command(*args, target_nodes=found)

    async def on_primaries(self, *args: Any) -> dict[str, Any]:
        """``args`` sent to every primary: its reply, or the ``ResponseError``
        it answered, by name. A lost connection is raised."""
        replies: dict[str, Any] = {}
        for node in self.primaries():
            try:
                replies[node] = await self.on(node, *args)
            except ResponseError as exc:
                replies[node] = exc
        return replies

    def where(self, nodes: Sequence[str]) -> str:
        """`` on <node> and N more`` on a cluster; nothing to say on one Redis."""
        if self.cluster is None or not nodes:
            return ""
        more = f" and {len(nodes) - 1} more" if len(nodes) > 1 else ""
        return f" on {nodes[0]}{more}"

    async def aclose(self) -> None:
        await self.redis.aclose()


async def connect(settings: Settings) -> Target:
    """Open and detect the deployment; ``RedisUnavailable`` or
    ``RedisMisconfigured`` when it cannot be reached or refuses the user."""
    if settings.in_memory:
        raise ConfigError(
            "pass --redis-url (or PRESENCE_REDIS_URL): the doctor checks a real Redis"
        )
    redis = open_redis(settings)
    try:
        await wait_for_redis(redis, settings.replace(connect_retries=1))
        cluster = await cluster_of(redis, settings)
    except ResponseError as exc:  # INFO refused: presence cannot start either
        await redis.aclose()
        raise RedisMisconfigured(f"Redis at {settings.masked_redis_url} refused: {exc}") from None
    except (*REDIS_FAILURES, RedisClusterException) as exc:
        await redis.aclose()
        raise RedisUnavailable(f"cannot read Redis at {settings.masked_redis_url}: {exc}") from None
    except BaseException:
        await redis.aclose()
        raise
    if cluster is None:
        mode: Mode = "sentinel" if is_sentinel_url(settings.redis_url) else "standalone"
        return Target(redis, mode, settings, [settings])
    await redis.aclose()
    try:
        shards = settings.sharded()
    except ConfigError:
        await cluster.aclose()
        raise
    return Target(cluster, "cluster", settings, shards)
