"""Hostile load against ``presence serve`` processes and a real Redis: half-sent
requests, floods of connections past the caps, malformed requests, dead
connections that still count.

The attacks run in their own processes, from 127.0.0.2, against a server
whose open-file limit they pass together; the legitimate clients connect
from 127.0.0.1. Whatever the attack, ``/healthz`` answers, new streams
open, connected clients keep their heartbeats (no OFFLINE), and the log
stays small.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import Redis, RedisServer, ServerProcess, open_events

ATTACK = Path(__file__).with_name("attack.py")
Spawn = Callable[..., ServerProcess]
#: The server's open-file limit: two attackers hold more connections than it.
OPEN_FILES = 1024
ATTACKERS = 2
CONNECTIONS = 700
LEGITIMATE = 20
#: Fast heartbeats, so that a stalled server would let keys expire within the attack.
FAST = ("--heartbeat-interval", "0.5", "--leave-grace", "1", "--request-timeout", "1")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: each probe must get past the attack itself.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample of ``/metrics``, by name and labels."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def offlines(redis: Redis, clients: set[str]) -> list[str]:
    entries = await redis.xrange("presence")
    return [
        fields[b"client"].decode()
        for _, fields in entries
        if fields[b"status"] == b"OFFLINE" and fields[b"client"].decode() in clients
    ]


async def probe(session: aiohttp.ClientSession, url: str, n: int) -> None:
    """``/healthz`` answers, and a new stream gets its snapshot, in time."""
    async with asyncio.timeout(3):
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200, await response.text()
        stream = await open_events(session, f"{url}/clients/probe-{n}/events")
        try:
            assert (await stream.next()).event == "snapshot"
        finally:
            stream.close()


Attack = Callable[..., Awaitable[tuple[dict[str, float], str]]]


@pytest.fixture
async def attack(
    spawn: Spawn, session: aiohttp.ClientSession, redis: Redis, redis_server: RedisServer
) -> AsyncIterator[Attack]:
    """``attack(mode, *serve_flags)``: a server with the legitimate clients
    connected, attacked for a while and probed throughout; returns the
    server's counters and what it logged meanwhile."""
    started: list[subprocess.Popen[str]] = []

    async def attack(mode: str, *flags: str) -> tuple[dict[str, float], str]:
        server = spawn("--redis-url", redis_server.url, *FAST, *flags, open_files=OPEN_FILES)
        await server.wait_healthy()
        clients = {f"user-{i}" for i in range(LEGITIMATE)}
        url = server.url
        streams = [await open_events(session, f"{url}/clients/{c}/events") for c in clients]
        logged = len(server.output())
        seconds = 6.0
        procs = [attacker(mode, server.port, seconds) for _ in range(ATTACKERS)]
        started.extend(procs)
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for n in range(int(seconds / 0.5) - 2):
            await probe(session, url, n)
            await asyncio.sleep(0.5)
        for proc in procs:
            stdout, _ = proc.communicate(timeout=30)
            assert json.loads(stdout.splitlines()[-1])["opened"] > 0
        assert await offlines(redis, clients) == []
        async with session.get(f"{url}/clients") as response:
            online = {c["client"] for c in (await response.json())["clients"]}
        assert clients <= online
        # The streams connected before the attack still get every event.
        final = await open_events(session, f"{url}/clients/final/events")
        for stream in streams:
            await stream.until(lambda e: e.event == "presence" and e.data["client"] == "final")
            stream.close()
        final.close()
        return await counters(session, url), server.output()[logged:]

    yield attack
    for proc in started:
        proc.kill()
        proc.wait()


def attacker(mode: str, port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, str(ATTACK), mode, "127.0.0.1", str(port)),
            *("--connections", str(CONNECTIONS), "--seconds", str(seconds)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def assert_quiet(log: str) -> None:
    assert "Traceback" not in log, log[-3000:]
    assert len(log.encode()) < 20_000, log[-3000:]


async def test_slowloris_past_the_per_address_cap(attack: Attack) -> None:
    found, log = await attack("slowloris", "--max-connections-per-address", "100")
    assert found["presence_connections_refused_total{reason=address}"] > 0
    assert found["presence_requests_timed_out_total"] > 0
    assert_quiet(log)


async def test_flood_past_the_connection_cap(attack: Attack) -> None:
    """No per-address cap: half-sent and idle connections make room for new ones."""
    found, log = await attack("flood", "--max-connections", "300")
    assert found["presence_connections_evicted_total"] > 0
    assert found["presence_http_connections_max"] == 300 + 64
    assert_quiet(log)


async def test_slowloris_at_the_default_caps(attack: Attack) -> None:
    """The default connection cap, lowered to what the open-file limit holds."""
    found, log = await attack("slowloris")
    assert found["presence_http_connections_max"] < OPEN_FILES
    evicted_or_late = found["presence_connections_evicted_total"]
    assert evicted_or_late + found["presence_requests_timed_out_total"] > 0
    assert_quiet(log)
