"""Global stream positions: where a global stream stands in every shard.

On a standalone Redis there is one shard, and a position is an entry id of
the ``presence`` stream, as the contract has always said. On a cluster each
shard has its own ``presence`` stream, and a position is one entry id per
shard, shard 0 first, joined by commas: what a global stream has seen of
each. The readers of the shards advance one ``Positions``; each event's SSE
id is where they all stood after it.
"""

from __future__ import annotations

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


def later(a: str, b: str) -> str:
    """Per shard, the later of two positions (of as many shards)."""
    if "," not in a:
        return b if stream_position(b) > stream_position(a) else a
    return ",".join(
        y if stream_position(y) > stream_position(x) else x
        for x, y in zip(a.split(","), b.split(","), strict=True)
    )


def behind(base: Seen, after: Seen) -> bool:
    """Whether a position is behind ``after`` in some shard."""
    return any(b < a for b, a in zip(base, after, strict=True))


class Positions:
    """Where this process's readers of the shards' presence streams stand.

    Each event's id is where they stood when its batch was read, its own
    shard's entry its own: everything of every shard up to there is in the
    log before it. A stream that started later than some of that (its
    snapshot read from Redis ahead of a reader) is sent the later of the two
    (``later``), so that its ids never fall behind what it was given.
    """

    def __init__(self, shards: int) -> None:
        self.ids = ["0-0"] * shards

    def advance(self, shard: int, entry_id: str) -> None:
        """Shard ``shard``'s reader passed ``entry_id``."""
        self.ids[shard] = entry_id
