"""Global stream positions: where a global stream stands in every shard.

On a standalone Redis there is one shard, and a position is an entry id of
the ``presence`` stream, as the contract has always said. On a cluster each
shard has its own ``presence`` stream, and a position is one entry id per
shard, shard 0 first, joined by commas: what a global stream has seen of
each. The readers of the shards advance one ``Positions``; each event's SSE
id is where they all stood after it.
"""

from __future__ import annotations

import asyncio
import re

#: What a stream has seen: the order (``stream_position``) of an entry id per shard.
Seen = tuple[tuple[int, int], ...]

_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def stream_position(entry_id: str) -> tuple[int, int]:
    """Order of a stream entry id (``"<ms>-<seq>"``) as a comparable tuple."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def valid_entry_id(value: str) -> bool:
    """Whether ``value`` looks like a stream entry id, ``<ms>-<seq>``."""
    return _ENTRY_ID.fullmatch(value) is not None


def split(position: str, shards: int) -> list[str] | None:
    """The entry id of each shard in ``position``; None unless it has one per shard."""
    ids = position.split(",")
    if len(ids) != shards or not all(valid_entry_id(i) for i in ids):
        return None
    return ids


def seen(position: str) -> Seen:
    """What a stream exact at ``position`` has seen (a valid position)."""
    return tuple(stream_position(i) for i in position.split(","))


class Positions:
    """Where this process's readers of the shards' presence streams stand."""

    def __init__(self, shards: int) -> None:
        self.ids = ["0-0"] * shards
        self._moved = asyncio.Event()

    @property
    def text(self) -> str:
        return ",".join(self.ids)

    def advance(self, shard: int, entry_id: str) -> str:
        """Shard ``shard``'s reader passed ``entry_id``: the position after it."""
        self.ids[shard] = entry_id
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        return entry_id if len(self.ids) == 1 else ",".join(self.ids)

    def reached(self, position: str) -> bool:
        target = seen(position)
        return all(stream_position(i) >= t for i, t in zip(self.ids, target, strict=True))

    async def wait(self, position: str, seconds: float) -> bool:
        """Until every reader has passed ``position`` (read from Redis just now,
        so they soon do), at most ``seconds``; whether they did.

        A stream that starts at ``position`` then gets ids that are at or
        past it in every shard, so a resume from any of them replays nothing
        it had.
        """
        if len(self.ids) == 1:
            return True
        try:
            async with asyncio.timeout(seconds):
                while not self.reached(position):
                    await self._moved.wait()
        except TimeoutError:
            return False
        return True
