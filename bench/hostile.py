"""Hostile load at full size: ``presence serve`` at its defaults, 20 clients
connected, and two attacking processes of 10,100 connections each from
127.0.0.2, together past the server's open-file limit.

    python -m bench.hostile [--mode slowloris|flood|both] [--connections 10100] [--seconds 20]

The harness is ``tests/attack_harness.py`` (see its docstring), the one
``tests/test_attack.py`` runs; here the server keeps every default (the
request deadline, the caps) and the probes' latencies are reported:
``/healthz`` and a new stream's snapshot, each on a new connection, every
0.5 s. Then: the clients published OFFLINE (none is expected), the server's
counters, its CPU, and what it logged.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.attack_harness import FAST, Plan, run_attack
from tests.support import RedisServer

from .stats import header, percentile, write_results


def summary(values: list[float | None]) -> dict[str, Any]:
    ok = [v for v in values if v is not None]
    return {
        "probes": len(values),
        "failed": len(values) - len(ok),
        "p50_ms": round(percentile(ok, 50) * 1000, 1) if ok else None,
        "p99_ms": round(percentile(ok, 99) * 1000, 1) if ok else None,
        "max_ms": round(max(ok) * 1000, 1) if ok else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--mode", choices=("slowloris", "flood", "both"), default="both")
    parser.add_argument("--connections", type=int, default=10_100, help="per attacker")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    started = time.time()
    results = header("hostile", " ".join(["python -m bench.hostile", *sys.argv[1:]]), started)
    workdir = Path(tempfile.mkdtemp(prefix="presence-hostile-"))
    modes = ("slowloris", "flood") if args.mode == "both" else (args.mode,)
    failed = False
    for mode in modes:
        redis = RedisServer(workdir)
        redis.start()
        try:
            plan = Plan(mode, FAST, None, 2, args.connections, args.seconds)
            report = asyncio.run(run_attack(plan, redis.url, workdir))
        finally:
            redis.stop()
        counters = {k: v for k, v in report.counters.items() if _guarded(k)}
        row = {
            "mode": mode,
            "attack": report.attackers,
            "healthz": summary(report.healthz),
            "new_stream": summary(report.streams),
            "offline": len(report.offline),
            "missing": len(report.missing),
            "deaf_streams": report.deaf,
            "server_cpu_s": round(report.server_cpu, 2),
            "log_bytes": len(report.log.encode()),
            "tracebacks": report.log.count("Traceback"),
            "counters": counters,
        }
        results[mode] = row
        print(f"{mode}: {row}")
        failed |= bool(report.failed_probes or report.offline or report.missing or report.deaf)
    print(f"wrote {write_results(results)}")
    return 1 if failed else 0


def _guarded(name: str) -> bool:
    return name.startswith(("presence_http", "presence_conn", "presence_requests", "presence_acc"))


if __name__ == "__main__":
    sys.exit(main())
