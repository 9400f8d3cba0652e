"""The benchmarks: ``python -m bench [--full]``. Each result is a ratio taken side by
side in one run, next to the absolute numbers, which drift between machines.

1. Heartbeat ingestion: one presence process applying a burst of heartbeats,
   against Redis's own ceiling for the same script (redis-benchmark EVALSHA,
   pipelined); and the CPU one process spends on a steady heartbeat load.
2. SSE fan-out: N connections, M events each delivered to all of them, against
   nginx with nchan (one worker) under the same load and message size.
3. Memory per idle SSE connection, against nchan's.
4. OFFLINE latency at scale: a sample of tracked clients stops; when their
   OFFLINE reaches an SSE client, minus their deadline; and, in the same run,
   when Redis's own ``expired`` event arrives (what a keyspace-only design gets).
5. ONLINE latency under the steady load of (1): from the heartbeat's XADD to
   the ``ONLINE`` event at an SSE client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from presence.heartbeats.consumer import SCRIPT_BATCH
from presence.transitions import scripts

from .plot import plot
from .sse_load import Load

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TTL_FACTOR = 1.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scale:
    ingest: list[int]
    ingest_rounds: int
    steady_clients: int
    steady_interval: float
    steady_seconds: float
    fanout: list[tuple[int, int]]
    offline_clients: int
    offline_interval: float
    offline_sample: int
    #: Seconds after the deadlines to wait for Redis's own expired events.
    expired_wait: float


SHORT = Scale(
    ingest=[20_000],
    ingest_rounds=3,
    steady_clients=20_000,
    steady_interval=1.0,
    steady_seconds=8,
    fanout=[(1000, 500)],
    offline_clients=10_000,
    offline_interval=2.0,
    offline_sample=300,
    expired_wait=30,
)
FULL = Scale(
    ingest=[1_000, 10_000, 100_000],
    ingest_rounds=5,
    steady_clients=100_000,
    steady_interval=5.0,
    steady_seconds=20,
    fanout=[(1000, 1000), (4000, 250), (8000, 125)],
    offline_clients=100_000,
    offline_interval=5.0,
    offline_sample=1000,
    expired_wait=60,
)


# --- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    found = re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(found[1]) if found else 0


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def redis_server() -> Iterator[tuple[str, int, int]]:
    """(URL, port, pid) of a redis-server of its own."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench: needs redis-server and redis-benchmark on PATH (apt-get install redis)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(port)
            yield f"redis://127.0.0.1:{port}/0", port, proc.pid
        finally:
            proc.kill()
            proc.wait()


@contextmanager
def presence_server(redis_url: str, *flags: str) -> Iterator[tuple[int, int]]:
    """(http port, pid) of ``python -m presence serve``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "presence", "serve", "--port", str(port), "--redis-url",
         redis_url, "--server-id", "bench", "--log-level", "WARNING",
         "--max-connections", "20000", "--max-connections-per-client", "20000", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("presence did not start") from None
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


def poll(check: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def applied(port: int, count: int) -> Callable[[], bool]:
    return lambda: metric(port, "presence_heartbeats_applied_total") >= count


def drained(r: redis.Redis, heartbeats: int) -> Callable[[], bool]:
    """Whether all ``heartbeats`` are in the stream, and the consumer group has read
    and acknowledged every one.

    Asked of Redis, not of presence: polling presence's /metrics this often
    would cost the process being measured.
    """

    def check() -> bool:
        pipe = r.pipeline(transaction=False)
        pipe.xinfo_groups("heartbeat")
        pipe.xinfo_stream("heartbeat")
        groups, stream = pipe.execute()
        group = groups[0]
        return bool(
            stream["length"] == heartbeats
            and group["pending"] == 0
            and group["last-delivered-id"] == stream["last-generated-id"]
        )

    return check


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- load generators --------------------------------------------------------------


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _publish(
    redis_url: str, clients: int, interval: float, stop_after: float, key_ttl_ms: int | None
) -> None:
    """Heartbeats for ``c0..c<clients>``, each once per ``interval``, in spread chunks;
    or, given ``key_ttl_ms``, their keys set directly with that TTL instead.

    The commands are encoded once and written raw: the publisher must cost next
    to nothing, or it, not presence, would be what is measured on two cores.
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    sock = socket.create_connection(("127.0.0.1", port))
    chunk = 1000
    chunks = []
    for start in range(0, clients, chunk):
        names = [f"c{n}".encode() for n in range(start, min(clients, start + chunk))]
        if key_ttl_ms is None:
            commands = [
                _resp(b"XADD", b"heartbeat", b"MAXLEN", b"~", b"400000", b"*", b"client", name,
                      b"server", b"ext")
                for name in names
            ]  # fmt: skip
        else:
            px = str(key_ttl_ms).encode()
            commands = [
                _resp(b"SET", b"online.clients." + name, b"ext", b"PX", px) for name in names
            ]
        chunks.append((b"".join(commands), len(names)))
    end = time.monotonic() + stop_after
    while time.monotonic() < end:
        start_at = time.monotonic()
        for i, (packed, count) in enumerate(chunks):
            sock.sendall(packed)
            _read_replies(sock, count, lines=2 if key_ttl_ms is None else 1)
            pause = start_at + (i + 1) * interval / len(chunks) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    sock.close()


