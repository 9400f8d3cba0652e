"""Presence on a Sentinel-managed Redis: a primary, a replica, three sentinels.

The primary is SIGKILLed under connected clients; the sentinels promote the
replica, and the servers follow it through ``redis+sentinel://``.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys

import aiohttp
import pytest
import redis.asyncio as aioredis

from presence import ConfigError, Settings
from presence.sentinel_url import parse_sentinel_url

from .servers import Spawn, events_of, health, listed, settled, start_server
from .support import Follower, Redis, follow, poll
from .topology import Sentinels

INTERVAL = 1.0
# Two intervals, as promised, and a second for scheduling on a busy machine.
CONVERGE = 2 * INTERVAL + 1.0


def contradictions(follower: Follower) -> list[str]:
    """Events that contradict what the follower was told before them: an
    ONLINE of a client it has online, an OFFLINE of one it has not. Only a
    snapshot (a reset) may change its view otherwise."""
    online: set[str] = set()
    wrong = []
    for event in follower.events:
        if event.event == "snapshot":
            online = {c["client"] for c in event.data["clients"]}
            continue
        client, status = event.data["client"], event.data["status"]
        if (status == "ONLINE") == (client in online):
            wrong.append(f"{status} {client} (id {event.id})")
        online.symmetric_difference_update({client})
    return wrong


async def test_servers_follow_a_sentinel_failover_and_converge(
    spawn: Spawn, sentinels: Sentinels, session: aiohttp.ClientSession
) -> None:
    one = await start_server(spawn, sentinels.url, "node-1")
    two = await start_server(spawn, sentinels.url, "node-2")
    alice = await follow(session, events_of(one, "alice"))
    bob = await follow(session, events_of(two, "bob"))
    carol = await follow(session, events_of(one, "carol"))
    everyone = {"alice", "bob", "carol"}
    await settled((one, two), lambda s: listed(session, s), everyone, timeout=10, what="online")
    await poll(lambda: _views({alice: everyone - {"alice"}, bob: everyone - {"bob"}}))

    seen: list[int] = []

    async def sample() -> None:
        while True:
            seen.extend([await health(session, s) for s in (one, two)])
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.to_thread(sentinels.kill_primary)
        await settled(
            (one, two), lambda s: listed(session, s), everyone, timeout=CONVERGE, what="converged"
        )
        await settled((one, two), lambda s: health(session, s), 200, timeout=CONVERGE, what="200")
    finally:
        sampler.cancel()
    assert 503 in seen, "healthz reported no outage while the primary was down"

    # Life goes on on the new primary: a leave and a join reach everyone.
    carol.close()
    dave = await follow(session, events_of(two, "dave"))
    now = {"alice", "bob", "dave"}
    await settled((one, two), lambda s: listed(session, s), now, timeout=CONVERGE, what="churn")
    await poll(lambda: _views({alice: now - {"alice"}, bob: now - {"bob"}, dave: now - {"dave"}}))
    for follower in (alice, bob, dave):
        assert not follower.ended
        assert contradictions(follower) == [], follower.events
    redis: Redis = aioredis.from_url(f"redis://127.0.0.1:{sentinels.primary_port()}/0")
    async with redis:
        entries = await redis.xrange("presence")
        for client in now:
            statuses = [f[b"status"] for _, f in entries if f[b"client"] == client.encode()]
            # Per client, the stream alternates; a lost write may only drop a tail.
            assert all(a != b for a, b in itertools.pairwise(statuses)), (client, statuses)
    for follower in (alice, bob, dave):
        follower.close()
    for server in (one, two):
        assert server.process is not None
        assert server.process.poll() is None
        assert "Traceback" not in server.output(), server.output()


async def _views(expected: dict[Follower, set[str]]) -> bool:
    return all(f.view() == v for f, v in expected.items())


async def test_status_reads_presence_through_the_sentinels(
    spawn: Spawn, sentinels: Sentinels, session: aiohttp.ClientSession
) -> None:
    server = await start_server(spawn, sentinels.url, "node-1")
    alice = await follow(session, events_of(server, "alice"))
    await settled((server,), lambda s: listed(session, s), {"alice"}, timeout=10, what="alice")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "presence", "status", "--redis-url", sentinels.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    alice.close()
    assert done.returncode == 0, done.stderr
    assert "alice" in done.stdout, done.stdout
    assert "node-1" in done.stdout, done.stdout


def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials() -> None:
    url = "rediss+sentinel://app:s3cret@10.0.0.1:26379,[::1]:26380/main/2?sentinel_password=pw"
    target = parse_sentinel_url(url)
    assert target.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (target.service, target.db, target.tls) == ("main", 2, True)
    assert (target.username, target.password, target.sentinel_password) == ("app", "s3cret", "pw")
    shown = Settings(redis_url=url).masked_redis_url
    assert "s3cret" not in shown
    assert "pw" not in shown.split("?")[1]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379", "names the primary's service"),
        ("redis+sentinel://h/main", "a sentinel is host:port"),
        ("redis+sentinel://h:26379/main/x", "database must be a number"),
        ("redis+sentinel://h:26379/main?pool=1", "unknown option 'pool'"),
    ],
)
def test_a_bad_sentinel_url_is_refused_with_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(redis_url=url)


def test_the_cli_refuses_a_bad_sentinel_url_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "presence", "serve", "--redis-url", "redis+sentinel://h/m"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "sentinel is host:port" in done.stderr
