"""Opening Redis: a real server from a URL, or an in-process one for ``memory://``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from .errors import RedisMisconfigured, RedisUnavailable
from .settings import Settings

log = logging.getLogger(__name__)

#: Blocking reads (XREAD BLOCK, pub/sub waits) stay well below this.
SOCKET_TIMEOUT = 5.0
BLOCK_MS = 1000
# Keyspace events for generic commands (del) and expiry, per key.
#: Key-event notifications of generic commands: one channel per event type, so
#: a listener of ``del`` hears nothing of the ``expire`` every SET ... PX makes.
KEYSPACE_FLAGS = "Eg"

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
        # One immediate retry replaces a pooled connection that died (Redis
        # restarted); anything longer is the workers' own backoff, which logs
        # and reports it, instead of commands hanging in redis-py's retries.
        retry=Retry(NoBackoff(), 1),
    )


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


async def check_version(redis: Redis, settings: Settings) -> None:
    """Raise ``RedisMisconfigured`` on a Redis older than 6.2 (SET ... GET is needed)."""
    if settings.in_memory:
        return
    info = await redis.info("server")
    version = str(info.get("redis_version", "0"))
    found = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if found < MIN_VERSION:
        raise RedisMisconfigured(f"presence needs Redis 6.2 or newer; this server runs {version}")


async def enable_keyspace_events(redis: Redis, settings: Settings) -> bool:
    """Make Redis publish ``del`` keyspace events; False if it will not.

    Without them presence still works: the sweeper publishes every OFFLINE,
    a deleted key's at its deadline instead of at once.
    """
    if settings.in_memory:
        return True  # fakeredis publishes del without configuration
    try:
        reply = await redis.config_get("notify-keyspace-events")
    except ResponseError:
        # CONFIG is disabled (managed Redis): see whether the events come anyway.
        return await _keyspace_events_arrive(redis, settings)
    flags = text(next(iter(reply.values()), None) or b"")
    if _has_keyspace_flags(flags):
        return True
    wanted = flags + "".join(f for f in KEYSPACE_FLAGS if f not in flags)
    try:
        await redis.config_set("notify-keyspace-events", wanted)
    except ResponseError as exc:
        log.debug("CONFIG SET notify-keyspace-events refused: %s", exc)
        return False
    log.info("set notify-keyspace-events to %r", wanted)
    return True


async def _keyspace_events_arrive(redis: Redis, settings: Settings, wait: float = 2.0) -> bool:
    # "#" is not allowed in client ids, so no listener mistakes the probe for one.
    key = f"{settings.keys.online_prefix}#probe#{settings.server_id}"
    channel = deleted_channel(redis)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
        await redis.set(key, 1, px=1000)
        await redis.delete(key)
        async with asyncio.timeout(wait):
            while True:
                message = await pubsub.get_message(timeout=wait)
                if message is not None and message["data"] == key.encode():
                    break
        arrived = True
    except TimeoutError:
        arrived = False
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    log.info("keyspace events %s without CONFIG", "arrive" if arrived else "do not arrive")
    return arrived


def _has_keyspace_flags(flags: str) -> bool:
    return "E" in flags and ("g" in flags or "A" in flags)


def deleted_channel(redis: Redis) -> str:
    """The channel Redis announces each deleted key's name on."""
    return f"__keyevent@{database(redis)}__:del"


def text(value: bytes | str) -> str:
    """A reply value as text (replies are bytes unless decoded by the client)."""
    return value.decode() if isinstance(value, bytes) else value


#: An entry id and its fields as Redis sends them, ``[name, value, ...]``;
#: None for an entry deleted while pending.
StreamEntry = tuple[bytes, list[bytes] | None]
_STREAM_READS = ("XRANGE", "XREVRANGE", "XREAD", "XREADGROUP", "XAUTOCLAIM")


def unparsed_streams(redis: Redis) -> Redis:
    """A client on ``redis``'s connections whose stream reads return Redis's reply as is.

    redis-py turns the fields of every entry into a dict; on the paths a
    burst goes through, that costs more than everything done with them.
    """
    # A client given a pool shares its connections and retry policy, and
    # leaves closing them to the pool's owner.
    raw = aioredis.Redis(connection_pool=redis.connection_pool)
    for command in _STREAM_READS:
        raw.set_response_callback(command, _as_sent)
    return raw


def _as_sent(response: Any, **_options: Any) -> Any:
    return response


def stream_entries(reply: Any) -> list[StreamEntry]:
    """Entries of an unparsed XREAD/XREADGROUP reply."""
    if not reply:
        return []
    # RESP2 gives [[stream, entries], ...], RESP3 {stream: entries}.
    streams = reply.values() if isinstance(reply, dict) else [s[1] for s in reply]
    return [entry for entries in streams for entry in entries]


def field_map(fields: list[bytes] | None) -> dict[bytes, bytes]:
    """The fields of an unparsed entry by name (a repeated name: its last value)."""
    return dict(zip(fields[::2], fields[1::2], strict=False)) if fields else {}


def database(redis: Redis) -> int:
    return int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)