def burst_commands(heartbeats: int, clients: int) -> bytes:
    """XADDs of ``heartbeats`` heartbeats of random clients among ``clients`` ids,
    the way ``redis-benchmark -r`` draws them for the ceiling (12 digits)."""
    draw = random.Random(clients).randrange
    return b"".join(
        _resp(b"XADD", b"heartbeat", b"*", b"client", b"c%012d" % draw(clients),
              b"server", b"ext")
        for _ in range(heartbeats)
    )  # fmt: skip


def send_raw(port: int, packed: bytes, replies: int) -> None:
    """Writes pre-encoded XADDs, then reads their ``replies``."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(packed)
        _read_replies(sock, replies)


def _read_replies(sock: socket.socket, count: int, lines: int = 2) -> None:
    """Reads ``count`` replies of so many ``lines`` each (XADD's: "$<n>" and the id)."""
    _read_until(sock, b"\n", lines * count)


def _read_until(sock: socket.socket, token: bytes, count: int) -> None:
    """Reads until ``token`` has come ``count`` times, wherever reads split it."""
    sock.settimeout(60)  # a reply miscounted fails the run instead of hanging it
    tail, seen = b"", 0
    while seen < count:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError(f"connection closed after {seen} of {count} {token!r}")
        # A tail shorter than the token cannot hold one already counted.
        data = tail + chunk
        seen += data.count(token)
        tail = data[len(data) - len(token) + 1 :]


def publisher(
    redis_url: str, clients: int, interval: float, seconds: float, key_ttl_ms: int | None = None
) -> Any:
    context = multiprocessing.get_context("spawn")
    args = (redis_url, clients, interval, seconds, key_ttl_ms)
    proc = context.Process(target=_publish, args=args)
    proc.start()
    return proc


def redis_benchmark(port: int, requests: int, keyspace: int, *command: str) -> float:
    """Requests per second redis-benchmark gets for ``command``, pipelined."""
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-n", str(requests), "-P", "10", "-r",
         str(keyspace), "-c", "4", "--csv", *command],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    row = [line for line in out.splitlines() if line and not line.startswith('"test"')][-1]
    return float(row.split(",")[1].strip('"'))


