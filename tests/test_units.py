"""Fast tests of the parts that need no Redis: settings, ids, CLI, queues, supervision."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from presence import ConfigError, Keys, Settings
from presence.cli import main
from presence.contract import is_valid_id
from presence.entries import Delivery, RoomDelivery, heartbeat_lines, member_data
from presence.events import OnlineClient, PresenceEvent
from presence.heartbeats.held import HeldClients
from presence.heartbeats.publisher import HeartbeatPublisher
from presence.supervise import Outage, Worker
from presence.updates.connections import STALL_TIMEOUT, Connections, Resync
from presence.updates.delivery_log import DeliveryLog, Subscriber
from presence.updates.scoped import Occupancy, Scope, ScopedSubscriber, Scopes
from presence.updates.snapshot import Snapshot

from .support import free_port, poll


def test_defaults_match_the_documented_contract() -> None:
    s = Settings(server_id="s1")
    assert (s.host, s.port, s.redis_url) == ("127.0.0.1", 8080, "memory://")
    assert (s.heartbeat_interval, s.ttl_factor, s.ttl_ms) == (5.0, 1.5, 7500)
    k = s.keys
    assert (k.heartbeat, k.presence, k.online("a")) == ("heartbeat", "presence", "online.clients.a")
    assert Keys("ns:").online("a") == "ns:online.clients.a"


def test_server_id_defaults_to_host_name_and_port() -> None:
    import socket

    assert Settings(port=9001).server_id == f"{socket.gethostname()}:9001"


def test_environment_is_read_and_overrides_win() -> None:
    env = {
        "PRESENCE_PORT": "9000",
        "PRESENCE_HEARTBEAT_INTERVAL": "2.5",
        "PRESENCE_NAMESPACE": "x:",
        "PRESENCE_LOG_LEVEL": "debug",
    }
    s = Settings.from_env(env, port=9100, namespace=None)
    assert (s.port, s.heartbeat_interval, s.namespace, s.log_level) == (9100, 2.5, "x:", "DEBUG")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"heartbeat_interval": -1}, "heartbeat interval"),
        ({"heartbeat_interval": float("nan")}, "heartbeat interval"),
        ({"ttl_factor": 0.9}, "ttl factor"),
        ({"ttl_factor": 1}, "ttl factor must be greater than 1"),
        ({"redis_url": "redis://h/0?socket_timeout=abc"}, "socket_timeout"),
        ({"redis_url": "redis://h/0?protocol=3"}, "remove protocol="),
        ({"port": 70000}, "port"),
        ({"redis_url": "http://x"}, "redis://"),
        ({"redis_url": "redis://h:notaport"}, "not a valid URL"),
        ({"redis_url": "redis://h/db"}, "database"),
        ({"redis_url": "unix://"}, "socket path"),
        ({"namespace": "has space"}, "namespace"),
        ({"server_id": "bad id"}, "server id"),
        ({"log_level": "LOUD"}, "log level"),
        ({"presence_maxlen": 0}, "presence stream cap"),
        ({"claim_after": -1}, "claim after must be zero .automatic. or a positive"),
        ({"claim_after": 1.5}, "claim after must be at most half the TTL's slack"),
        ({"forget_after": float("inf")}, "forget after must be a positive"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**changes)  # type: ignore[arg-type]


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PRESENCE_PORT must be an integer"):
        Settings.from_env({"PRESENCE_PORT": "eighty"})


def test_repr_masks_the_redis_password() -> None:
    s = Settings(redis_url="redis://user:s3cret@db:6379/0", server_id="s")
    assert "s3cret" not in repr(s)
    assert "redis://user:***@db:6379/0" in repr(s)
    assert s.masked_redis_url == "redis://user:***@db:6379/0"


@pytest.mark.parametrize("good", ["a", "A.b_c", "x" * 128, "user@example.com", "a:b-c.d"])
def test_valid_ids(good: str) -> None:
    assert is_valid_id(good)


@pytest.mark.parametrize("bad", ["", "x" * 129, "a b", "a/b", "é", "a\n", "a#b", "a\x00"])
def test_invalid_ids(bad: str) -> None:
    assert not is_valid_id(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--heartbeat-interval", "-1"], "heartbeat interval must be a positive"),
        (["serve", "--ttl-factor", "0.5"], "ttl factor must be greater than 1"),
        (["serve", "--redis-url", "nope://"], "redis url must start with"),
        (["serve", "--port", "x"], "invalid int value"),
        (["bogus"], "invalid choice"),
    ],
)
def test_cli_rejects_bad_values_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_gives_up_on_unreachable_redis_in_one_line(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PRESENCE_REDIS_URL", raising=False)
    port = free_port()  # nothing listens there
    code = main(
        ["serve", "--port", str(free_port()), "--redis-url", f"redis://127.0.0.1:{port}",
         "--connect-retries", "2"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("presence: error: cannot reach Redis at redis://127.0.0.1:")
    assert "after 2 attempts" in err[-1]
    assert "not reachable (attempt 1 of 2)" in caplog.text
    assert not any("Traceback" in line for line in err)


def test_cli_reads_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESENCE_TTL_FACTOR", "0.2")
    assert run(["serve"]) == 2
    assert "ttl factor must be greater than 1" in capsys.readouterr().err


def run(argv: list[str]) -> int | str | None:
    """``main()``'s exit code, whether returned or raised by argparse."""
    try:
        return main(argv)
    except SystemExit as exited:
        return exited.code


