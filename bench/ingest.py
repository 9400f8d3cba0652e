"""Heartbeat ingestion: one presence process applying a burst of heartbeats, against
Redis's own ceiling for the same script call (EVALSHA written raw, pipelined);
with the steady load (bench/steady.py) reported under the same key."""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any

import redis

from presence import Settings

from .lua import SCRIPT_BATCH, heartbeat_call
from .procs import applied, drained, poll, presence_server, redis_server
from .redis_load import burst_commands, read_replies, resp, send_raw
from .scale import TTL_FACTOR, Scale
from .stats import cpu_seconds
from .steady import bench_steady


def bench_ingest(scale: Scale) -> dict[str, Any]:
    results: dict[str, Any] = {"burst": []}
    for clients in scale.ingest:
        # Rounds alternate the two sides, so that whatever else the machine
        # does weighs on both; the median round is reported.
        rounds = sorted((ingest_round(clients) for _ in range(scale.ingest_rounds)),
                        key=lambda r: r["ratio"])  # fmt: skip
        median = rounds[len(rounds) // 2]
        results["burst"].append(
            median | {"ratios": [r["ratio"] for r in rounds], "rounds": len(rounds)}
        )
        print(
            f"  ingest {clients}: {median['applied_per_s']:,}/s vs EVALSHA ceiling "
            f"{median['redis_evalsha_per_s']:,}/s (ratios {[r['ratio'] for r in rounds]}); "
            f"CPU: presence {median['server_cpu_s']} s, load {median['load_cpu_s']} s"
        )
    results["steady"] = bench_steady(scale)
    return results


def ingest_round(clients: int) -> dict[str, Any]:
    """One burst of heartbeats of ``clients`` random clients: Redis's ceiling, then
    one presence process, each applying as many heartbeats drawn the same way."""
    with redis_server() as (url, rport, rpid):
        r = redis.Redis(port=rport)
        redis_cpu0 = cpu_seconds(rpid)
        ceiling, heartbeats = script_ceiling(r, rport, clients)
        # Redis's CPU per heartbeat applied: the script's alone, against the
        # script's plus the stream reads, acknowledgements and XADDs presence needs.
        ceiling_redis_us = (cpu_seconds(rpid) - redis_cpu0) / heartbeats * 1e6
        r.flushall()
        packed = burst_commands(heartbeats, clients)
        with presence_server(url, "--heartbeat-interval", "5") as (port, pid):
            cpu0, redis_cpu0, t0 = cpu_seconds(pid), cpu_seconds(rpid), time.monotonic()
            # The load: this process's sending thread and its polling of Redis.
            load_cpu0 = time.process_time()
            sender = threading.Thread(target=send_raw, args=(rport, packed, heartbeats))
            sender.start()
            poll(drained(r, heartbeats), timeout=120, what="every heartbeat applied", every=0.005)
            seconds = time.monotonic() - t0
            sender.join()
            load_cpu = time.process_time() - load_cpu0
            # Acknowledged by the scripts: counted once their replies are read.
            poll(applied(port, heartbeats), timeout=5, what="the applied count")
            cpu = cpu_seconds(pid) - cpu0
            redis_us = (cpu_seconds(rpid) - redis_cpu0) / heartbeats * 1e6
    rate = heartbeats / seconds
    return {
        "clients": clients,
        "heartbeats": heartbeats,
        "applied_per_s": round(rate),
        "redis_evalsha_per_s": round(ceiling),
        "ratio": round(rate / ceiling, 3),
        "server_cpu_s": round(cpu, 2),
        "load_cpu_s": round(load_cpu, 2),
        "redis_cpu_us_per_heartbeat": round(redis_us, 1),
        "ceiling_redis_cpu_us_per_heartbeat": round(ceiling_redis_us, 1),
    }


def script_ceiling(r: redis.Redis, port: int, clients: int) -> tuple[float, int]:
    """(heartbeats/s, heartbeats applied) of Redis running the consumer's own script
    call, SCRIPT_BATCH heartbeats of random clients a call, pipelined ten deep.

    At least 100,000 heartbeats, so that the run is long enough to time; a
    burst applies as many, so that both sides create and refresh alike. Its
    lines carry no entry ids, so the ceiling does all that presence's calls
    do but acknowledge them. The calls are built beforehand and written raw:
    each declares its clients' keys, which a load generator's random
    placeholders (redis-benchmark's) could not match.
    """
    requests = max(1000, clients // SCRIPT_BATCH)
    settings = Settings(heartbeat_interval=5, ttl_factor=TTL_FACTOR)
    pick = random.Random(0)
    calls = []
    for _ in range(requests):
        batch = sorted({f"c{pick.randrange(clients):012d} ext 0" for _ in range(SCRIPT_BATCH)})
        calls.append(resp(*(w.encode() for w in heartbeat_call(r, settings, batch))))
    sock = socket.create_connection(("127.0.0.1", port))
    applied = 0
    started = time.perf_counter()
    for start in range(0, len(calls), 10):
        sock.sendall(b"".join(calls[start : start + 10]))
        # A reply is an array of one code per heartbeat: 1 + lines CRLFs.
        lines = sum(1 + c.count(b" ext 0") for c in calls[start : start + 10])
        read_replies(sock, 1, lines=lines)
    elapsed = time.perf_counter() - started
    sock.close()
    applied = sum(c.count(b" ext 0") for c in calls)
    return applied / elapsed, applied
