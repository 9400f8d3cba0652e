"""Transitions to OFFLINE: the deadline sweeper and the keyspace listener.

Redis expires keys lazily and its ``expired`` events can come tens of seconds
late, or never while the listener is disconnected. So expiry is the sweeper's
alone: it polls the deadline index, which is timely, and it can wait when
deadlines passed only because Redis was unreachable. The listener adds prompt
OFFLINEs for keys deleted outright. Both run the same idempotent script, so
any number of them, on any number of servers, publish each OFFLINE once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio.client import Pipeline, PubSub

from .connection import KEYSPACE_FLAGS, Redis, deleted_channel, enable_keyspace_events, text
from .contract import is_valid_id
from .settings import Settings
from .supervise import Worker
from .transitions import Transitions

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.1
SWEEP_BATCH = 500
#: Clients per OFFLINE script call.
SCRIPT_BATCH = 100


class Sweeper:
    """Publishes OFFLINE for every client whose deadline has passed.

    After losing Redis it waits ``grace`` seconds (one heartbeat interval)
    once Redis answers again: clients that stayed connected could not be
    heartbeated meanwhile, and their next heartbeat refreshes them without
    any event. Those that left during the outage go OFFLINE after the grace.
    """

    def __init__(
        self, transitions: Transitions, grace: float, interval: float = SWEEP_INTERVAL
    ) -> None:
        self._transitions = transitions
        self._grace = grace
        self._interval = interval
        self._ran = False
        self.published = 0
        #: Seconds between the oldest overdue deadline and now, at the last pass.
        self.lag = 0.0

    async def run(self, worker: Worker) -> None:
        if self._ran:
            await self._transitions.due(0)  # Redis answers again
            worker.ok()
            await asyncio.sleep(self._grace)
        self._ran = True
        while True:
            due, published = await self.sweep_once()
            worker.ok()
            # A full batch that published means more are due: go on at once.
            if due < SWEEP_BATCH or not published:
                await asyncio.sleep(self._interval)

    async def sweep_once(self) -> tuple[int, int]:
        """One pass; returns how many clients were due and how many OFFLINEs it published."""
        now, due = await self._transitions.due(SWEEP_BATCH)
        self.lag = (now - due[0][1]) / 1000 if due else 0.0
        published = await offline(self._transitions, [c for c, _ in due]) if due else 0
        self.published += published
        return len(due), published


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
        subscription. Only deadlines still ahead count: a key missing before
        its deadline was deleted; one past it is the sweeper's.
        """
        published, cursor = 0, 0
        seconds, micros = await self._redis.time()
        now = seconds * 1000 + micros // 1000
        while True:
            cursor, found = await self._redis.zscan(
                self._settings.keys.deadlines, cursor, count=SWEEP_BATCH
            )
            clients = [
                text(c)
                for c, deadline in found
                if isinstance(c, bytes | str) and float(deadline) > now
            ]
            if clients:
                published += await offline(self._transitions, clients)
            if cursor == 0:
                break
        if published:
            log.info("published %d OFFLINE for keys deleted while unsubscribed", published)
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
                message = await pubsub.get_message(timeout=1.0)
                clients: list[str] = []
                while message is not None:
                    if client := self._client_of(message):
                        clients.append(client)
                    if len(clients) >= SWEEP_BATCH:
                        break
                    message = await pubsub.get_message(timeout=0)
                if clients:
                    self.published += await offline(self._transitions, clients)
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


async def offline(transitions: Transitions, clients: list[str]) -> int:
    """Run the OFFLINE script for each client; returns how many were published."""

    def fill(pipe: Pipeline) -> None:
        for start in range(0, len(clients), SCRIPT_BATCH):
            transitions.offline(pipe, clients[start : start + SCRIPT_BATCH])

    published, failed, failure = 0, 0, ""
    for reply in await transitions.execute(fill):
        if isinstance(reply, Exception):
            failed, failure = failed + 1, str(reply)
            continue
        published += int(reply[0])
        if reply[1]:
            failed, failure = failed + int(reply[1]), text(reply[2])
    if failed:
        log.warning("%d OFFLINE check(s) failed in Redis: %s", failed, failure)
    return published
