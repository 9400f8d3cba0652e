"""Commands packed by hiredis are byte for byte what redis-py packs."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from presence.redis_client import PackedConnection


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "v"),
        ("CONFIG GET", "notify-keyspace-events"),
        (b"XADD", b"heartbeat", "*", "client", "é", "n", 7, "f", 1.5, "neg", -2.25),
        ("EVALSHA", "0" * 40, 3, "a", "b", "c", b"line one\nline two", 0),
        ("XREAD", b"COUNT", 1000, b"BLOCK", 250, b"STREAMS", b"k", b"0-0"),
    ],
)
def test_a_command_is_packed_as_redis_py_packs_it(args: tuple[Any, ...]) -> None:
    assert PackedConnection().pack_command(*args) == [b"".join(Connection().pack_command(*args))]


def test_a_pipeline_is_packed_in_one_buffer() -> None:
    commands = [("SET", "a", 1), ("GET", "a"), ("CONFIG SET", "x", "y")]
    expected = b"".join(b"".join(Connection().pack_command(*c)) for c in commands)
    assert PackedConnection().pack_commands(commands) == [expected]


def test_an_argument_redis_cannot_take_is_a_data_error() -> None:
    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "k", None)
