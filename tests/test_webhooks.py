"""Webhooks: each transition POSTed once across servers, signed, retried, and
taken over from a server killed mid-delivery.

The receiver runs in the test process and records every request; what it
answered 2xx is what was delivered. Delivered event ids are compared with
the streams themselves (``XRANGE``): each entry exactly once, each stream's
entries in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from presence import Settings, __version__
from presence.cli import main
from presence.errors import ConfigError
from presence.shards import shard_of, shard_tags
from presence.transitions.scripts import Transitions
from presence.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    delivery,
    sender,
    signature,
    verify,
)
from presence.webhooks.payload import ENVELOPE, Source, body, split
from presence.webhooks.sender import refuses
from presence.webhooks.streams import BUSY, TAKEN, WebhookStreams

from .asyncapi import validate
from .servers import Spawn
from .support import (
    Redis,
    RedisServer,
    Serve,
    ServerProcess,
    StartPresence,
    metric,
    open_events,
    poll,
    redis_ms,
)
from .topology import SHARDS, Cluster

SECRET = "webhook-secret"


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int = 0

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)["events"]
        return events


@dataclass
class Receiver:
    """Answers the statuses of ``script`` in turn, then ``status``; while
    ``hold`` is set, holds each request until it is cleared."""

    status: int = 200
    hold: asyncio.Event | None = None
    script: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    #: Requests to ``/moved``.
    redirected: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        got = Request(dict(request.headers), await request.read())
        self.requests.append(got)
        while self.hold is not None and not self.hold.is_set():
            await self.hold.wait()
        got.status = self.script.pop(0) if self.script else self.status
        return web.json_response({}, status=got.status)

    @property
    def delivered(self) -> list[dict[str, Any]]:
        """The events of the requests answered 2xx, in the order they came."""
        return [e for r in self.requests if 200 <= r.status < 300 for e in r.events]

    def delivered_ids(self) -> set[str]:
        return {e["id"] for e in self.delivered}


async def receiver(serve: Serve) -> Receiver:
    """A receiver at ``/hook``; ``/moved`` redirects there (302)."""
    found = Receiver()

    async def moved(request: web.Request) -> web.Response:
        found.redirected += 1
        raise web.HTTPFound(found.url)

    app = web.Application()
    app.router.add_post("/hook", found.handle)
    app.router.add_post("/moved", moved)
    server = await serve(app)
    found.url = str(server.make_url("/hook"))
    return found


async def hooked(
    spawn: Spawn, redis_server: RedisServer, found: Receiver, count: int, *extra: str
) -> list[ServerProcess]:
    """``count`` healthy servers posting to ``found``, ids ``hook-<i>``."""
    flags = ["--redis-url", redis_server.url, "--heartbeat-interval", "0.5"]
    flags += ["--leave-grace", "0.2", "--webhook-url", found.url, *extra]
    servers = [spawn(*flags, "--server-id", f"hook-{i}") for i in range(count)]
    await asyncio.gather(*(s.wait_healthy() for s in servers))
    return servers


async def entries(redis: Redis, streams: Iterable[str]) -> dict[str, list[str]]:
    """Each stream's entry ids, as Redis holds them."""
    return {s: [e[0].decode() for e in await redis.xrange(s)] for s in streams}


def check_exactly_once(found: Receiver, expected: dict[str, list[str]]) -> None:
    """Every entry delivered once, nothing else; each stream's in order."""
    ids = Counter(e["id"] for e in found.delivered)
    wanted = {f"{s}/{entry}" for s, ids in expected.items() for entry in ids}
    assert set(ids) == wanted
    assert [i for i, n in ids.items() if n > 1] == []
    for stream, ordered in expected.items():
        assert [e["entry"] for e in found.delivered if e["stream"] == stream] == ordered


async def all_delivered(found: Receiver, redis: Redis, streams: Iterable[str]) -> bool:
    wanted = {f"{s}/{e}" for s, ids in (await entries(redis, streams)).items() for e in ids}
    return bool(wanted) and wanted <= found.delivered_ids()


