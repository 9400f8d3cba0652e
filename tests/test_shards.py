"""The shard function and the shards' hash tags, checked against a real cluster."""

from __future__ import annotations

from collections import Counter

import pytest

from presence.shards import MAX_SHARDS, shard_of, shard_tags

from .topology import Cluster, client


def test_the_shard_function_is_crc32_of_the_utf8_id_modulo_the_shards() -> None:
    # CRC-32's check value: crc32(b"123456789") == 0xCBF43926 == 3421780262.
    assert shard_of("123456789", 12) == 3421780262 % 12 == 2
    assert shard_of("123456789", 1) == 0


def test_ids_spread_evenly_over_the_shards() -> None:
    counts = Counter(shard_of(f"client-{i}", 12) for i in range(120_000))
    assert set(counts) == set(range(12))
    assert max(counts.values()) / min(counts.values()) < 1.05


def test_tags_are_distinct_and_stable() -> None:
    tags = shard_tags(12)
    assert len(set(tags)) == 12
    assert tags[:3] == ("s0.10", "s1.3", "s2.163")  # documented: never changes
    assert len(shard_tags(MAX_SHARDS)) == MAX_SHARDS


@pytest.mark.parametrize("shards", [3, 7, 12, 16, 32])
def test_each_primary_serves_an_even_share_of_the_shards(cluster: Cluster, shards: int) -> None:
    """Counted by the slot Redis itself gives each shard's key."""
    primaries = {}
    with client(cluster.nodes[0].port) as r:
        for low, high, *nodes in r.execute_command("CLUSTER", "SLOTS"):
            primaries[(int(low), int(high))] = nodes[0][1]
        slots = [int(r.cluster("keyslot", f"{{{tag}}}.heartbeat")) for tag in shard_tags(shards)]
    served = Counter(
        port for slot in slots for (low, high), port in primaries.items() if low <= slot <= high
    )
    assert sum(served.values()) == shards
    assert len(served) == 3
    # As even as the count allows: the shares differ by one shard at most.
    assert max(served.values()) - min(served.values()) <= 1, served
