"""The attack harness: a ``presence serve`` process on a given Redis, clients
connected from 127.0.0.1, and attackers in their own processes
(``attack.py``) from 127.0.0.2, together past the server's open-file limit.
Throughout the attack ``/healthz`` and a new stream's snapshot are probed,
each on a new connection; then the report: the probes' latencies, the
clients published OFFLINE or missing, the streams that went deaf, the
server's counters, its CPU, and what it logged.

``tests/test_attack.py`` checks the report; ``python -m bench.hostile`` runs
the harness at full size.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from .support import Redis, ServerProcess, open_events

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
