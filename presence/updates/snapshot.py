"""Snapshots of who is online, read once for any number of waiting connections.

A thousand clients connecting at once cost one Redis round trip, not a thousand
(and never exhaust the connection pool).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..events import OnlineClient
from ..frames import SnapshotFrames
from ..supervise import Worker
from .global_state import GlobalState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Online clients, exact as of the presence stream entry ``position``."""

    position: str
    clients: list[OnlineClient]
    _frames: SnapshotFrames = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_frames", SnapshotFrames(self.position, self.clients))

    def sse_frame(self, exclude: str | None = None, *, reset: bool = False) -> bytes:
        """The ``snapshot`` SSE event, leaving out ``exclude``; ``reset`` marks a resync."""
        return self._frames.frame(exclude, reset=reset)

    def array(self, exclude: str | None = None) -> bytes:
        """The clients as a JSON array, leaving out ``exclude``."""
        return self._frames.array(exclude)


#: Waiting connections answered per loop iteration.
ANSWER_GROUP = 64


class SnapshotReader:
    def __init__(self, state: GlobalState) -> None:
        self._state = state
        self._waiting: list[asyncio.Future[Snapshot]] = []
        self._wake = asyncio.Event()

    async def get(self) -> Snapshot:
        future: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._wake.set()
        return await future

    async def run(self, worker: Worker) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiting, self._waiting = self._waiting, []
            try:
                position, clients = await self._read()
            except Exception as exc:
                # The waiting requests answer 503; the worker itself stays
                # healthy, since it can only retry when a request comes.
                for future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                continue
            snapshot = Snapshot(position, clients)
            for start in range(0, len(waiting), ANSWER_GROUP):
                for future in waiting[start : start + ANSWER_GROUP]:
                    if not future.done():
                        future.set_result(snapshot)
                # Each answer is a write of the whole list: a connect storm's
                # are spread over loop iterations, as the fan-out's are.
                await asyncio.sleep(0)

    async def _read(self) -> tuple[str, list[OnlineClient]]:
        try:
            return await self._state.snapshot()
        except (RedisConnectionError, RedisTimeoutError):
            # Right after Redis comes back the pool still holds dead
            # connections: one more try gets a fresh one.
            return await self._state.snapshot()