def _delivery(client: str, n: int = 1) -> Delivery:
    return Delivery(f"{n}-0", client, "ONLINE", "s", b"frame")


async def test_a_subscriber_behind_the_log_resyncs_and_one_that_stopped_reading_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local, connections = DeliveryLog(backlog=2), Connections(backlog=2)
    aborted: list[str] = []
    slow = Subscriber(local, "slow", abort=lambda: aborted.append("slow"))
    stalled = Subscriber(local, "stalled", abort=lambda: aborted.append("stalled"))
    connections.subscribers |= {slow, stalled}
    with stalled.writing():
        for n in range(1, 5):
            local.deliver([_delivery("other", n)])
        assert connections.prune() == 0  # behind, but its write has not been blocked for long
        assert stalled.writing_since is not None
        monkeypatch.setattr(stalled, "writing_since", stalled.writing_since - STALL_TIMEOUT)
        assert connections.prune() == 1
    assert (stalled.reason, aborted, connections.overflows) == ("overflow", ["stalled"], 1)
    # Behind but reading: a fresh snapshot instead of a backlog, then live events.
    with pytest.raises(Resync):
        await slow.segments()
    assert local.resets == 1
    local.deliver([_delivery("other", 5)])
    assert [d.id for d in await slow.get_many()] == ["5-0"]
    assert slow.reason is None


async def test_local_state_delivers_to_all_but_the_client_itself() -> None:
    local = DeliveryLog()
    alice, bob, everyone = (Subscriber(local, c) for c in ("alice", "bob", None))
    local.deliver([_delivery("alice", 1), _delivery("bob", 2)])
    assert [d.client for d in await bob.get_many()] == ["alice"]
    assert [d.client for d in await everyone.get_many()] == ["alice", "bob"]
    assert [d.client for d in await alice.get_many()] == ["bob"]
    waiting = asyncio.create_task(alice.get_many())
    await asyncio.sleep(0)
    local.deliver([_delivery("alice", 3)])  # about alice only: she keeps waiting
    await asyncio.sleep(0)
    assert not waiting.done()
    alice.close()
    assert await waiting == []


def test_hold_counts_connections_and_marks_new_clients_fresh() -> None:
    local = HeldClients()
    local.hold("a")
    local.hold("a")
    assert local.take_fresh() == [("a", "")]
    local.release("a")
    assert ("a", "") in local
    local.hold("b")
    local.release("b")
    assert ("b", "") not in local
    assert local.take_fresh() == [("b", "")]  # connected, however briefly: heartbeated once
    assert local.take_fresh() == []


