"""Room snapshots: a room's members, read once for every stream waiting for it.

Streams joining rooms at once (a connect storm into 200 rooms of 50) cost one
round trip per batch, and one script per room in it, not one per stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio.client import Pipeline

from ..supervise import Worker
from ..transitions.scripts import Transitions
from ..wire import Member, MemberList, text

#: Rooms read per round trip.
ROOMS_PER_CALL = 256


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
    def __init__(self, transitions: Transitions) -> None:
        self._transitions = transitions
        self._waiting: list[tuple[tuple[str, ...], asyncio.Future[dict[str, RoomSnapshot]]]] = []
        self._wake = asyncio.Event()

    async def get(self, rooms: Iterable[str]) -> dict[str, RoomSnapshot]:
        """Snapshots of ``rooms``, each read after this call."""
        future: asyncio.Future[dict[str, RoomSnapshot]] = asyncio.get_running_loop().create_future()
        self._waiting.append((tuple(rooms), future))
        self._wake.set()
        return await future

    async def read(self, rooms: list[str]) -> dict[str, RoomSnapshot]:
        """Snapshots of ``rooms``, read now."""
        found: dict[str, RoomSnapshot] = {}
        for start in range(0, len(rooms), ROOMS_PER_CALL):
            chunk = rooms[start : start + ROOMS_PER_CALL]

            def fill(pipe: Pipeline, chunk: list[str] = chunk) -> None:
                for room in chunk:
                    self._transitions.room_snapshot(pipe, room)

            for room, reply in zip(chunk, await self._transitions.execute(fill), strict=True):
                if isinstance(reply, Exception):
                    raise reply
                found[room] = room_snapshot(room, reply)
        return found

    async def run(self, worker: Worker) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiting, self._waiting = self._waiting, []
            rooms = list(dict.fromkeys(r for wanted, _ in waiting for r in wanted))
            try:
                found = await self.read(rooms)
            except Exception as exc:
                # The waiting requests answer 503; the worker itself stays healthy.
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for wanted, future in waiting:
                if not future.done():
                    future.set_result({room: found[room] for room in wanted})
            worker.ok()
