"""SSE fan-out and memory: N connections, M events each delivered to all of them,
against nginx with nchan (one worker) under the same load and message size; and
the RSS per idle connection of each."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from .procs import nchan_server, poll, presence_server, redis_server
from .redis_load import read_until
from .scale import Scale
from .sse_load import Load
from .stats import cpu_seconds, curve, percentile, rss_kb


def heartbeat_sender(r: redis.Redis) -> Callable[[int], None]:
    """Sends heartbeats for new clients, pipelined: one ONLINE each, send time in the id."""

    def send(events: int) -> None:
        pipe = r.pipeline(transaction=False)
        for n in range(events):
            pipe.xadd("heartbeat", {"client": f"b{int(time.time() * 1000)}x{n}", "server": "ext"})
        pipe.execute()

    return send


def nchan_sender(port: int) -> Callable[[int], None]:
    """POSTs messages the size of presence events, all at once (pipelined on one
    connection), as the heartbeats for presence are sent in one pipeline."""

    def send(events: int) -> None:
        requests = b"".join(
            b"POST /pub HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            for body in (frame_body(n) for n in range(events))
        )
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            # Responses are read while requests are written: nginx stops reading
            # requests while it cannot write their responses.
            reader = threading.Thread(target=read_until, args=(sock, b"HTTP/1.1 ", events))
            reader.start()
            sock.sendall(requests)
            reader.join()

    return send


def frame_body(n: int) -> bytes:
    """A presence event's JSON, its send time in the client id."""
    return json.dumps(
        {"client": f"b{int(time.time() * 1000)}x{n}", "status": "ONLINE", "server": "bench"},
        separators=(",", ":"),
    ).encode()


def drive(
    load: Load, pid: int, connections: int, events: int, send: Callable[[int], None]
) -> dict[str, Any]:
    """Send ``events`` as fast as the sender goes; measure until each reached every
    connection. Latency is from each event's send time to its arrival."""
    load.reset()
    client_cpu0 = load.stats().cpu_seconds
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    send(events)
    target = connections * events
    poll(lambda: load.stats().events >= target, timeout=300, what="every delivery", every=0.1)
    seconds = time.monotonic() - t0
    stats = load.stats()
    server_cpu = cpu_seconds(pid) - cpu0
    return {
        "deliveries_per_s": round(target / seconds),
        # The load client may be the limit on two cores; this one is not.
        "deliveries_per_server_cpu_s": round(target / max(server_cpu, 0.01)),
        "p50_ms": round(percentile(stats.latencies_ms, 50), 1),
        "p99_ms": round(percentile(stats.latencies_ms, 99), 1),
        "percentiles_ms": curve(stats.latencies_ms),
        "server_cpu_s": round(server_cpu, 2),
        "client_cpu_s": round(stats.cpu_seconds - client_cpu0, 2),
        "seconds": round(seconds, 2),
    }


def measure(
    port: int,
    pid: int,
    paths: list[str],
    events: int,
    send: Callable[[int], None],
    *,
    skip_first: bool,
) -> tuple[float, dict[str, Any]]:
    """RSS per idle connection (KB), then the fan-out of ``events`` to them all."""
    before = rss_kb(pid)
    load = Load(port, paths, skip_first=skip_first)
    failed = load.ready()
    time.sleep(1)
    rss = round((rss_kb(pid) - before) / len(paths), 1)
    result = drive(load, pid, len(paths), events, send) | {"failed": failed}
    load.close()
    return rss, result


def presence_fanout(connections: int, events: int) -> tuple[float, dict[str, Any]]:
    """:func:`measure` on a presence process of its own (and its own Redis)."""
    flags = ("--heartbeat-interval", "5")
    with redis_server() as (url, _, _), presence_server(url, *flags) as (port, pid):
        # One client id for every connection: no N x N joins to wait out.
        paths = ["/clients/bench/events"] * connections
        send = heartbeat_sender(redis.Redis.from_url(url))
        return measure(port, pid, paths, events, send, skip_first=True)


def bench_fanout(scale: Scale) -> list[dict[str, Any]]:
    rows = []
    for connections, events in scale.fanout:
        row: dict[str, Any] = {"connections": connections, "events": events}
        row["presence_rss_kb_per_connection"], row["presence"] = presence_fanout(
            connections, events
        )
        with nchan_server() as (port, pid):
            row["nchan_rss_kb_per_connection"], row["nchan"] = measure(
                port, pid, ["/sub"] * connections, events, nchan_sender(port), skip_first=False
            )
        for key in ("deliveries_per_s", "deliveries_per_server_cpu_s"):
            row[f"ratio_{key}"] = round(row["presence"][key] / row["nchan"][key], 3)
        print(
            f"  fan-out {connections} x {events}: presence "
            f"{row['presence']['deliveries_per_s']:,}/s p99 {row['presence']['p99_ms']} ms, "
            f"nchan {row['nchan']['deliveries_per_s']:,}/s p99 {row['nchan']['p99_ms']} ms; "
            f"RSS/conn {row['presence_rss_kb_per_connection']} KB vs "
            f"{row['nchan_rss_kb_per_connection']} KB"
        )
        rows.append(row)
    return rows
