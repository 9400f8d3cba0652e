"""Hostile load against a ``presence serve`` process and a real Redis:
half-sent requests (slowloris) and floods of connections past the caps.

The attacks run in their own processes (``attack.py``), from 127.0.0.2,
against a server whose open-file limit they pass together; the legitimate
clients connect from 127.0.0.1. Whatever the attack, ``/healthz`` answers,
new streams get their snapshot, connected clients keep their heartbeats
(nobody is published OFFLINE) and their streams, and the log stays small
and free of tracebacks.

``python -m bench.hostile`` runs the same harness at full size.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from .support import Redis, RedisServer, ServerProcess, open_events

ATTACK = Path(__file__).with_name("attack.py")
#: Fast heartbeats, so that a stalled server would let keys expire within the attack.
FAST = ("--heartbeat-interval", "0.5", "--leave-grace", "1")
#: Seconds between two probes, and the longest one may take.
PROBE_EVERY = 0.5
PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Plan:
    mode: str  # slowloris or flood
    #: ``presence serve`` flags besides the Redis URL.
    flags: tuple[str, ...] = (*FAST, "--request-timeout", "1")
    #: The server's open-file limit (None: this process's).
    open_files: int | None = 1024
    attackers: int = 2
    connections: int = 700  #: per attacker
    seconds: float = 6.0
    clients: int = 20


@dataclass
class Report:
    #: Seconds per probe; None for one that failed or took over PROBE_TIMEOUT.
    healthz: list[float | None] = field(default_factory=list)
    streams: list[float | None] = field(default_factory=list)
    #: The legitimate clients published OFFLINE, and those missing from /clients.
    offline: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: Legitimate streams that did not get an event published after the attack.
    deaf: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    log: str = ""
    attackers: list[dict[str, int]] = field(default_factory=list)
    server_cpu: float = 0.0

    @property
    def failed_probes(self) -> int:
        return sum(p is None for p in [*self.healthz, *self.streams])


async def run_attack(plan: Plan, redis_url: str, workdir: Path) -> Report:
    """Start a server, connect the clients, attack, probe throughout; report."""
    report = Report()
    server = ServerProcess(
        ["--redis-url", redis_url, *plan.flags], workdir / "server.log", open_files=plan.open_files
    )
    server.start()
    procs: list[subprocess.Popen[str]] = []
    # A new connection per request: each probe must get past the attack itself.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    redis: Redis = aioredis.from_url(redis_url)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await server.wait_healthy()
            url = server.url
            clients = [f"user-{i}" for i in range(plan.clients)]
            streams = [await open_events(session, f"{url}/clients/{c}/events") for c in clients]
            logged = len(server.output())
            assert server.process is not None
            cpu = _cpu(server.process.pid)
            procs = [_attacker(plan, server.port) for _ in range(plan.attackers)]
            for proc in procs:
                assert proc.stdout is not None
                ready = await asyncio.to_thread(proc.stdout.readline)
                assert ready.strip() == "ready"
            end = time.monotonic() + plan.seconds - 1
            n = 0
            while time.monotonic() < end:
                await _probe(session, url, n, report)
                n += 1
                await asyncio.sleep(PROBE_EVERY)
            for proc in procs:
                stdout, _ = await asyncio.to_thread(proc.communicate, timeout=60)
                report.attackers.append(json.loads(stdout.splitlines()[-1]))
            report.server_cpu = _cpu(server.process.pid) - cpu
            entries = await redis.xrange("presence")
            report.offline = [
                f[b"client"].decode()
                for _, f in entries
                if f[b"status"] == b"OFFLINE" and f[b"client"].decode() in clients
            ]
            async with session.get(f"{url}/clients") as response:
                online = {c["client"] for c in (await response.json())["clients"]}
            report.missing = [c for c in clients if c not in online]
            # The streams connected before the attack still get every event.
            final = await open_events(session, f"{url}/clients/final/events")
            for stream in streams:
                try:
                    await stream.until(
                        lambda e: e.event == "presence" and e.data["client"] == "final"
                    )
                except (TimeoutError, EOFError, aiohttp.ClientError):
                    report.deaf += 1
                stream.close()
            final.close()
            report.counters = await _counters(session, url)
            report.log = server.output()[logged:]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        server.kill()
        await redis.aclose()
    return report


def _attacker(plan: Plan, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, str(ATTACK), plan.mode, "127.0.0.1", str(port)),
            *("--connections", str(plan.connections), "--seconds", str(plan.seconds)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


async def _probe(session: aiohttp.ClientSession, url: str, n: int, report: Report) -> None:
    """Time ``/healthz``, and a new stream until its snapshot."""
    loop = asyncio.get_running_loop()
    for kind, path in (("healthz", "/healthz"), ("streams", f"/clients/probe-{n}/events")):
        started = loop.time()
        took: float | None = None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                if kind == "healthz":
                    async with session.get(url + path) as response:
                        ok = response.status == 200
                else:
                    stream = await open_events(session, url + path)
                    ok = (await stream.next()).event == "snapshot"
                    stream.close()
            took = loop.time() - started if ok else None
        except (TimeoutError, AssertionError, aiohttp.ClientError):
            pass
        getattr(report, kind).append(took)


async def _counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample of ``/metrics``, by name and labels."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100


Attack = Callable[[Plan], Awaitable[Report]]


@pytest.fixture
def attack(redis: Redis, redis_server: RedisServer, tmp_path: Path) -> Attack:
    """``attack(plan)``: the report of a run, checked against what never may happen."""

    async def attack(plan: Plan) -> Report:
        report = await run_attack(plan, redis_server.url, tmp_path)
        assert report.failed_probes == 0, (report.healthz, report.streams)
        assert report.offline == []
        assert report.missing == []
        assert report.deaf == 0
        assert all(a["opened"] > 0 for a in report.attackers)
        assert "Traceback" not in report.log, report.log[-3000:]
        assert len(report.log.encode()) < 20_000, report.log[-3000:]
        return report

    return attack


async def test_slowloris_past_the_per_address_cap(attack: Attack) -> None:
    plan = Plan("slowloris", (*Plan.flags, "--max-connections-per-address", "100"))
    found = (await attack(plan)).counters
    assert found["presence_connections_refused_total{reason=address}"] > 0
    assert found["presence_requests_timed_out_total"] > 0


async def test_flood_past_the_connection_cap(attack: Attack) -> None:
    """No per-address cap: half-sent and idle connections make room for new ones."""
    found = (await attack(Plan("flood", (*Plan.flags, "--max-connections", "300")))).counters
    assert found["presence_connections_evicted_total"] > 0
    assert found["presence_http_connections_max"] == 300 + 64


async def test_slowloris_at_the_default_caps(attack: Attack) -> None:
    """The default connection cap, lowered to what the open-file limit holds."""
    found = (await attack(Plan("slowloris"))).counters
    assert found["presence_http_connections_max"] < 1024
    evicted = found["presence_connections_evicted_total"]
    assert evicted + found["presence_requests_timed_out_total"] > 0
