"""Opening Redis: a real server from a URL, or an in-process one for ``memory://``.

Also the one client whose stream reads are left as Redis sends them
(``entries`` parses them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    DataError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)

from .errors import RedisMisconfigured, RedisUnavailable
from .sentinel_url import is_sentinel_url, parse_sentinel_url
from .settings import Settings

log = logging.getLogger(__name__)

#: Blocking reads (XREAD BLOCK, pub/sub waits) stay well below this.
SOCKET_TIMEOUT = 5.0
#: Short enough that a stopping loop ends its read quickly by itself.
BLOCK_MS = 250

Redis = aioredis.Redis
#: What a failing Redis raises: redis-py's cluster client raises a slot no
#: node serves (mid-failover) as an error of its own, not a ``RedisError``.
REDIS_FAILURES = (RedisError, SlotNotCoveredError, OSError)


def options() -> dict[str, Any]:
    """How every connection to a real Redis is made."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "health_check_interval": 30,
        # One immediate retry replaces a pooled connection that died (Redis
        # restarted); anything longer is the workers' own backoff, which logs
        # and reports it, instead of commands hanging in redis-py's retries.
        "retry": Retry(NoBackoff(), 1),
    }


def open_redis(settings: Settings) -> Redis:
    """A client for ``settings.redis_url``; nothing is sent until first use."""
    if settings.in_memory:
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    if is_sentinel_url(settings.redis_url):
        return _primary(settings.redis_url, options())
    extra: dict[str, Any] = {}
    if settings.redis_url.startswith("redis://"):  # TLS and sockets keep their own
        extra["connection_class"] = PackedConnection
    return aioredis.from_url(settings.redis_url, **options(), **extra)


class PackedConnection(aioredis.Connection):
    """Commands packed by hiredis. redis-py's asyncio client packs each
    argument in Python: for a heartbeat call, whose every key is an argument,
    that cost more than everything else the consumer does with a heartbeat."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return [_packed(args)]

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join(_packed(tuple(c)) for c in commands)]


def _packed(args: tuple[Any, ...]) -> bytes:
    first = args[0]
    if isinstance(first, str | bytes) and len(first.split()) > 1:  # "CONFIG GET"
        args = (*first.split(), *args[1:])
    try:
        packed: bytes = hiredis.pack_command(args)
    except TypeError as exc:
        raise DataError(str(exc)) from None
    return packed


def _primary(url: str, options: dict[str, Any]) -> Redis:
    """A client of the primary the sentinels name: each new connection asks
    them where it is, so a failover moves every connection that reconnects."""
    target = parse_sentinel_url(url)
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "password": target.sentinel_password,
        },
    )
    primary: Redis = sentinels.master_for(
        target.service,
        connection_pool_class=_PrimaryPool,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        **options,
    )
    return primary


async def wait_for_redis(redis: Redis, settings: Settings) -> None:
    """PING until Redis answers; raise ``RedisUnavailable`` after the last retry."""
    delay = 0.2
    for attempt in range(1, settings.connect_retries + 1):
        try:
            await redis.ping()
            return
        except (AuthenticationError, ResponseError) as exc:
            # Wrong password, unknown user, missing permission: retrying cannot help.
            raise RedisMisconfigured(
                f"Redis at {settings.masked_redis_url} refused the connection: {exc}"
            ) from None
        except (RedisError, OSError) as exc:
            if attempt == settings.connect_retries:
                raise RedisUnavailable(
                    f"cannot reach Redis at {settings.masked_redis_url} "
                    f"after {attempt} attempts: {exc}"
                ) from None
            log.warning(
                "Redis at %s not reachable (attempt %d of %d): %s; retrying in %.1fs",
                settings.masked_redis_url,
                attempt,
                settings.connect_retries,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


MIN_VERSION = (6, 2)


def version_of(redis_version: str) -> tuple[int, ...]:
    """``INFO``'s ``redis_version`` ("7.0.15") as (major, minor)."""
    return tuple(int(p) for p in redis_version.split(".")[:2] if p.isdigit())


async def check_version(redis: Redis, settings: Settings) -> None:
    """Raise ``RedisMisconfigured`` on a Redis older than 6.2 (the scripts need
    ZADD GT, XPENDING IDLE and exclusive XRANGE ranges)."""
    if settings.in_memory:
        return
    info = await redis.info("server")
    version = str(info.get("redis_version", "0"))
    if version_of(version) < MIN_VERSION:
        raise RedisMisconfigured(f"presence needs Redis 6.2 or newer; this server runs {version}")


class _PrimaryPool(SentinelConnectionPool):
    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # closed: the sentinels' connections too
            await self.sentinel_manager.aclose()


_STREAM_READS = ("XRANGE", "XREVRANGE", "XREAD", "XREADGROUP")


def unparsed_streams(redis: Redis) -> Redis:
    """A client on ``redis``'s connections whose stream reads return Redis's reply as is.

    redis-py turns the fields of every entry into a dict; on the paths a
    burst goes through, that costs more than everything done with them.
    """
    cluster = getattr(redis, "unparsed", None)
    if cluster is not None:
        return cast(Redis, cluster)
    # A client given a pool shares its connections and retry policy, and
    # leaves closing them to the pool's owner.
    raw = aioredis.Redis(connection_pool=redis.connection_pool)
    leave_streams_unparsed(raw)
    return raw


def leave_streams_unparsed(client: Any) -> None:
    """Make ``client``'s stream reads return Redis's reply as is."""
    for command in _STREAM_READS:
        client.set_response_callback(command, _as_sent)


def _as_sent(response: Any, **_options: Any) -> Any:
    return response


def database(redis: Redis) -> int:
    if not hasattr(redis, "connection_pool"):
        return 0  # a cluster has database 0 alone
    return int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)
