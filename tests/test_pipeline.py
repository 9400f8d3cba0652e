"""The in-process pipeline against a real redis-server: heartbeats in, transitions out."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from presence import Presence, PresenceEvent, RedisMisconfigured, Reset, Settings
from presence.contract import CONSUMER_GROUP
from presence.heartbeats.claims import Claimer
from presence.heartbeats.consumer import HeartbeatConsumer
from presence.transitions.scripts import Transitions

from .support import Redis, RedisServer, StartPresence, StartRedis, entry_ms, exists, poll, truthy


async def presence_entries(redis: Redis) -> list[tuple[str, str, str, int]]:
    return [
        (f[b"client"].decode(), f[b"status"].decode(), f[b"server"].decode(), entry_ms(i))
        for i, f in await redis.xrange("presence")
    ]


async def next_event(events: object, timeout: float = 5) -> PresenceEvent:
    async with asyncio.timeout(timeout):
        return await anext(events)  # type: ignore[call-overload, no-any-return]


async def test_tracked_client_comes_online_at_once_and_is_heartbeated(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    presence = await start_presence(settings.replace(heartbeat_interval=30))
    async with presence.changes() as events, presence.track("alice"):
        event = await next_event(events, timeout=2)  # long before the 30 s tick
        assert (event.client, event.status, event.server) == ("alice", "ONLINE", "test-1")
        assert await redis.get("online.clients.alice") == b"test-1"
        assert [c.client for c in await presence.online()] == ["alice"]
    entries = await redis.xrange("heartbeat")
    assert {(f[b"client"], f[b"server"]) for _, f in entries} == {(b"alice", b"test-1")}


async def test_stopped_heartbeats_give_offline_within_ttl_plus_250ms_without_expired_events(
    redis: Redis,
    redis_server: RedisServer,
    settings: Settings,
    start_presence: StartPresence,
) -> None:
    """Expired events never come here: active expiry is off and the listener is cut off."""
    if redis_server.version < (7,):
        pytest.skip("DEBUG SET-ACTIVE-EXPIRE needs enable-debug-command (Redis 7)")
    await redis.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", 0)
    presence = await start_presence(settings)
    async with presence.track("alice"):
        await poll(lambda: presence_entries(redis), what="ONLINE")
        # Outlive a few ticks so refreshes happen too.
        await poll(lambda: _count(redis, "heartbeat", 3), timeout=5, what="heartbeats")
    await redis.client_kill_filter(_type="pubsub")
    await poll(lambda: _has_status(redis, "OFFLINE"), timeout=5, what="OFFLINE")
    last_heartbeat = entry_ms((await redis.xrevrange("heartbeat", count=1))[0][0])
    entries = await presence_entries(redis)
    assert [(c, s) for c, s, _, _ in entries] == [("alice", "ONLINE"), ("alice", "OFFLINE")]
    offline_ms = entries[1][3]
    assert offline_ms - last_heartbeat <= settings.ttl_ms + 250


async def test_deleting_the_key_publishes_offline_through_keyspace_events(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    # A 60 s interval keeps the deadline far away: only the listener can act in time.
    presence = await start_presence(settings.replace(heartbeat_interval=60))
    assert "E" in (await redis.config_get("notify-keyspace-events"))["notify-keyspace-events"]
    await redis.xadd("heartbeat", {"client": "bob", "server": "elsewhere"})
    await poll(lambda: _has_status(redis, "ONLINE"), what="ONLINE")
    await redis.delete("online.clients.bob")
    await poll(lambda: _has_status(redis, "OFFLINE"), timeout=3, what="OFFLINE")
    assert presence._service.listener.published == 1
    assert [(c, s, srv) for c, s, srv, _ in await presence_entries(redis)] == [
        ("bob", "ONLINE", "elsewhere"),
        ("bob", "OFFLINE", "elsewhere"),
    ]


async def test_two_servers_apply_each_heartbeat_once(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    one = await start_presence(settings.replace(server_id="one", heartbeat_interval=30))
    two = await start_presence(settings.replace(server_id="two", heartbeat_interval=30))
    for n in range(200):
        await redis.xadd("heartbeat", {"client": f"c{n}", "server": "ext"})

    async def all_applied() -> bool:
        return one._service.consumer.applied + two._service.consumer.applied == 200

    await poll(all_applied, what="200 heartbeats applied")
    assert len(await presence_entries(redis)) == 200
    groups = await redis.xinfo_groups("heartbeat")
    assert groups[0]["name"] == CONSUMER_GROUP.encode()
    assert groups[0]["pending"] == 0


async def test_malformed_heartbeats_are_skipped_counted_and_logged(
    redis: Redis,
    settings: Settings,
    start_presence: StartPresence,
    caplog: pytest.LogCaptureFixture,
) -> None:
    presence = await start_presence(settings.replace(heartbeat_interval=30))
    bad: list[dict[str, str | bytes]] = [
        {"server": "s"},
        {"client": "", "server": "s"},
        {"client": "x" * 129, "server": "s"},
        {"client": "has space", "server": "s"},
        {"client": b"\xff\xfe", "server": "s"},
        {"client": "ok", "server": ""},
        {"other": "field"},
    ]
    with caplog.at_level(logging.WARNING, logger="presence.heartbeats.consumer"):
        for fields in bad:
            await redis.xadd("heartbeat", fields)
        await redis.xadd("heartbeat", {"client": "good", "server": "s", "extra": "ignored"})
        await poll(lambda: _has_status(redis, "ONLINE"), what="valid heartbeat applied")
        await poll(lambda: truthy(presence._service.consumer.malformed == len(bad)), what="count")
    assert [c for c, _, _, _ in await presence_entries(redis)] == ["good"]
    assert "malformed heartbeat" in caplog.text
    assert presence._service.listener.published == 0
    assert (await redis.xinfo_groups("heartbeat"))[0]["pending"] == 0
    assert (await presence._service.problems()) == []


async def test_enables_keyspace_events_when_they_are_off(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    await redis.config_set("notify-keyspace-events", "K$")
    await start_presence(settings)
    flags = (await redis.config_get("notify-keyspace-events"))["notify-keyspace-events"]
    assert set(flags) >= set("KEg$")


async def test_without_config_and_keyspace_events_the_sweeper_publishes_every_offline(
    start_redis: StartRedis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    locked = start_redis("--rename-command", "CONFIG", "")
    caplog.set_level(logging.INFO, logger="presence")
    presence = Presence(settings.replace(redis_url=locked.url))
    await presence.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "notify-keyspace-events" in warnings[0]
        assert presence._service.listener.events is False
        client: Redis = presence._service.redis
        for name in ("deleted", "expired"):
            await client.xadd("heartbeat", {"client": name, "server": "ext"})
        await poll(lambda: exists(client, "online.clients.deleted"), what="ONLINE")
        await client.delete("online.clients.deleted")

        async def both_offline() -> bool:
            entries = await client.xrange("presence")
            offline = {f[b"client"] for _, f in entries if f[b"status"] == b"OFFLINE"}
            return offline == {b"deleted", b"expired"}

        await poll(
            lambda: truthy(presence._service.sweeper.published == 2), timeout=5, what="sweeper"
        )
        assert await both_offline()
        assert presence._service.listener.published == 0
    finally:
        await presence.close()


async def test_a_listener_that_falls_behind_gets_a_reset_instead_of_a_backlog(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    presence = await start_presence(settings.replace(queue_size=5, heartbeat_interval=30))
    async with presence.changes() as events:
        for n in range(20):
            await redis.xadd("heartbeat", {"client": f"c{n}", "server": "ext"})
        await poll(lambda: truthy(presence._service.reader.delivered == 20), what="deliveries")
        reset = await anext(events)
        assert isinstance(reset, Reset)  # not 20 events: the log keeps about 5
        assert {c.client for c in reset.clients} == {f"c{n}" for n in range(20)}
        await redis.xadd("heartbeat", {"client": "late", "server": "ext"})
        after = await anext(events)
        assert isinstance(after, PresenceEvent)
        assert after.client == "late"
    assert not presence._service.connections.subscribers


async def test_a_reset_whose_snapshot_redis_cannot_give_waits_for_redis(
    start_redis: StartRedis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    own = start_redis()
    client = aioredis.from_url(own.url)
    presence = Presence(settings.replace(redis_url=own.url, queue_size=5, heartbeat_interval=30))
    await presence.start()
    try:
        async with presence.changes() as events:
            for n in range(20):
                await client.xadd("heartbeat", {"client": f"c{n}", "server": "ext"})
            await poll(lambda: truthy(presence._service.reader.delivered == 20), what="deliveries")
            # It fell behind: its next item is a reset, whose snapshot finds Redis gone.
            own.stop()
            with caplog.at_level(logging.DEBUG, logger="presence.presence"):
                pending = asyncio.ensure_future(anext(events))

                def retried() -> bool:
                    return any("no fresh snapshot" in r.getMessage() for r in caplog.records)

                await poll(lambda: truthy(pending.done() or retried()), what="a failed snapshot")
                assert not pending.done(), pending.exception()
            own.start()  # same port, without its data
            await client.connection_pool.disconnect()  # the test's own dead connections
            reset = await asyncio.wait_for(pending, 10)
            assert isinstance(reset, Reset)
            # Events go on after it: a newcomer reaches the listener, as an
            # event or in the reset the reader sends once it sees the stream
            # lost its entries with the restart.
            await client.xadd("heartbeat", {"client": "late", "server": "ext"})

            def about_late(item: PresenceEvent | Reset) -> bool:
                if isinstance(item, Reset):
                    return "late" in {c.client for c in item.clients}
                return item.client == "late"

            async with asyncio.timeout(10):
                while not about_late(await anext(events)):
                    pass
    finally:
        await presence.close()
        await client.aclose()


async def test_close_publishes_no_offline_for_local_clients(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    presence = await start_presence(settings.replace(heartbeat_interval=30))
    async with presence.track("alice"):
        await poll(lambda: _has_status(redis, "ONLINE"), what="ONLINE")
        await presence.close()
    assert [s for _, s, _, _ in await presence_entries(redis)] == ["ONLINE"]
    assert await redis.get("online.clients.alice") == b"test-1"


async def test_workers_recover_when_redis_drops_their_connections(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    presence = await start_presence(settings)
    await redis.client_kill_filter(_type="normal", skipme=True)
    await redis.client_kill_filter(_type="pubsub")
    async with presence.changes() as events, presence.track("alice"):
        await redis.xadd("heartbeat", {"client": "bob", "server": "ext"})
        seen = {(await next_event(events)).client, (await next_event(events)).client}
    assert seen == {"alice", "bob"}
    await poll(lambda: _no_problems(presence), what="healthy")


async def _count(redis: Redis, stream: str, n: int) -> bool:
    return bool(await redis.xlen(stream) >= n)


async def _has_status(redis: Redis, status: str) -> bool:
    return any(s == status for _, s, _, _ in await presence_entries(redis))


async def _no_problems(presence: Presence) -> bool:
    return not await presence._service.problems()


async def test_starts_without_config_when_the_operator_enabled_keyspace_events(
    start_redis: StartRedis, settings: Settings
) -> None:
    managed = start_redis("--notify-keyspace-events", "Eg", "--rename-command", "CONFIG", "")
    async with Presence(settings.replace(redis_url=managed.url)) as presence:
        assert await presence._service.problems() == []


async def test_streams_are_capped(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    presence = await start_presence(
        settings.replace(heartbeat_maxlen=10, presence_maxlen=10, heartbeat_interval=30)
    )
    pipe = redis.pipeline(transaction=False)
    for n in range(1000):
        pipe.xadd("heartbeat", {"client": f"c{n}", "server": "ext"})
    await pipe.execute()
    await poll(lambda: truthy(presence._service.consumer.applied == 1000), what="applied")
    # MAXLEN ~ trims whole nodes of up to 100 entries, so "about 10" is at most ~110.
    assert await redis.xlen("presence") <= 110
    await presence._service.publisher.publish([(f"local{n}", "") for n in range(300)])
    assert await redis.xlen("heartbeat") <= 110


async def test_unix_socket_url(start_redis: StartRedis, settings: Settings, tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    start_redis("--unixsocket", str(sock), "--unixsocketperm", "700")
    async with Presence(settings.replace(redis_url=f"unix://{sock}")) as presence:
        async with presence.changes() as events, presence.track("alice"):
            assert (await next_event(events)).client == "alice"
        assert await presence._service.problems() == []


async def test_a_key_of_the_wrong_type_fails_its_heartbeat_only_until_it_is_stale(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    """The failed entry stays pending and is retried until it goes stale (TTL 1.5 s)."""
    settings = settings.replace(heartbeat_interval=1, claim_after=0.2)
    presence = await start_presence(settings)
    await redis.hset("online.clients.broken", "field", "value")
    await redis.xadd("heartbeat", {"client": "broken", "server": "ext"})
    await redis.xadd("heartbeat", {"client": "fine", "server": "ext"})
    await poll(lambda: _has_status(redis, "ONLINE"), what="fine ONLINE")
    await poll(
        lambda: truthy(presence._service.consumer.failed >= 2), what="failed, claimed, failed"
    )
    assert (await redis.xinfo_groups("heartbeat"))[0]["pending"] == 1

    async def acknowledged() -> bool:
        return bool((await redis.xinfo_groups("heartbeat"))[0]["pending"] == 0)

    await poll(acknowledged, timeout=10, what="the stale entry acknowledged")
    assert presence._service.consumer.stale == 1
    entries = await presence_entries(redis)
    assert [c for c, status, _, _ in entries if status == "ONLINE"] == ["fine"]
    assert await presence._service.problems() == []


async def test_consumer_recreates_its_group_after_redis_loses_its_data(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    presence = await start_presence(settings.replace(heartbeat_interval=60))
    await redis.flushall()
    await redis.client_kill_filter(_type="normal", skipme=True)
    await redis.xadd("heartbeat", {"client": "back", "server": "ext"})

    async def applied() -> bool:
        await redis.xadd("heartbeat", {"client": "back", "server": "ext"})
        return await _has_status(redis, "ONLINE")

    await poll(applied, timeout=10, what="heartbeats applied again")
    await poll(lambda: _no_problems(presence), what="healthy")


async def test_start_refuses_a_key_of_the_wrong_type_with_a_clear_error(
    redis: Redis, settings: Settings
) -> None:
    await redis.set("heartbeat", "not a stream")
    with pytest.raises(RedisMisconfigured, match="WRONGTYPE"):
        await Presence(settings).start()


async def test_a_burst_larger_than_the_buffer_reaches_a_listener_that_keeps_up(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    presence = await start_presence(settings.replace(queue_size=10, heartbeat_interval=30))
    async with presence.changes() as events:
        pipe = redis.pipeline(transaction=False)
        for n in range(100):
            pipe.xadd("heartbeat", {"client": f"c{n}", "server": "ext"})
        await pipe.execute()
        received = {(await next_event(events)).client for _ in range(100)}
    assert received == {f"c{n}" for n in range(100)}


async def test_redis_restart_without_data_recovers_everything(
    start_redis: StartRedis, settings: Settings
) -> None:
    """Same port, no data, no CONFIG: consumer group, keyspace events and health come back."""
    own = start_redis()
    presence = Presence(settings.replace(redis_url=own.url, heartbeat_interval=60))
    await presence.start()
    try:
        own.stop()
        await poll(lambda: _problems(presence), timeout=10, what="outage reported")
        own.start()
        await poll(lambda: _no_problems(presence), timeout=15, what="recovered")
        client: Redis = presence._service.redis
        await client.xadd("heartbeat", {"client": "bob", "server": "ext"})
        await poll(lambda: exists(client, "online.clients.bob"), timeout=10, what="bob back")
        # The listener notices the lost connection at its own pace: wait for its resubscribe.
        await poll(lambda: _subscribed(client), timeout=10, what="listener resubscribed")
        await client.delete("online.clients.bob")  # only the listener can act in time

        async def offline() -> bool:
            entries = await client.xrange("presence")
            return any(f[b"status"] == b"OFFLINE" for _, f in entries)

        await poll(offline, timeout=5, what="OFFLINE from the keyspace listener")
    finally:
        await presence.close()


async def _subscribed(redis: Redis) -> bool:
    return bool(await redis.pubsub_numsub("__keyevent@0__:del") == [(b"__keyevent@0__:del", 1)])


async def _problems(presence: Presence) -> bool:
    return bool(await presence._service.problems())


async def test_entries_pending_on_a_dead_consumer_are_claimed_and_it_is_forgotten(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    """A server that read heartbeats and died before XACK: another one applies them."""
    await redis.xgroup_create("heartbeat", CONSUMER_GROUP, id="0", mkstream=True)
    for client in ("k1", "k2"):
        await redis.xadd("heartbeat", {"client": client, "server": "dead"})
    await redis.xreadgroup(CONSUMER_GROUP, "dead", {"heartbeat": ">"})  # never acknowledged
    presence = await start_presence(
        settings.replace(heartbeat_interval=2, claim_after=0.2, forget_after=0.5)
    )
    await poll(lambda: _online(presence, {"k1", "k2"}), timeout=5, what="claimed and applied")
    assert presence._service.claimer.claimed == 2

    async def forgotten() -> bool:
        consumers = await redis.xinfo_consumers("heartbeat", CONSUMER_GROUP)
        return [c["name"] for c in consumers] == [b"test-1"]

    await poll(forgotten, timeout=5, what="dead consumer removed")
    assert (await redis.xinfo_groups("heartbeat"))[0]["pending"] == 0


async def test_at_start_its_own_pending_entries_are_applied_once_even_if_one_fails(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    """A restarted consumer replays what it left pending, and a failing entry does
    not keep it from starting: it stays pending, for claims to retry."""
    await redis.xgroup_create("heartbeat", CONSUMER_GROUP, id="0", mkstream=True)
    await redis.hset("online.clients.broken", "field", "value")
    for client in ("broken", "fine"):
        await redis.xadd("heartbeat", {"client": client, "server": "ext"})
    await redis.xreadgroup(CONSUMER_GROUP, settings.server_id, {"heartbeat": ">"})
    presence = await start_presence(settings.replace(heartbeat_interval=30, claim_after=7))
    await poll(lambda: _has_status(redis, "ONLINE"), what="fine ONLINE")
    await poll(lambda: _no_problems(presence), what="healthy")
    assert (presence._service.consumer.applied, presence._service.consumer.failed) == (1, 1)
    assert (await redis.xinfo_groups("heartbeat"))[0]["pending"] == 1


async def test_a_script_call_redis_refuses_leaves_its_entries_pending_to_retry(
    redis: Redis, settings: Settings
) -> None:
    """Applying and acknowledging happen in one call: both or neither."""
    settings = settings.replace(heartbeat_interval=30, claim_after=0.001)
    transitions = Transitions(redis, settings)
    consumer = HeartbeatConsumer(redis, settings, transitions)
    claimer = Claimer(settings, transitions, consumer)
    await consumer.ensure_group()
    for client in ("m1", "m2"):
        await redis.xadd("heartbeat", {"client": client, "server": "s"})
    reply = await redis.xreadgroup(CONSUMER_GROUP, settings.server_id, {"heartbeat": ">"})
    entries = [(i, [b"client", f[b"client"], b"server", f[b"server"]]) for i, f in reply[0][1]]
    # Out of memory, Redis refuses any script that may write.
    await redis.config_set("maxmemory", 1)
    try:
        await consumer.apply(entries)
    finally:
        await redis.config_set("maxmemory", 0)
    assert (consumer.failed, consumer.applied) == (2, 0)
    assert await redis.xlen("presence") == 0
    assert (await redis.xinfo_groups("heartbeat"))[0]["pending"] == 2

    async def reclaimed() -> bool:
        await claimer.reclaim()
        return claimer.retried == 2

    await poll(reclaimed, what="the refused entries claimed")
    assert consumer.applied == 2
    assert [c for c, _, _, _ in await presence_entries(redis)] == ["m1", "m2"]
    assert (await redis.xinfo_groups("heartbeat"))[0]["pending"] == 0


async def _online(presence: Presence, clients: set[str]) -> bool:
    return {c.client for c in await presence.online()} == clients


async def test_keys_deleted_while_nobody_listened_get_their_offline_at_subscribe(
    redis: Redis, settings: Settings, start_presence: StartPresence
) -> None:
    slow = settings.replace(heartbeat_interval=60)  # deadlines far away: no sweeper help
    first = await start_presence(slow)
    await redis.xadd("heartbeat", {"client": "gone", "server": "ext"})
    await redis.xadd("heartbeat", {"client": "stays", "server": "ext"})
    await poll(lambda: truthy(first._service.consumer.applied == 2), what="both applied")
    await first.close()
    await redis.delete("online.clients.gone")  # no listener anywhere
    second = await start_presence(slow.replace(server_id="test-2"))
    assert second._service.listener.published == 1  # before start returned
    assert [(c, s) for c, s, _, _ in await presence_entries(redis)][-1] == ("gone", "OFFLINE")
    assert [c.client for c in await second.online()] == ["stays"]
