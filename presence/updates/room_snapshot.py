"""Room snapshots: a room's members, read once for every stream waiting for it.

Streams joining rooms at once (a connect storm into 200 rooms of 50) cost one
round trip per batch, and one script per room in it, not one per stream. A
room Redis fails to read (a key of the wrong type) fails only the streams
that join it: the others in its batch get their snapshots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio.client import Pipeline

from ..entries import text
from ..errors import RoomUnreadable
from ..events import Member
from ..frames import MemberList
from ..logs import Throttle
from ..shards import Router
from ..supervise import Worker
from ..transitions.scripts import Transitions

log = logging.getLogger(__name__)

#: Rooms read per round trip.
ROOMS_PER_CALL = 256
#: A room failing for every stream joining it is logged at most once per this
#: many seconds.
FAILED_LOG_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """A room's members, exact as of its stream's entry ``position``."""

    room: str
    position: str
    members: list[Member]
    _list: MemberList = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_list", MemberList(self.members))

    def array(self, exclude: str | None = None) -> bytes:
        """The members as a JSON array, leaving out ``exclude``."""
        return self._list.array(exclude)


def room_snapshot(room: str, reply: list[object]) -> RoomSnapshot:
    """A ``RoomSnapshot`` from a ROOM_SNAPSHOT script's reply."""
    position, servers, data = reply
    assert isinstance(servers, list)
    assert isinstance(data, list)
    found = {text(data[i]): text(data[i + 1]) for i in range(0, len(data), 2)}
    members = [
        Member(client, text(servers[i + 1]), found.get(client))
        for i in range(0, len(servers), 2)
        for client in [text(servers[i])]
    ]
    members.sort(key=lambda m: m.client)
    return RoomSnapshot(room, text(position), members)  # type: ignore[arg-type]


class RoomSnapshotReader:
    def __init__(self, shards: Router[Transitions]) -> None:
        """``shards``: each shard's scripts (one, on a standalone Redis)."""
        self._shards = shards
        self._waiting: list[tuple[tuple[str, ...], asyncio.Future[dict[str, RoomSnapshot]]]] = []
        self._wake = asyncio.Event()
        self._failed_log = Throttle(FAILED_LOG_EVERY)

    async def get(self, rooms: Iterable[str]) -> dict[str, RoomSnapshot]:
        """Snapshots of ``rooms``, each read after this call; ``RoomUnreadable``
        for the first of them Redis failed to read."""
        future: asyncio.Future[dict[str, RoomSnapshot]] = asyncio.get_running_loop().create_future()
        self._waiting.append((tuple(rooms), future))
        self._wake.set()
        return await future

    async def read(self, rooms: list[str]) -> dict[str, RoomSnapshot]:
        """Snapshots of ``rooms``, read now; ``RoomUnreadable`` for the first
        of them Redis failed to read."""
        found, failed = await self._read(rooms)
        for room in rooms:
            if room in failed:
                raise RoomUnreadable(room, failed[room])
        return found

    async def _read(self, rooms: list[str]) -> tuple[dict[str, RoomSnapshot], dict[str, str]]:
        """The snapshots of ``rooms``, and why Redis failed each room it failed.

        Redis unreachable fails the whole call: every room, rightly.
        """
        found: dict[str, RoomSnapshot] = {}
        failed: dict[str, str] = {}
        shards = self._shards
        for start in range(0, len(rooms), ROOMS_PER_CALL):
            chunk = rooms[start : start + ROOMS_PER_CALL]

            def fill(pipe: Pipeline, chunk: list[str] = chunk) -> None:
                for room in chunk:
                    shards[shards.of(room)].room_snapshot(pipe, room)

            for room, reply in zip(chunk, await shards[0].execute(fill), strict=True):
                if isinstance(reply, Exception):
                    # Redis's reason, without the script's SHA and line after it.
                    failed[room] = str(reply).split(" script: ")[0]
                else:
                    found[room] = room_snapshot(room, reply)
        if failed and (due := self._failed_log.count(len(failed))):
            room, why = next(reversed(failed.items()))
            log.warning(
                "Redis failed %d room snapshot(s); their streams get a 503 (last: room %s: %s)",
                due,
                room,
                why,
            )
        return found, failed

    async def run(self, worker: Worker) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiting, self._waiting = self._waiting, []
            rooms = list(dict.fromkeys(r for wanted, _ in waiting for r in wanted))
            try:
                found, failed = await self._read(rooms)
            except Exception as exc:
                # The waiting requests answer 503; the worker itself stays healthy.
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for wanted, future in waiting:
                if future.done():
                    continue
                bad = next((room for room in wanted if room in failed), None)
                if bad is None:
                    future.set_result({room: found[room] for room in wanted})
                else:
                    future.set_exception(RoomUnreadable(bad, failed[bad]))
            worker.ok()