def test_room_memberships_are_held_apart_and_carry_their_data_once() -> None:
    local = HeldClients()
    local.hold("a", "r1", '{"s":1}')
    local.hold("a", "r2")
    assert sorted(local.take_fresh()) == [("a", "r1"), ("a", "r2")]
    assert local.take_data(("a", "r1")) == '{"s":1}'
    assert local.take_data(("a", "r1")) == ""
    local.hold("a", "r1", '{"s":2}')  # held already: new data makes it fresh again
    assert local.take_fresh() == [("a", "r1")]
    local.release("a", "r1")
    assert ("a", "r1") in local
    local.release("a", "r1")
    assert ("a", "r1") not in local
    assert ("a", "r2") in local
    assert local.rooms == 1


def test_snapshot_frame_leaves_out_the_connecting_client() -> None:
    snap = Snapshot("5-1", [OnlineClient("a", "s1"), OnlineClient("b", "s2")])
    assert snap.sse_frame(exclude="a") == (
        b'id: 5-1\nevent: snapshot\ndata: {"clients":[{"client":"b","server":"s2"}]}\n\n'
    )
    assert snap.sse_frame(exclude="b", reset=True) == (
        b"id: 5-1\nevent: snapshot\n"
        b'data: {"clients":[{"client":"a","server":"s1"}],"reset":true}\n\n'
    )


async def test_worker_logs_a_failure_once_reports_it_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0
    healthy = asyncio.Event()

    async def flaky(worker: Worker) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise ConnectionError("down")
        worker.ok()
        healthy.set()
        await asyncio.Event().wait()

    worker = Worker("flaky")
    with caplog.at_level(logging.INFO, logger="presence.supervise"):
        worker.start(flaky)
        await poll(lambda: _value(worker.problem is not None), what="failure reported")
        async with asyncio.timeout(5):
            await healthy.wait()
        await worker.stop()
    assert worker.problem == "flaky is not running"
    assert caplog.text.count("flaky failed") == 1
    assert caplog.text.count("flaky recovered") == 1


async def _value(value: bool) -> bool:
    return value


def test_presence_frames_are_the_compact_json_of_the_event() -> None:
    from presence.entries import parse_delivery, parse_event

    fields = [b"client", b"a.b:c@d-e_1", b"status", b"OFFLINE", b"server", b""]
    for shuffled in (fields, [*fields[4:], *fields[:4]]):
        delivery = parse_delivery("1-2", shuffled)
        assert delivery is not None
        event = delivery.event
        assert event == PresenceEvent("1-2", "a.b:c@d-e_1", "OFFLINE", "")
        # An OFFLINE's frame also says when: its entry's ms.
        data = event.to_json()[:-1] + ',"at":1}'
        assert delivery.frame == f"id: 1-2\nevent: presence\ndata: {data}\n\n".encode()
    for bad in (b'x"y', b"a\\b", b"\xff", b""):
        assert parse_event("1-2", [b"client", bad, *fields[2:]]) is None
    for broken in (fields[:4], [*fields[:3], b"AWAY", *fields[4:]], None, []):
        assert parse_event("1-2", broken) is None


def test_heartbeat_lines_are_client_server_and_entry_id() -> None:
    from presence.entries import heartbeat_lines

    entries = [(b"%d-0" % n, [b"client", b"c%d" % n, b"server", b"s.1"]) for n in range(1, 300)]
    lines, bad = heartbeat_lines(entries)
    assert (lines, bad) == ([b"c%d s.1 %d-0" % (n, n) for n in range(1, 300)], [])


@pytest.mark.parametrize(
    "fields",
    [
        [b"client", b"x s 1-1\nvictim", b"server", b"s"],  # a field adding a line
        [b"client", b"x y", b"server", b"s"],
        [b"client", b"a", b"server", b"s\n"],
        [b"client", b"", b"server", b"s"],
        [b"client", b"a" * 129, b"server", b"s"],
        [b"client", b"a"],
        None,
    ],
)
def test_heartbeat_lines_set_aside_each_malformed_entry_and_keep_the_rest(
    fields: list[bytes] | None,
) -> None:
    from presence.entries import heartbeat_lines

    good = [(b"1-%d" % n, [b"client", b"c%d" % n, b"server", b"s"]) for n in range(3)]
    lines, bad = heartbeat_lines([good[0], (b"2-0", fields), *good[1:]])
    assert lines == [b"c0 s 1-0", b"c1 s 1-1", b"c2 s 1-2"]
    assert [entry_id for entry_id, _ in bad] == [b"2-0"]
    # Fields in another order, or repeated, still make a heartbeat.
    lines, bad = heartbeat_lines([(b"3-0", [b"server", b"s", b"client", b"a"])])
    assert (lines, bad) == ([b"a s 3-0"], [])


