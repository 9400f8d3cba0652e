"""The CPU one presence process spends on a steady heartbeat load, and the ONLINE
latency under it: from a heartbeat's XADD to the ``ONLINE`` event at an SSE client."""

from __future__ import annotations

import time
from typing import Any

import redis

from .procs import applied, poll, presence_server, redis_server
from .redis_load import publisher
from .scale import Scale
from .sse_load import Load
from .stats import cpu_seconds, curve, percentile


def bench_steady(scale: Scale) -> dict[str, Any]:
    clients, interval = scale.steady_clients, scale.steady_interval
    flags = ("--heartbeat-interval", str(interval))
    with redis_server() as (url, _, _), presence_server(url, *flags) as (port, pid):
        # The watcher first: starting a process mid-measurement would be measured.
        online = rb'"client":"b(\d+)x\d+","status":"ONLINE"'
        watcher = Load(port, ["/clients/watcher/events"], processes=1, pattern=online)
        watcher.ready()
        pub = publisher(url, clients, interval, scale.steady_seconds + 2 * interval + 5)
        # The first round makes everyone ONLINE; measure after it.
        poll(applied(port, clients), timeout=60, what="the first round")
        time.sleep(3)  # the first round's ONLINEs fanned out: steady state from here
        watcher.reset()
        r = redis.Redis.from_url(url)
        cpu0, pub_cpu0, t0 = cpu_seconds(pid), cpu_seconds(pub.pid), time.monotonic()
        n = 0
        while time.monotonic() - t0 < scale.steady_seconds:
            # ONLINE probes: new clients, their send time in their id.
            r.xadd("heartbeat", {"client": f"b{int(time.time() * 1000)}x{n}", "server": "p"})
            n += 1
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        pub_cpu = cpu_seconds(pub.pid) - pub_cpu0
        time.sleep(0.5)
        stats = watcher.stats()
        watcher.close()
        pub.terminate()
        pub.join()
    core = cpu / seconds
    latencies = stats.latencies_ms
    print(
        f"  steady {clients} clients / {interval:g} s: {core:.0%} of a core "
        f"(publisher {pub_cpu / seconds:.0%}); "
        f"ONLINE p50 {percentile(latencies, 50):.1f} ms p99 {percentile(latencies, 99):.1f} ms"
    )
    return {
        "clients": clients,
        "interval_s": interval,
        "heartbeats_per_s": round(clients / interval),
        "server_core_fraction": round(core, 3),
        "publisher_core_fraction": round(pub_cpu / seconds, 3),
        "online_probes": n,
        "online_received": len(latencies),
        "online_p50_ms": round(percentile(latencies, 50), 1),
        "online_p99_ms": round(percentile(latencies, 99), 1),
        "online_percentiles_ms": curve(latencies),
    }
