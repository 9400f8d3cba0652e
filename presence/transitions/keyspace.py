"""OFFLINE at once for keys deleted outright: the keyspace listener.

It listens to ``del`` key events only (not ``expired``, which come late: the
sweeper owns expiry), and reconciles what it may have missed whenever it
(re)subscribes, including after redis-py reconnected it by itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ResponseError

from ..contract import Keys, is_valid_id
from ..entries import text
from ..redis_client import BLOCK_MS, Redis, database
from ..settings import Settings
from ..supervise import Worker
from .scripts import Transitions
from .sweeper import SWEEP_BATCH, offline

log = logging.getLogger(__name__)

#: Key-event notifications of generic commands: one channel per event type, so
#: a listener of ``del`` hears nothing of the ``expire`` every SET ... PX makes.
KEYSPACE_FLAGS = "Eg"


class KeyspaceListener:
    """Turns ``del`` events of online keys into OFFLINE."""

    def __init__(self, redis: Redis, settings: Settings, transitions: Transitions) -> None:
        self._redis = redis
        self._settings = settings
        self._transitions = transitions
        self._prefix = settings.keys.online_prefix.encode()
        self._channel = deleted_channel(redis)
        self._subscribed: PubSub | None = None
        self.published = 0
        #: Whether Redis publishes the events; None until the first subscribe.
        self.events: bool | None = None
        self._reconnected = False

    async def start(self) -> None:
        """Subscribe now, so that events from the moment start returns are seen."""
        self._subscribed = await self._subscribe()

    async def _subscribe(self) -> PubSub:
        await self._enable()
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            assert pubsub.connection is not None
            # redis-py may reconnect and resubscribe by itself, to a Redis that
            # restarted without our CONFIG SET: hear about it.
            pubsub.connection.register_connect_callback(self._on_reconnect)
            await self.reconcile()
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        return pubsub

    def _on_reconnect(self, connection: object) -> None:
        self._reconnected = True

    async def _enable(self) -> None:
        # On every (re)subscribe: a restarted Redis forgets a CONFIG SET.
        events = await enable_keyspace_events(self._redis, self._settings)
        if events != self.events and not events:
            log.warning(
                "Redis publishes no keyspace events and refuses CONFIG SET: a deleted "
                "key goes OFFLINE at its deadline, through the sweeper, instead of at "
                "once; set notify-keyspace-events to include %r on the server to fix it",
                KEYSPACE_FLAGS,
            )
        elif events != self.events and self.events is not None:
            log.info("Redis publishes keyspace events again")
        self.events = events

    async def reconcile(self) -> int:
        """OFFLINE for announced clients whose key was deleted while nobody listened.

        Runs once subscribed, so a deletion is caught either here or by the
        subscription.
        """
        published = await reconcile(self._redis, self._settings.keys, self._transitions)
        self.published += published
        return published

    async def run(self, worker: Worker) -> None:
        pubsub, self._subscribed = self._subscribed or await self._subscribe(), None
        try:
            worker.ok()
            while not worker.stopping:
                if self._reconnected:
                    self._reconnected = False
                    await self._enable()
                    await self.reconcile()
                message = await pubsub.get_message(timeout=BLOCK_MS / 1000)
                clients: list[str] = []
                while message is not None:
                    if client := self._client_of(message):
                        clients.append(client)
                    if len(clients) >= SWEEP_BATCH:
                        break
                    message = await pubsub.get_message(timeout=0)
                if clients:
                    self.published += await offline(self._transitions, clients, deleted=True)
                worker.ok()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _client_of(self, message: dict[str, Any]) -> str | None:
        key = message.get("data")
        if message.get("type") != "message" or not isinstance(key, bytes):
            return None
        if not key.startswith(self._prefix):
            return None  # any other key of the database
        try:
            client = key[len(self._prefix) :].decode()
        except UnicodeDecodeError:
            return None
        return client if is_valid_id(client) else None


async def reconcile(redis: Redis, keys: Keys, transitions: Transitions) -> int:
    """OFFLINE for announced clients whose online key is gone. Only deadlines
    still ahead count: a key missing before its deadline was deleted; one
    past it is the sweeper's."""
    published, cursor = 0, 0
    seconds, micros = await redis.time()
    now = seconds * 1000 + micros // 1000
    while True:
        cursor, found = await redis.zscan(keys.deadlines, cursor, count=SWEEP_BATCH)
        clients = [
            text(c) for c, deadline in found if isinstance(c, bytes | str) and float(deadline) > now
        ]
        if clients:
            published += await offline(transitions, clients, deleted=True)
        if cursor == 0:
            break
    if published:
        log.info("published %d OFFLINE for keys deleted while unsubscribed", published)
    return published


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
        return await keyspace_events_arrive(redis, settings)
    wanted = wanted_flags(text(next(iter(reply.values()), None) or b""))
    if wanted is None:
        return True
    try:
        await redis.config_set("notify-keyspace-events", wanted)
    except ResponseError as exc:
        log.debug("CONFIG SET notify-keyspace-events refused: %s", exc)
        return False
    log.info("set notify-keyspace-events to %r", wanted)
    return True


async def keyspace_events_arrive(redis: Redis, settings: Settings, wait: float = 2.0) -> bool:
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


def wanted_flags(flags: str) -> str | None:
    """``notify-keyspace-events`` with what presence needs added; None when
    ``flags`` have it already."""
    if has_keyspace_flags(flags):
        return None
    return flags + "".join(f for f in KEYSPACE_FLAGS if f not in flags)


def has_keyspace_flags(flags: str) -> bool:
    return "E" in flags and ("g" in flags or "A" in flags)


def deleted_channel(redis: Redis) -> str:
    """The channel Redis announces each deleted key's name on."""
    return f"__keyevent@{database(redis)}__:del"