def test_a_slow_reader_is_not_taken_for_one_that_stopped_reading() -> None:
    left = [600_000]
    reader = Subscriber(DeliveryLog(), "slow", buffered=lambda: left[0])
    assert reader.stalled(100.0) == 0  # nothing pending
    with reader.writing():
        assert reader.stalled(100.0) == 0  # the first look
        left[0] -= 1000
        assert reader.stalled(115.0) == 0  # drained some since: reading, slowly
        assert reader.stalled(130.0) == 15.0  # nothing drained since the last look


def test_heartbeat_lines_take_rooms_and_never_a_field_that_brings_its_own_separator() -> None:
    lines, bad = heartbeat_lines(
        [
            (b"1-0", [b"client", b"a", b"server", b"s", b"room", b"r"]),
            (b"2-0", [b"client", b"b", b"server", b"s"]),
        ]
    )
    assert (lines, bad) == ([b"a s 1-0 r", b"b s 2-0"], [])
    # A server id with a space would make "c s 1-0" + a room of the entry's id.
    lines, bad = heartbeat_lines(
        [
            (b"5-0", [b"client", b"c", b"server", b"s 1-0"]),
            (b"6-0", [b"client", b"d", b"server", b"s"]),
        ]
    )
    assert lines == [b"d s 6-0"]
    assert [entry for entry, _ in bad] == [b"5-0"]
    lines, bad = heartbeat_lines(
        [(b"7-0", [b"client", b"e", b"server", b"s", b"room", b"x", b"data", b'{"b": 1, "a": 2}'])]
    )
    assert lines == [b'e s 7-0 x {"a":2,"b":1}']
    # Initial data (a presence server's ?data=) goes to the script after a "?".
    initial = [b"client", b"f", b"server", b"s", b"room", b"x", b"initial", b'{"b": 1}']
    lines, bad = heartbeat_lines([(b"8-0", initial), (b"9-0", [*initial, b"data", b"{}"])])
    assert lines == [b'f s 8-0 x ?{"b":1}', b"f s 9-0 x {}"]
    lines, bad = heartbeat_lines([(b"10-0", [*initial[:-1], b"[1]"])])
    assert (lines, [why for _, why in bad]) == ([], ["invalid initial: data must be a JSON object"])


def _room_delivery(entry_id: str, client: str) -> RoomDelivery:
    body = b'{"room":"r","client":"%b","status":"ONLINE","server":"s1"}' % client.encode()
    return RoomDelivery(entry_id, "r", client, "ONLINE", "s1", None, body)


async def test_a_scoped_stream_that_fell_behind_queues_again_once_it_takes_its_resync() -> None:
    scopes = Scopes()
    subscriber = ScopedSubscriber("me", Scope(rooms=("r",)), limit=2)
    with scopes.subscribed(subscriber):
        for n in range(3):  # one more than its queue holds
            scopes.deliver_rooms([_room_delivery(f"{n + 1}-0", f"c{n}")])
        assert scopes.resets == 1
        with pytest.raises(Resync):
            await subscriber.items()
        # Its fresh snapshot is being read and written: bob joins meanwhile.
        scopes.deliver_rooms([_room_delivery("4-0", "bob")])
        found = await asyncio.wait_for(subscriber.items(), 1)
        assert [item.id for item in found if isinstance(item, RoomDelivery)] == ["4-0"]


async def test_occupancy_counts_are_sent_again_after_a_resync() -> None:
    scopes = Scopes()
    subscriber = ScopedSubscriber("me", Scope(occupancy=("r",)), limit=16)
    with scopes.subscribed(subscriber):
        subscriber.counts["r"] = 1  # what its connect sent
        scopes.count("r", 2)
        subscriber.resync()  # the queue goes, count 2 with it
        with pytest.raises(Resync):
            await subscriber.items()
        scopes.count("r", 2)  # the next poll: the same count
        assert await asyncio.wait_for(subscriber.items(), 1) == [Occupancy("r", 2)]


