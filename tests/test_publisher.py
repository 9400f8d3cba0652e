"""The heartbeat publisher's shards, each on its own: one whose calls hang
(a primary paused by a failover) holds back no other's heartbeats, what comes
up for it meanwhile goes the moment its calls land, and its leaves wait for
them. With fake shards: only the publisher's scheduling is under test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from presence import Settings
from presence.heartbeats.held import HeldClients
from presence.heartbeats.publisher import HeartbeatPublisher
from presence.shards import Router, shard_of
from presence.supervise import Outage, Worker

from .support import poll, truthy

SHARDS = 2


class _Shard:
    """One shard's scripts, as far as the publisher calls them."""

    def __init__(self, index: int) -> None:
        self.index = index

    def publish(self, pipe: list[tuple[str, int, str]], server: str, lines: str, cap: int) -> None:
        pipe.append(("publish", self.index, lines))

    def leave(self, pipe: list[tuple[str, int, str]], client: str, server: str) -> None:
        pipe.append(("leave", self.index, client))


class _Redis:
    """Runs the calls ``fill`` queues; a paused shard's wait for ``resume``."""

    def __init__(self) -> None:
        self.done: list[tuple[str, int, str]] = []
        self.paused: set[int] = set()
        self.resume = asyncio.Event()

    async def execute(self, fill: Callable[[Any], None], **options: object) -> list[object]:
        calls: list[tuple[str, int, str]] = []
        fill(calls)
        if any(shard in self.paused for _, shard, _ in calls):
            await self.resume.wait()
        self.done += calls
        return [1] * len(calls)

    def beats(self, shard: int) -> int:
        return sum(1 for kind, s, _ in self.done if kind == "publish" and s == shard)


def _client_on(shard: int, taken: set[str]) -> str:
    n = 0
    while (name := f"c{n}") in taken or shard_of(name, SHARDS) != shard:
        n += 1
    return name


async def test_a_paused_shard_holds_back_no_other_and_catches_up_when_it_lands() -> None:
    settings = Settings(heartbeat_interval=0.2, leave_grace=0.05)
    held = HeldClients(leave_grace=0.05)
    redis = _Redis()
    shards: Any = Router([_Shard(0), _Shard(1)])
    publisher = HeartbeatPublisher(settings, held, redis, Outage(), shards=shards)  # type: ignore[arg-type]
    steady, paused = _client_on(0, set()), _client_on(1, set())
    late = _client_on(1, {paused})
    worker = Worker("heartbeats")
    held.hold(steady)
    held.hold(paused)
    worker.start(publisher.run)
    try:
        await poll(lambda: truthy(redis.beats(0) and redis.beats(1)), what="both shards beaten")
        redis.paused.add(1)
        redis.resume.clear()
        before = redis.beats(0)
        # Ticks go on for shard 0 while shard 1's call hangs ...
        await poll(lambda: truthy(redis.beats(0) >= before + 3), what="shard 0's ticks")
        # ... and one call at a time waits on shard 1: the next ticks' wait.
        held.hold(late)
        held.release(paused)
        await poll(lambda: truthy(redis.beats(0) >= before + 5), what="more of shard 0's ticks")
        assert not any(kind == "leave" for kind, _, _ in redis.done)
        redis.paused.clear()
        redis.resume.set()
        # Landed: the late client's first heartbeat, then the leave after it.
        await poll(
            lambda: truthy(any(late in lines for kind, s, lines in redis.done if s == 1)),
            what="the late client's heartbeat",
        )
        await poll(
            lambda: truthy(("leave", 1, paused) in redis.done), what="the leave, after the call"
        )
        sent = [c for c in redis.done if c[1] == 1]
        assert sent.index(("leave", 1, paused)) > next(
            n for n, (kind, _, lines) in enumerate(sent) if kind == "publish" and late in lines
        )
        assert worker.error is None
    finally:
        await worker.stop()