# --- 1 and 5: ingestion, steady CPU, ONLINE latency ----------------------------------


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
    call, SCRIPT_BATCH heartbeats of random clients, from redis-benchmark.

    At least 100,000 heartbeats, so that the run is long enough to time; a
    burst applies as many, so that both sides create and refresh alike. Its
    lines carry no entry ids, so the ceiling does all that presence's calls
    do but acknowledge them.
    """
    sha = r.script_load(scripts.HEARTBEAT)
    batch = "\n".join("c__rand_int__ ext 0" for _ in range(SCRIPT_BATCH))
    requests = max(1000, clients // SCRIPT_BATCH)
    calls = redis_benchmark(
        port, requests, clients,
        "EVALSHA", sha, "4", "online.deadlines", "online.servers", "presence", "heartbeat",
        str(int(5 * TTL_FACTOR * 1000)), "100000", "online.clients.", "online.holders.",
        "presence", batch,
    )  # fmt: skip
    return calls * SCRIPT_BATCH, requests * SCRIPT_BATCH


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


# --- 2 and 3: fan-out and memory, presence against nchan -----------------------------


NCHAN_CONF = """
load_module {module};
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 20000;
http {{
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path {tmp};
  server {{
    listen 127.0.0.1:{port};
    location = /pub {{ nchan_publisher; nchan_channel_id bench; }}
    location = /sub {{ nchan_subscriber eventsource; nchan_channel_id bench; }}
  }}
}}
"""


def nchan_module() -> str | None:
    for path in ("/usr/lib/nginx/modules/ngx_nchan_module.so",
                 "/usr/share/nginx/modules/ngx_nchan_module.so"):  # fmt: skip
        if Path(path).exists():
            return path
    return None


@contextmanager
def nchan_server() -> Iterator[tuple[int, int]]:
    """(port, worker pid) of nginx with nchan, one worker."""
    module = nchan_module()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if module is None or not Path(nginx).exists():
        sys.exit("bench: needs nginx with nchan (apt-get install nginx-light libnginx-mod-nchan)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NCHAN_CONF.format(module=module, tmp=tmp, port=port))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", tmp], stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            worker = int(
                subprocess.run(
                    ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True
                ).stdout.split()[0]
            )
            yield port, worker
        finally:
            proc.terminate()
            proc.wait(10)


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
            reader = threading.Thread(target=_read_until, args=(sock, b"HTTP/1.1 ", events))
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


def bench_fanout(scale: Scale) -> list[dict[str, Any]]:
    rows = []
    for connections, events in scale.fanout:
        row: dict[str, Any] = {"connections": connections, "events": events}
        flags = ("--heartbeat-interval", "5")
        with redis_server() as (url, _, _), presence_server(url, *flags) as (port, pid):
            # One client id for every connection: no N x N joins to wait out.
            paths = ["/clients/bench/events"] * connections
            send = heartbeat_sender(redis.Redis.from_url(url))
            row["presence_rss_kb_per_connection"], row["presence"] = measure(
                port, pid, paths, events, send, skip_first=True
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


# --- 4: OFFLINE latency, sweeper against expired events alone ---------------------------


def bench_offline(scale: Scale) -> dict[str, Any]:
    clients, interval, sample = scale.offline_clients, scale.offline_interval, scale.offline_sample
    ttl_ms = int(interval * TTL_FACTOR * 1000)
    pattern = rb'"client":"b(\d+)x\d+","status":"OFFLINE"'
    with (
        redis_server() as (url, _, _),
        presence_server(url, "--heartbeat-interval", str(interval)) as (port, _pid),
    ):
        r = redis.Redis.from_url(url)
        seconds = 3 * interval + ttl_ms / 1000 + 5
        pub = publisher(url, clients - sample, interval, seconds)
        poll(applied(port, clients - sample), timeout=120, what="everyone tracked")
        watcher = Load(port, ["/clients/watcher/events"], processes=1, pattern=pattern)
        watcher.ready()
        # The sample: one heartbeat each, never another. Their id carries their deadline.
        pipe = r.pipeline(transaction=False)
        for n in range(sample):
            deadline = int(time.time() * 1000) + ttl_ms
            pipe.xadd("heartbeat", {"client": f"b{deadline}x{n}", "server": "ext"})
        pipe.execute()
        poll(
            lambda: len(watcher.stats().latencies_ms) >= sample,
            timeout=ttl_ms / 1000 + 30,
            what="every OFFLINE",
        )
        sweeper = watcher.stats().latencies_ms
        watcher.close()
        pub.terminate()
        pub.join()
    expired = expired_events(scale)
    result: dict[str, Any] = {
        "tracked_clients": clients,
        "interval_s": interval,
        "sample": sample,
        "sweeper_p50_ms": round(percentile(sweeper, 50), 1),
        "sweeper_p99_ms": round(percentile(sweeper, 99), 1),
        "sweeper_max_ms": round(max(sweeper), 1),
        "sweeper_percentiles_ms": curve(sweeper),
        "expired_wait_s": scale.expired_wait,
        "expired_events_received": len(expired),
        # Over the sample, those still missing counting as later than any that came.
        "expired_p50_ms": censored_percentile(expired, sample, 50),
        "expired_p99_ms": censored_percentile(expired, sample, 99),
        "expired_max_ms": round(max(expired), 1) if expired else None,
        "expired_percentiles_ms": curve(expired),
    }
    print(
        f"  OFFLINE after deadline, {clients} tracked: sweeper p99 {result['sweeper_p99_ms']} ms; "
        f"expired events alone: p50 {_ms(result['expired_p50_ms'], scale.expired_wait)}, "
        f"p99 {_ms(result['expired_p99_ms'], scale.expired_wait)} "
        f"({len(expired)}/{sample} within {scale.expired_wait:g} s)"
    )
    return result


def expired_events(scale: Scale) -> list[float]:
    """What a design relying on Redis's ``expired`` events alone gets, as the seed design
    did: the same keys, written as the heartbeat script writes them (SET PX, the
    tracked ones refreshed every interval), nothing else reading them, and how
    long after its deadline each sample key's event arrives. Waits at most
    ``scale.expired_wait`` seconds after the deadlines."""
    clients, interval, sample = scale.offline_clients, scale.offline_interval, scale.offline_sample
    ttl_ms = int(interval * TTL_FACTOR * 1000)
    with redis_server() as (url, _, _):
        r = redis.Redis.from_url(url)
        r.config_set("notify-keyspace-events", "Ex")
        wait = ttl_ms / 1000 + scale.expired_wait
        pub = publisher(
            url, clients - sample, interval, wait + 2 * interval + 10, key_ttl_ms=ttl_ms
        )
        poll(lambda: r.dbsize() >= clients - sample, timeout=120, what="every key written")
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe()
        listener = context.Process(target=_expired_listener, args=(url, sample, wait, sender))
        listener.start()
        receiver.recv()  # subscribed
        pipe = r.pipeline(transaction=False)
        for n in range(sample):
            deadline = int(time.time() * 1000) + ttl_ms
            pipe.set(f"online.clients.b{deadline}x{n}", "ext", px=ttl_ms)
        pipe.execute()
        expired: list[float] = receiver.recv()
        listener.join(5)
        pub.terminate()
        pub.join()
    return expired


def _ms(value: float | None, wait: float) -> str:
    return f"> {wait:g} s" if value is None else f"{value:,.0f} ms"


def curve(values: list[float]) -> list[float]:
    """Percentiles 0 to 100 of ``values``: the distribution, for the plot."""
    return [round(percentile(values, p), 1) for p in range(101)] if values else []


def censored_percentile(values: list[float], total: int, p: float) -> float | None:
    """Percentile ``p`` of ``total`` samples of which only ``values`` were seen in
    time; None when it lies among those not seen."""
    rank = round(p / 100 * (total - 1))
    return round(sorted(values)[rank], 1) if rank < len(values) else None


def _expired_listener(url: str, sample: int, timeout: float, pipe: Any) -> None:
    async def listen() -> list[float]:
        r = aioredis.from_url(url)
        pubsub = r.pubsub()
        await pubsub.psubscribe("__keyevent@0__:expired")
        pipe.send("subscribed")
        found: list[float] = []
        key = re.compile(rb"online\.clients\.b(\d+)x")
        end = time.monotonic() + timeout
        while len(found) < sample and time.monotonic() < end:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message and (match := key.match(message["data"])):
                found.append(time.time() * 1000 - int(match[1]))
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()
        return found

    pipe.send(asyncio.run(listen()))


# --- main ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the whole matrix (long)")
    parser.add_argument(
        "--only", choices=("ingest", "fanout", "offline"), action="append", help="repeatable"
    )
    args = parser.parse_args(argv)
    scale = FULL if args.full else SHORT
    chosen = args.only or ["ingest", "fanout", "offline"]
    started = time.time()
    command = "make bench-full" if args.full else "make bench"
    if args.only:
        command = "python -m bench" + " --full" * args.full
        command += "".join(f" --only {name}" for name in args.only)
    results: dict[str, Any] = {
        "mode": "full" if args.full else "short",
        "command": command,
        "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }  # fmt: skip
    benches: list[tuple[str, Callable[[Scale], Any]]] = [
        ("ingest", bench_ingest),
        ("fanout", bench_fanout),
        ("offline", bench_offline),
    ]
    for name, run in benches:
        if name in chosen:
            print(f"{name}:")
            results[name] = run(scale)
    results["seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{results['started'].replace(':', '')}-{results['mode']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.relative_to(ROOT)} and its plot in {results['seconds']} s")
    return 0


def code_version() -> str:
    """The commit measured, with ``-dirty`` when tracked files differ from it."""
    try:
        described = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # not a git checkout
    return described.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
