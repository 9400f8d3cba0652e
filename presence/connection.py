"""Opening Redis: a real server from a URL, or an in-process one for ``memory://``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .errors import RedisMisconfigured, RedisUnavailable
from .settings import Settings

log = logging.getLogger(__name__)

#: Blocking reads (XREAD BLOCK, pub/sub waits) stay well below this.
SOCKET_TIMEOUT = 5.0
BLOCK_MS = 1000
# Keyspace events for generic commands (del) and expiry, per key.
_KEYSPACE_FLAGS = "Kgx"

Redis = aioredis.Redis


def open_redis(settings: Settings) -> Redis:
    """A client for ``settings.redis_url``; nothing is sent until first use."""
    if settings.in_memory:
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    return aioredis.from_url(
        settings.redis_url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
    )


async def wait_for_redis(redis: Redis, settings: Settings) -> None:
    """PING until Redis answers; raise ``RedisUnavailable`` after the last retry."""
    delay = 0.2
    for attempt in range(1, settings.connect_retries + 1):
        try:
            await redis.ping()
            return
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


async def check_version(redis: Redis, settings: Settings) -> None:
    """Raise ``RedisMisconfigured`` on a Redis older than 6.2 (SET ... GET is needed)."""
    if settings.in_memory:
        return
    info = await redis.info("server")
    version = str(info.get("redis_version", "0"))
    found = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if found < MIN_VERSION:
        raise RedisMisconfigured(f"presence needs Redis 6.2 or newer; this server runs {version}")


async def enable_keyspace_events(redis: Redis, settings: Settings) -> None:
    """Make Redis publish ``del`` and ``expired`` keyspace events.

    Raises ``RedisMisconfigured`` when they are off and cannot be turned on.
    """
    if settings.in_memory:
        return  # fakeredis publishes del (never expired) without configuration
    try:
        reply = await redis.config_get("notify-keyspace-events")
    except ResponseError:
        # CONFIG is disabled (managed Redis): see whether the events come anyway.
        if await _keyspace_events_arrive(redis, settings):
            return
        raise RedisMisconfigured(
            f"Redis does not publish keyspace events and refuses CONFIG; set "
            f"notify-keyspace-events to include {_KEYSPACE_FLAGS!r} on the server"
        ) from None
    flags = text(next(iter(reply.values()), None) or b"")
    if _has_keyspace_flags(flags):
        return
    wanted = flags + "".join(f for f in _KEYSPACE_FLAGS if f not in flags)
    try:
        await redis.config_set("notify-keyspace-events", wanted)
    except ResponseError as exc:
        raise RedisMisconfigured(
            f"Redis refused CONFIG SET ({exc}); set notify-keyspace-events to "
            f"include {_KEYSPACE_FLAGS!r} on the server (currently {flags!r})"
        ) from None
    log.info("set notify-keyspace-events to %r", wanted)


async def _keyspace_events_arrive(redis: Redis, settings: Settings, wait: float = 2.0) -> bool:
    # "#" is not allowed in client ids, so no listener mistakes the probe for one.
    key = f"{settings.keys.online_prefix}#probe#{settings.server_id}"
    channel = f"__keyspace@{database(redis)}__:{key}"
    seen: set[bytes] = set()
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
        await redis.set(key, 1, px=1)
        await asyncio.sleep(0.005)
        await redis.exists(key)  # an access expires it at once: "expired"
        await redis.set(key, 1, px=1000)
        await redis.delete(key)  # "del"
        async with asyncio.timeout(wait):
            while not {b"expired", b"del"} <= seen:
                message = await pubsub.get_message(timeout=wait)
                if message is not None:
                    seen.add(message["data"])
    except TimeoutError:
        pass
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    log.info("keyspace events seen without CONFIG: %s", sorted(s.decode() for s in seen))
    return {b"expired", b"del"} <= seen


def _has_keyspace_flags(flags: str) -> bool:
    every = "A" in flags
    return "K" in flags and (every or "g" in flags) and (every or "x" in flags)


def text(value: bytes | str) -> str:
    """A reply value as text (replies are bytes unless decoded by the client)."""
    return value.decode() if isinstance(value, bytes) else value


StreamEntry = tuple[bytes, dict[bytes, bytes] | None]


def stream_entries(reply: Any) -> list[StreamEntry]:
    """Entries of an XREAD/XREADGROUP reply; fields are None for deleted entries."""
    if not reply:
        return []
    # RESP2 gives [[stream, entries], ...], RESP3 {stream: [entries]}.
    streams = reply.values() if isinstance(reply, dict) else [s[1] for s in reply]
    return [entry for entries in streams for entry in entries]


def database(redis: Redis) -> int:
    return int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)
