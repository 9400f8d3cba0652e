"""Hostile load against a ``presence serve`` process and a real Redis:
half-sent requests (slowloris) and floods of connections past the caps.

The attacks come from 127.0.0.2, past the server's open-file limit; the
legitimate clients connect from 127.0.0.1 (the harness is
``attack_harness.py``). Whatever the attack, ``/healthz`` answers,
new streams get their snapshot, connected clients keep their heartbeats
(nobody is published OFFLINE) and their streams, and the log stays small
and free of tracebacks.

``python -m bench.hostile`` runs the same harness at full size.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from .attack_harness import Plan, Report, run_attack
from .support import Redis, RedisServer

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
