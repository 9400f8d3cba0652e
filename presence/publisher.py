"""Heartbeats out: one pipelined XADD batch per tick for this process's clients.

A client held for the first time is heartbeated at once, in a batch of its own,
so it comes online without waiting for the next tick. Each server's ticks run
at a random phase, so servers started together spread their batches.
"""

from __future__ import annotations

import asyncio
import logging
import random

from .connection import Redis
from .local import LocalState
from .settings import Settings
from .supervise import Worker

log = logging.getLogger(__name__)


class HeartbeatPublisher:
    def __init__(self, redis: Redis, settings: Settings, local: LocalState) -> None:
        self._redis = redis
        self._local = local
        self._stream = settings.keys.heartbeat
        self._server = settings.server_id
        self._maxlen = settings.heartbeat_maxlen
        self._interval = settings.heartbeat_interval
        self.published = 0
        self._ran = False

    async def run(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        # A random phase: servers started together do not tick together. After
        # a failure, at once: Redis may have lost every key while it was away.
        phase = 0.0 if self._ran else random.uniform(0, self._interval)
        self._ran = True
        next_tick = loop.time() + phase
        while True:
            if loop.time() >= next_tick:
                next_tick = loop.time() + self._interval
                self._local.prune()
                batch = list({*self._local.take_fresh(), *self._local.clients})
            else:
                batch = self._local.take_fresh()
            if batch:
                await self.publish(batch)
            worker.ok()
            try:
                async with asyncio.timeout(max(0.0, next_tick - loop.time())):
                    await self._local.wake.wait()
            except TimeoutError:
                pass

    async def publish(self, clients: list[str]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for client in clients:
            pipe.xadd(
                self._stream,
                {"client": client, "server": self._server},
                maxlen=self._maxlen,
                approximate=True,
            )
        await pipe.execute()
        self.published += len(clients)
