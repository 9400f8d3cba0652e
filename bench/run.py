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
import http.client
import json
import multiprocessing
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from presence import scripts
from presence.consumer import SCRIPT_BATCH

from .sse_load import Load

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TTL_FACTOR = 1.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scale:
    ingest: list[int]
    steady_clients: int
    steady_interval: float
    steady_seconds: float
    fanout: list[tuple[int, int]]
    offline_clients: int
    offline_interval: float
    offline_sample: int


SHORT = Scale(
    ingest=[20_000],
    steady_clients=20_000,
    steady_interval=1.0,
    steady_seconds=8,
    fanout=[(1000, 500)],
    offline_clients=10_000,
    offline_interval=2.0,
    offline_sample=300,
)
FULL = Scale(
    ingest=[1_000, 10_000, 100_000],
    steady_clients=100_000,
    steady_interval=5.0,
    steady_seconds=20,
    fanout=[(1000, 1000), (4000, 250), (8000, 125)],
    offline_clients=100_000,
    offline_interval=5.0,
    offline_sample=1000,
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
def redis_server() -> Iterator[tuple[str, int]]:
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
            yield f"redis://127.0.0.1:{port}/0", port
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


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- load generators --------------------------------------------------------------


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _publish(redis_url: str, clients: int, interval: float, stop_after: float) -> None:
    """Heartbeats for ``c0..c<clients>``, each once per ``interval``, in spread chunks.

    The commands are encoded once and written raw: the publisher must cost next
    to nothing, or it, not presence, would be what is measured on two cores.
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    sock = socket.create_connection(("127.0.0.1", port))
    chunk = 1000
    chunks = []
    for start in range(0, clients, chunk):
        names = [f"c{n}".encode() for n in range(start, min(clients, start + chunk))]
        packed = b"".join(
            _resp(b"XADD", b"heartbeat", b"MAXLEN", b"~", b"400000", b"*", b"client", name,
                  b"server", b"ext")
            for name in names
        )  # fmt: skip
        chunks.append((packed, len(names)))
    end = time.monotonic() + stop_after
    while time.monotonic() < end:
        start_at = time.monotonic()
        for i, (packed, count) in enumerate(chunks):
            sock.sendall(packed)
            lines = 0
            while lines < 2 * count:  # each reply: "$<n>" and the entry id
                lines += sock.recv(1 << 16).count(b"\r\n")
            pause = start_at + (i + 1) * interval / len(chunks) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    sock.close()


def publisher(redis_url: str, clients: int, interval: float, seconds: float) -> Any:
    context = multiprocessing.get_context("spawn")
    proc = context.Process(target=_publish, args=(redis_url, clients, interval, seconds))
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
        with redis_server() as (url, rport):
            r = redis.Redis(port=rport)
            sha = r.script_load(scripts.HEARTBEAT)
            # The consumer's own call: SCRIPT_BATCH heartbeats of random clients.
            batch = "\n".join("c__rand_int__ ext 0" for _ in range(SCRIPT_BATCH))
            calls = redis_benchmark(
                rport, max(1000, clients // SCRIPT_BATCH), clients,
                "EVALSHA", sha, "3", "online.deadlines", "online.servers", "presence",
                str(int(5 * TTL_FACTOR * 1000)), "100000", "online.clients.", "online.holders.",
                batch,
            )  # fmt: skip
            ceiling = calls * SCRIPT_BATCH
            r.flushall()
            with presence_server(url, "--heartbeat-interval", "5") as (port, pid):
                cpu0, t0 = cpu_seconds(pid), time.monotonic()
                redis_benchmark(
                    rport, clients, clients, "XADD", "heartbeat", "*", "client", "c__rand_int__",
                    "server", "ext",
                )  # fmt: skip
                poll(applied(port, clients), timeout=120, what="every heartbeat applied")
                seconds = time.monotonic() - t0
                cpu = cpu_seconds(pid) - cpu0
        rate = clients / seconds
        results["burst"].append(
            {
                "heartbeats": clients,
                "applied_per_s": round(rate),
                "redis_evalsha_per_s": round(ceiling),
                "ratio": round(rate / ceiling, 3),
                "server_cpu_s": round(cpu, 2),
            }
        )
        print(f"  ingest {clients}: {rate:,.0f}/s vs EVALSHA ceiling {ceiling:,.0f}/s")
    results["steady"] = bench_steady(scale)
    return results


def bench_steady(scale: Scale) -> dict[str, Any]:
    clients, interval = scale.steady_clients, scale.steady_interval
    flags = ("--heartbeat-interval", str(interval))
    with redis_server() as (url, _), presence_server(url, *flags) as (port, pid):
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
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        n = 0
        while time.monotonic() - t0 < scale.steady_seconds:
            # ONLINE probes: new clients, their send time in their id.
            r.xadd("heartbeat", {"client": f"b{int(time.time() * 1000)}x{n}", "server": "p"})
            n += 1
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        time.sleep(0.5)
        stats = watcher.stats()
        watcher.close()
        pub.terminate()
        pub.join()
    core = cpu / seconds
    latencies = stats.latencies_ms
    print(
        f"  steady {clients} clients / {interval:g} s: {core:.0%} of a core; "
        f"ONLINE p50 {percentile(latencies, 50):.1f} ms p99 {percentile(latencies, 99):.1f} ms"
    )
    return {
        "clients": clients,
        "interval_s": interval,
        "heartbeats_per_s": round(clients / interval),
        "server_core_fraction": round(core, 3),
        "online_probes": n,
        "online_received": len(latencies),
        "online_p50_ms": round(percentile(latencies, 50), 1),
        "online_p99_ms": round(percentile(latencies, 99), 1),
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
    """POSTs messages the size of presence events, on one kept-alive connection."""

    def send(events: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for n in range(events):
            connection.request("POST", "/pub", body=frame_body(n))
            connection.getresponse().read()
        connection.close()

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
        with redis_server() as (url, _), presence_server(url, *flags) as (port, pid):
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


# --- 4: OFFLINE latency, sweeper against keyspace events ---------------------------


def bench_offline(scale: Scale) -> dict[str, Any]:
    clients, interval, sample = scale.offline_clients, scale.offline_interval, scale.offline_sample
    ttl_ms = int(interval * TTL_FACTOR * 1000)
    pattern = rb'"client":"b(\d+)x\d+","status":"OFFLINE"'
    with (
        redis_server() as (url, _),
        presence_server(url, "--heartbeat-interval", str(interval)) as (port, _pid),
    ):
        r = redis.Redis.from_url(url)
        r.config_set("notify-keyspace-events", "KgEx")  # expired events, for the comparison
        seconds = 3 * interval + ttl_ms / 1000 + 5
        pub = publisher(url, clients - sample, interval, seconds)
        poll(applied(port, clients - sample), timeout=120, what="everyone tracked")
        watcher = Load(port, ["/clients/watcher/events"], processes=1, pattern=pattern)
        watcher.ready()
        expired: list[float] = []
        listener = multiprocessing.get_context("spawn").Pipe()
        proc = multiprocessing.get_context("spawn").Process(
            target=_expired_listener, args=(url, sample, ttl_ms * 3 / 1000 + 60, listener[1])
        )
        proc.start()
        listener[0].recv()  # subscribed
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
        expired = listener[0].recv()
        proc.join(5)
        pub.terminate()
        pub.join()
    result = {
        "tracked_clients": clients,
        "interval_s": interval,
        "sample": sample,
        "sweeper_p50_ms": round(percentile(sweeper, 50), 1),
        "sweeper_p99_ms": round(percentile(sweeper, 99), 1),
        "sweeper_max_ms": round(max(sweeper), 1),
        "expired_events_received": len(expired),
        "expired_p50_ms": round(percentile(expired, 50), 1),
        "expired_p99_ms": round(percentile(expired, 99), 1),
        "expired_max_ms": round(max(expired), 1) if expired else None,
    }
    print(
        f"  OFFLINE after deadline, {clients} tracked: sweeper p99 {result['sweeper_p99_ms']} ms; "
        f"expired events p99 {result['expired_p99_ms']} ms ({len(expired)}/{sample} arrived)"
    )
    return result


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
    results: dict[str, Any] = {
        "mode": "full" if args.full else "short",
        "command": "make bench-full" if args.full else "make bench",
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
    print(f"wrote {out.relative_to(ROOT)} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