def test_signature_matches_the_documented_recipe() -> None:
    body = b'{"time_ms":1,"events":[]}'
    signed = signature(SECRET, 1795364347, body)
    import hashlib
    import hmac

    mac = hmac.new(SECRET.encode(), b"1795364347." + body, hashlib.sha256).hexdigest()
    assert signed == f"sha256={mac}"
    assert verify(SECRET, body, "1795364347", signed, now=1795364347 + 10)
    assert not verify(SECRET, body + b" ", "1795364347", signed, now=1795364347)
    assert not verify(SECRET, body, "1795364347", signed, now=1795364347 + 3600)  # replayed
    assert not verify("other", body, "1795364347", signed, now=1795364347)


async def test_three_servers_with_churn_post_each_transition_once(
    spawn: Spawn, serve: Serve, redis: Redis, redis_server: RedisServer
) -> None:
    found = await receiver(serve)
    servers = await hooked(spawn, redis_server, found, 3, "--webhook-secret", SECRET)
    rooms = ["lobby", "den"]
    rng = random.Random(7)

    async def churn(session: aiohttp.ClientSession, client: str) -> None:
        for _ in range(3):  # connects, leaves, and comes back elsewhere
            server = rng.choice(servers)
            room = rng.choice(rooms)
            data = json.dumps({"n": rng.randrange(100)})
            url = f"{server.url}/clients/{client}/events?room={room}&data={data}"
            stream = await open_events(session, url)
            await stream.until(lambda e: e.event == "snapshot")
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            stream.close()
            await asyncio.sleep(rng.uniform(0.0, 0.5))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(churn(session, f"c{i}") for i in range(12)))
        # A member's data changes: one UPDATE.
        member = await open_events(session, f"{servers[0].url}/clients/z/events?room=lobby")
        await member.until(lambda e: e.event == "snapshot")

        async def member_of_lobby() -> bool:
            joined: bool = await redis.hexists("room.{lobby}.members", "z")
            return joined

        await poll(member_of_lobby, what="z in the lobby")
        async with session.put(
            f"{servers[1].url}/rooms/lobby/clients/z/data", json={"status": "away"}
        ) as response:
            assert response.status in (200, 204), await response.text()
        member.close()

    async def everyone_offline() -> bool:
        return await redis.hlen("online.servers") == 0 and not await redis.hlen(
            "room.{lobby}.members"
        )

    await poll(everyone_offline, timeout=15, what="everyone offline")
    streams = ["presence", *(f"room.{{{r}}}.presence" for r in rooms)]
    await poll(lambda: all_delivered(found, redis, streams), timeout=15, what="all posted")
    check_exactly_once(found, await entries(redis, streams))
    assert {e["status"] for e in found.delivered if e["kind"] == "room"} >= {
        "ONLINE",
        "OFFLINE",
        "UPDATE",
    }
    for request in found.requests:
        headers = request.headers
        assert verify(SECRET, request.body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
        validate("WebhookBody", json.loads(request.body))
        named = ("Content-Type", "User-Agent", TIMESTAMP_HEADER, SIGNATURE_HEADER)
        validate("WebhookHeaders", {k: headers[k] for k in named})
    # Delivered rooms leave the index; only the marker stays.
    assert await redis.zrangebyscore("rooms.due", "+inf", "+inf") == [b"#"]
    async with aiohttp.ClientSession() as session:
        ok = 0.0
        for server in servers:
            assert await metric(session, server.url, "presence_webhook_lag_seconds") == 0
            deliveries = r'presence_webhook_deliveries_total\{result="%s"\}'
            assert await metric(session, server.url, deliveries % "dropped") == 0
            assert await metric(session, server.url, deliveries % "rejected") == 0
            ok += await metric(session, server.url, deliveries % "ok")
        assert ok == len(found.delivered)


async def test_a_failing_receiver_is_retried_until_it_recovers(
    start_presence: StartPresence, serve: Serve, redis: Redis, settings: Settings
) -> None:
    found = await receiver(serve)
    found.status = 500
    presence = await start_presence(
        settings.replace(leave_grace=0.1, webhook_url=found.url, webhook_events="global")
    )
    hooks = presence._service.webhooks
    assert hooks is not None
    async with presence.track("alice"):
        await poll(lambda: asyncio.sleep(0, len(found.requests) >= 3), what="retries")
        assert await presence.status("alice") is not None  # presence never waits for it
    await poll(lambda: _none_online(redis), what="alice's OFFLINE, the receiver still down")
    # The lag is the waiting ONLINE's age, however often its post is retried.
    online_ms = found.requests[0].events[0]["time_ms"]
    assert hooks.lag > 0
    assert hooks.lag >= (await redis_ms(redis) - online_ms) / 1000 - 0.5
    # Each attempt is dated when it is sent.
    stamps = [json.loads(r.body)["time_ms"] for r in found.requests[:3]]
    assert stamps == sorted(set(stamps))
    found.status = 200
    await poll(lambda: all_delivered(found, redis, ["presence"]), timeout=10, what="delivered")
    delivered = [(e["client"], e["status"]) for e in found.delivered]
    assert delivered == [("alice", "ONLINE"), ("alice", "OFFLINE")]
    assert hooks.retried >= 3
    # Counted once the answer is read, a moment after the receiver sent it.
    await poll(lambda: asyncio.sleep(0, hooks.ok == 2), what="both counted ok")
    await poll(lambda: asyncio.sleep(0, hooks.lag == 0), what="no lag once caught up")
    assert TIMESTAMP_HEADER not in found.requests[0].headers  # no secret: unsigned
    assert found.requests[0].headers["User-Agent"] == f"presence/{__version__}"


async def test_a_server_killed_mid_delivery_loses_nothing(
    spawn: Spawn, serve: Serve, redis: Redis, redis_server: RedisServer
) -> None:
    found = await receiver(serve)
    found.hold = asyncio.Event()
    servers = await hooked(spawn, redis_server, found, 2)
    async with aiohttp.ClientSession() as session:
        members = [
            await open_events(session, f"{servers[i % 2].url}/clients/k{i}/events?room=hall")
            for i in range(6)
        ]

        async def held() -> Any:
            pending = await redis.xpending("presence", "webhooks")
            return pending if pending["pending"] and found.requests else None

        pending = await poll(held, what="a post held")
        held_by = next(iter(c["name"].decode() for c in pending["consumers"]))
        victim = servers[int(held_by.rsplit("-", 1)[1])]
        in_flight = await redis.xpending_range("presence", "webhooks", "-", "+", 100, held_by)
        assert in_flight
        victim.kill()  # SIGKILL, its batch still in flight
        after_kill = len(found.requests)
        survivor = servers[1 - servers.index(victim)]
        for member in members:
            member.close()
    found.hold.set()
    await poll(lambda: _none_online(redis), timeout=15, what="everyone offline")
    names = ["presence", "room.{hall}.presence"]
    await poll(lambda: all_delivered(found, redis, names), timeout=20, what="all posted")
    expected = await entries(redis, names)
    wanted = {f"{s}/{e}" for s, ids in expected.items() for e in ids}
    assert found.delivered_ids() == wanted
    for stream, ordered in expected.items():
        seen = [e["entry"] for e in found.delivered if e["stream"] == stream]
        assert sorted(set(seen), key=seen.index) == ordered  # first deliveries in order
    # The survivor took over the killed server's batch, and posted it.
    taken_over = {f"presence/{p['message_id'].decode()}" for p in in_flight}
    later = {e["id"] for r in found.requests[after_kill:] if r.status == 200 for e in r.events}
    assert taken_over <= later
    assert survivor.process is not None
    assert survivor.process.poll() is None


async def _none_online(redis: Redis) -> bool:
    online: int = await redis.hlen("online.servers")
    return online == 0


async def test_entries_trimmed_before_they_were_posted_are_counted(
    redis: Redis, settings: Settings
) -> None:
    streams = WebhookStreams(Transitions(redis, settings), settings, rooms=True, presence=True)
    await streams.prepare()
    source = streams.global_source
    for i in range(30):
        await redis.xadd("presence", {"client": f"c{i}", "status": "ONLINE", "server": "s"})
    (taken,) = await streams.take([source], 10)  # in flight, then trimmed under it
    assert (taken.state, taken.dropped, len(taken.entries)) == (TAKEN, 0, 10)
    await redis.xtrim("presence", maxlen=15, approximate=False)  # the 10 taken and 5 never read
    (again,) = await streams.take([source], 10)
    assert (again.state, again.dropped, again.entries) == (TAKEN, 10, [])
    (rest,) = await streams.take([source], 100)
    assert (rest.dropped, len(rest.entries)) == (5, 15)
    assert rest.entries[0][1][1] == b"c15"
    # An empty room's stream is kept while its entries wait.
    await redis.zadd("rooms.due", {"#": "+inf"})
    hall = "room.{hall}.presence"
    await redis.xadd(hall, {"room": "hall", "client": "a", "status": "OFFLINE", "server": "s"})
    await redis.xgroup_create(hall, "webhooks", id="0")
    await redis.pexpire(hall, 1000)
    (room,) = await streams.take([Source(hall, "hall")], 10)
    assert (room.state, len(room.entries)) == (TAKEN, 1)
    assert await redis.pttl(hall) > 3_000_000
    # Another server's batch is left to it until it has been idle CLAIM_AFTER.
    other_settings = settings.replace(server_id="test-2")
    other = WebhookStreams(
        Transitions(redis, other_settings), other_settings, rooms=True, presence=True
    )
    (busy,) = await other.take([source], 100)
    assert (busy.state, busy.oldest) == (BUSY, rest.entries[0][0].decode())


async def test_on_a_cluster_each_shard_posts_its_streams(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, serve: Serve
) -> None:
    found = await receiver(serve)
    server = spawn(
        "--redis-url", cluster.url, "--server-id", "hook-c", "--heartbeat-interval", "0.5",
        "--leave-grace", "0.2", "--webhook-url", found.url,
    )  # fmt: skip
    await server.wait_healthy()
    clients, rooms = ["ann", "bo", "cy"], ["lobby", "den"]
    async with aiohttp.ClientSession() as session:
        members = [
            await open_events(session, f"{server.url}/clients/{c}/events?room={r}")
            for c in clients
            for r in rooms
        ]
        for member in members:
            member.close()

    def tag(id: str) -> str:
        return shard_tags(SHARDS)[shard_of(id, SHARDS)]

    streams = {f"{{{tag(c)}}}.presence" for c in clients}
    streams |= {f"{{{tag(r)}}}.room.{{{r}}}.presence" for r in rooms}

    async def delivered() -> bool:
        expected = await entries(cluster_redis, streams)
        return all(len(ids) >= 2 for ids in expected.values()) and await all_delivered(
            found, cluster_redis, streams
        )

    await poll(delivered, timeout=15, what="every shard's transitions posted")
    check_exactly_once(found, await entries(cluster_redis, streams))
    server.terminate()
    assert "webhook sender" not in server.output()  # no shard's loop failed


def test_bad_webhook_flags_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for flags, message in [
        (["--webhook-url", "ftp://x"], "webhook url must look like https://host[:port]/path"),
        (["--webhook-events", "some"], "invalid choice: 'some'"),
    ]:
        try:
            code = main(["serve", *flags])
        except SystemExit as exited:  # argparse's own errors
            code = int(exited.code or 0)
        assert code == 2
        err = capsys.readouterr().err
        assert message in err
        assert "Traceback" not in err
    with pytest.raises(ConfigError, match="webhook events must be one of global, rooms, all"):
        Settings.from_env({"PRESENCE_WEBHOOK_EVENTS": "both"})
    shown = repr(Settings(webhook_url="https://u:pw@hooks.example/p", webhook_secret=SECRET))
    assert SECRET not in shown
    assert "pw" not in shown


async def test_embedded_in_memory_posts_global_and_room_transitions(
    start_presence: StartPresence, serve: Serve
) -> None:
    found = await receiver(serve)
    fast = Settings(heartbeat_interval=0.4, leave_grace=0.1, webhook_url=found.url)
    presence = await start_presence(fast)
    async with presence.track("alice", rooms=["lobby"], data={"status": "here"}):
        await poll(lambda: asyncio.sleep(0, len(found.delivered) >= 2), what="ONLINEs")
    await poll(lambda: asyncio.sleep(0, len(found.delivered) >= 4), what="OFFLINEs")
    assert sorted((e["kind"], e["status"], e.get("data")) for e in found.delivered) == [
        ("global", "OFFLINE", None),
        ("global", "ONLINE", None),
        ("room", "OFFLINE", None),
        ("room", "ONLINE", {"status": "here"}),
    ]


async def test_a_room_named_webhooks_is_posted(
    start_presence: StartPresence, serve: Serve, settings: Settings
) -> None:
    # Its index entry, '#webhooks', is no marker: the marker is '#' alone.
    found = await receiver(serve)
    hooked = settings.replace(leave_grace=0.1, webhook_url=found.url, webhook_events="rooms")
    presence = await start_presence(hooked)
    async with presence.track("alice", rooms=["webhooks"]):
        await poll(lambda: asyncio.sleep(0, found.delivered), what="the room's ONLINE")
    await poll(lambda: asyncio.sleep(0, len(found.delivered) >= 2), what="the room's OFFLINE")
    assert [(e["room"], e["client"], e["status"]) for e in found.delivered] == [
        ("webhooks", "alice", "ONLINE"),
        ("webhooks", "alice", "OFFLINE"),
    ]


async def test_turned_off_one_command_removes_the_marker_and_the_index(
    start_presence: StartPresence,
    serve: Serve,
    redis: Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = await receiver(serve)
    found.status = 500  # the rooms stay in the index
    hooked = await start_presence(settings.replace(webhook_url=found.url))
    with caplog.at_level(logging.WARNING, logger="presence.webhooks"):
        plain = await start_presence(settings.replace(server_id="test-2", leave_grace=0.1))
    warned = [r.getMessage() for r in caplog.records if r.name == "presence.webhooks"]
    assert len(warned) == 1
    assert "ZREMRANGEBYSCORE rooms.due +inf +inf" in warned[0]
    async with plain.track("alice", rooms=["lobby", "den"]):

        async def indexed() -> bool:
            return set(await redis.zrangebyscore("rooms.due", "+inf", "+inf")) == {
                b"#",
                b"#lobby",
                b"#den",
            }

        await poll(indexed, what="both rooms in the webhooks' index")
        await hooked.close()  # every server's webhooks off
        assert await redis.zremrangebyscore("rooms.due", "+inf", "+inf") == 3
        # What stays is the sweeper's index of rooms with members, never due at +inf.
        left = await redis.zrange("rooms.due", 0, -1, withscores=True)
        assert sorted(m for m, _ in left) == [b"den", b"lobby"]
        assert all(math.isfinite(score) for _, score in left)
    # Alice's room OFFLINEs index nothing any more.
    await poll(lambda: exists_not(redis, "rooms.due"), what="the rooms swept out")
    assert await redis.xlen("room.{lobby}.presence") == 2


async def exists_not(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_a_batch_refused_for_good_is_given_up_and_the_stream_goes_on(
    start_presence: StartPresence,
    serve: Serve,
    redis: Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [refuses(s) for s in (400, 404, 413, 408, 425, 429, 500, 503, 302)] == [
        True, True, True, False, False, False, False, False, False,
    ]  # fmt: skip
    monkeypatch.setattr(sender, "FIRST_BACKOFF", 0.01)
    found = await receiver(serve)
    # Two "later"s do not count; five refusals in a row give the batch up.
    found.script = [429, 503, 400, 400, 400, 400, 400]
    presence = await start_presence(
        settings.replace(leave_grace=0.1, webhook_url=found.url, webhook_events="global")
    )
    hooks = presence._service.webhooks
    assert hooks is not None
    with caplog.at_level(logging.ERROR, logger="presence.webhooks.sender"):
        async with presence.track("alice"):
            await poll(lambda: asyncio.sleep(0, hooks.rejected), what="the ONLINE given up")
    await poll(lambda: asyncio.sleep(0, found.delivered), what="the OFFLINE after it")
    assert len(found.requests) == 8
    assert {e["status"] for r in found.requests[:7] for e in r.events} == {"ONLINE"}
    assert [(e["client"], e["status"]) for e in found.delivered] == [("alice", "OFFLINE")]
    await poll(lambda: asyncio.sleep(0, hooks.ok == 1), what="the OFFLINE counted ok")
    assert (hooks.rejected, hooks.retried, hooks.ok) == (1, 6, 1)
    assert (await redis.xpending("presence", "webhooks"))["pending"] == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "presence.webhooks.sender"]
    assert "refused a request 5 times in a row (HTTP 400)" in line


async def test_a_redirect_is_not_followed(
    start_presence: StartPresence,
    serve: Serve,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sender, "FIRST_BACKOFF", 0.01)
    found = await receiver(serve)
    moved = found.url.replace("/hook", "/moved")
    with caplog.at_level(logging.WARNING, logger="presence.webhooks.sender"):
        presence = await start_presence(
            settings.replace(webhook_url=moved, webhook_events="global")
        )
        async with presence.track("alice"):
            await poll(lambda: asyncio.sleep(0, found.redirected >= 3), what="retries")
    assert found.requests == []
    hooks = presence._service.webhooks
    assert hooks is not None
    assert (hooks.ok, hooks.rejected) == (0, 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "presence.webhooks.sender"]
    assert f"HTTP 302, a redirect (not followed) to {found.url}" in lines[0]


def test_a_body_is_split_to_stay_within_its_cap() -> None:
    events = [b'{"n":%d}' % i for i in range(10)] + [b"x" * 100]
    limit = ENVELOPE + 3 * len(events[0]) + 2  # three events and their commas
    parts = split(events, limit)
    assert [list(p) for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9], [10]]
    for part in parts[:-1]:
        chunk = events[part.start : part.stop]
        made = body(chunk, 2**63)
        assert len(made) <= limit
        assert json.loads(made) == {"time_ms": 2**63, "events": [json.loads(e) for e in chunk]}
    assert split([], limit) == []


async def test_a_batch_over_the_cap_goes_in_several_requests_in_order(
    start_presence: StartPresence,
    serve: Serve,
    redis: Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "MAX_BODY", 700)
    found = await receiver(serve)
    found.hold = asyncio.Event()  # the ONLINEs pile up behind the first request
    presence = await start_presence(
        settings.replace(webhook_url=found.url, webhook_events="global")
    )
    async with contextlib.AsyncExitStack() as held:
        await held.enter_async_context(presence.track("first"))
        await poll(lambda: asyncio.sleep(0, found.requests), what="the first request")
        for i in range(8):
            await held.enter_async_context(presence.track(f"c{i}"))
        await poll(lambda: _online(redis, 9), what="everyone online")
        found.hold.set()
        await poll(lambda: all_delivered(found, redis, ["presence"]), what="all posted")
    check_exactly_once(found, await entries(redis, ["presence"]))
    assert len(found.requests) > 2
    assert all(len(r.body) <= 700 for r in found.requests)


async def _online(redis: Redis, count: int) -> bool:
    online: int = await redis.hlen("online.servers")
    return online >= count


async def test_idle_webhook_consumers_are_removed(
    start_presence: StartPresence, serve: Serve, redis: Redis, settings: Settings
) -> None:
    found = await receiver(serve)
    presence = await start_presence(
        settings.replace(leave_grace=0.1, webhook_url=found.url, forget_after=0.5)
    )
    streams = ["presence", "room.{lobby}.presence"]
    async with presence.track("alice", rooms=["lobby"]):
        await poll(lambda: asyncio.sleep(0, len(found.delivered) >= 2), what="the ONLINEs")
        for stream in streams:  # a server gone for good, with nothing pending
            await redis.xgroup_createconsumer(stream, "webhooks", "gone-1")

        async def idle_long() -> bool:
            # Idle past forget_after where it is still listed (the presence
            # stream's may be removed as soon as it is).
            for stream in streams:
                found = await redis.xinfo_consumers(stream, "webhooks")
                if any(c["name"] == b"gone-1" and c["idle"] < 500 for c in found):
                    return False
            return True

        # A room stream's consumers go when it is next looked at (its OFFLINE).
        await poll(idle_long, what="gone-1 idle for forget_after")
    await poll(lambda: asyncio.sleep(0, len(found.delivered) >= 4), what="the OFFLINEs")

    async def forgotten() -> bool:
        for stream in streams:
            names = {c["name"] for c in await redis.xinfo_consumers(stream, "webhooks")}
            if b"gone-1" in names or b"test-1" not in names:
                return False
        return True

    await poll(forgotten, what="gone-1 removed from both groups, test-1 kept")


async def test_transitions_published_while_starting_are_posted(
    start_presence: StartPresence, serve: Serve, redis: Redis, settings: Settings
) -> None:
    # A client announced online whose key was deleted while no server ran:
    # the keyspace listener's start publishes its OFFLINE, before any loop runs.
    found = await receiver(serve)
    await redis.zadd("online.deadlines", {"early": await redis_ms(redis) + 60_000})
    await redis.hset("online.servers", "early", "gone")
    await start_presence(settings.replace(webhook_url=found.url))
    await poll(lambda: asyncio.sleep(0, found.delivered), what="the OFFLINE posted")
    assert [(e["client"], e["status"]) for e in found.delivered] == [("early", "OFFLINE")]