def test_member_data_is_a_small_json_object_in_one_canonical_form() -> None:
    assert member_data('{"b": [1, 2], "a": "é"}') == '{"a":"é","b":[1,2]}'
    cases: list[tuple[str | bytes, str]] = [
        ('{"a":1e400}', "out of range"),  # would come out as Infinity
        ('{"a": NaN}', "valid JSON"),
        ("[1]", "JSON object"),
        ('{"a": "' + "x" * 1100 + '"}', "1024 bytes"),
        ("[" * 5000, "valid JSON"),
        (b"\xff", "valid JSON"),
    ]
    for bad, why in cases:
        with pytest.raises(ValueError, match=why):
            member_data(bad)


class _FailingTransitions:
    def publish(self, *args: object) -> None:
        pass

    async def execute(self, fill: object, **options: object) -> list[object]:
        raise ConnectionError("redis went away")


async def test_data_whose_heartbeat_could_not_be_sent_goes_with_the_next(
    settings: Settings,
) -> None:
    held = HeldClients(leave_grace=2)
    held.hold("alice")
    held.hold("alice", "lobby", '{"s":"here"}')
    failing: Any = _FailingTransitions()
    publisher = HeartbeatPublisher(settings, held, failing, Outage())
    with pytest.raises(ConnectionError):
        await publisher.publish(held.take_fresh())
    assert ("alice", "lobby") in held.take_fresh()
    assert held.take_data(("alice", "lobby")) == '{"s":"here"}'


class _FlakyTransitions:
    """Redis away for the first ``failures`` calls, then back."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def publish(self, *args: object) -> None:
        pass

    async def execute(self, fill: object, **options: object) -> list[object]:
        self.calls += 1
        if self.calls <= self.failures:
            from redis.exceptions import ConnectionError as RedisConnectionError

            raise RedisConnectionError("a primary failing over")
        return [1]


async def test_a_tick_that_cannot_reach_redis_is_tried_again_within_the_interval(
    settings: Settings,
) -> None:
    """Not after the supervisor's growing backoff: on a cluster with one
    primary away, the other shards' keys must still be refreshed in time."""
    held = HeldClients(leave_grace=2)
    held.hold("alice")
    flaky: Any = _FlakyTransitions(failures=8)
    outage = Outage()
    publisher = HeartbeatPublisher(settings.replace(heartbeat_interval=1), held, flaky, outage)
    worker = Worker("heartbeats", outage=outage)
    worker.start(publisher.run)
    try:
        # Retried at most a quarter interval apart: about 1.6 s for 8 failures,
        # where the supervisor's backoff (0.1 s doubling up to 5 s) takes 16 s.
        await poll(lambda: _true(publisher.published >= 1), timeout=8, what="the retried tick")
        assert flaky.calls >= 9
        assert worker.error is None
        assert not outage.active
        assert outage.count == 1
    finally:
        await worker.stop()


async def _true(value: bool) -> bool:
    return value


def test_a_sharded_event_is_never_sent_with_an_id_behind_the_start() -> None:
    """Shard 1's event, read while shard 0's reader was still behind a
    snapshot: a stream started at that snapshot gets the later id of the two
    in every shard, so a resume from it replays nothing the snapshot had."""
    from presence.entries import parse_delivery
    from presence.positions import later, seen
    from presence.updates.delivery_log import Segment

    fields = [b"client", b"bob", b"status", b"ONLINE", b"server", b"s"]
    delivery = parse_delivery("5-0", fields, 1, "1-0,5-0")
    assert delivery is not None
    segment = Segment(0, [delivery])
    start = "3-0,4-0"
    assert segment.frames(None, seen(start), start).startswith(b"id: 3-0,5-0\nevent: presence\n")
    # A stream that started before shard 0's entry 1-0 gets the frame as it is.
    assert segment.frames(None, seen("0-0,4-0"), "0-0,4-0") == segment.data
    # One already past the event gets nothing of it.
    assert segment.frames(None, seen("3-0,5-0"), "3-0,5-0") == b""
    assert later("3-0,4-0", "1-0,5-0") == "3-0,5-0"
    assert later("7-1", "7-0") == "7-1"
