"""Shards: how clients and rooms spread over a Redis Cluster.

A client or a room belongs to shard ``crc32(id as UTF-8) % shards``; every
key of a shard carries that shard's hash tag, so it lies on one slot. The
tag of shard ``i`` is the first ``s<i>.<k>`` (k = 0, 1, ...) whose slot lies
in the middle half of the ``i``-th of ``shards`` equal parts of the 16,384
slots. ``redis-cli --cluster create`` gives each primary one contiguous
range, so the shards spread over the primaries as evenly as their number
allows; short tags such as ``{0}`` ... ``{N-1}`` land wherever CRC16 puts them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Generic, TypeVar

from redis.crc import key_slot

from .errors import RedisMisconfigured

if TYPE_CHECKING:
    from .redis_client import Redis
    from .settings import Settings

SLOTS = 16384
MAX_SHARDS = 256

T = TypeVar("T")


def shard_of(id: str, shards: int) -> int:
    """The shard of a client or room id: CRC32 of its UTF-8 bytes, modulo ``shards``."""
    return zlib.crc32(id.encode()) % shards


@cache
def shard_tags(shards: int) -> tuple[str, ...]:
    """The hash tag of each shard (without braces), shard 0 first."""
    return tuple(_tag(i, shards) for i in range(shards))


def _tag(index: int, shards: int) -> str:
    part = SLOTS / shards
    low, high = index * part + part / 4, index * part + 3 * part / 4
    k = 0
    while not low <= key_slot(f"s{index}.{k}".encode()) < high:
        k += 1
    return f"s{index}.{k}"


async def agree_on_shards(redis: Redis, settings: Settings) -> None:
    """Record the number of shards in ``<namespace>shards`` on first start, and
    refuse a server given another: its keys would be another population's."""
    key = f"{settings.namespace}shards"
    await redis.set(key, settings.shards, nx=True)
    found = await redis.get(key)
    if found is not None and int(found) != settings.shards:
        raise RedisMisconfigured(
            f"the servers on this cluster use {int(found)} shards ({key}); start every "
            f"server with --shards {int(found)}, or delete {key} to move to {settings.shards}"
        )


class Router(Generic[T]):
    """One ``T`` per shard (a shard's keys, its scripts), and the one a client
    or room belongs to. A standalone Redis is one shard."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[T]) -> None:
        if not items:
            raise ValueError("a router needs at least one shard")
        self.items = tuple(items)

    @property
    def sharded(self) -> bool:
        return len(self.items) > 1

    def of(self, id: str) -> int:
        """The shard of a client or room id."""
        return shard_of(id, len(self.items)) if len(self.items) > 1 else 0

    def __getitem__(self, index: int) -> T:
        return self.items[index]
