"""The processes a benchmark runs: redis-server, ``python -m presence serve`` and nginx
with nchan, each on a free loopback port of its own; and waiting on them."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import redis

from presence.web import open_files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def poll(check: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


@contextmanager
def redis_server() -> Iterator[tuple[str, int, int]]:
    """(URL, port, pid) of a redis-server of its own."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench: needs redis-server on PATH (apt-get install redis)")
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
def presence_server(
    redis_url: str,
    *flags: str,
    max_connections: int | None = None,
    max_connections_per_client: int | None = 20_000,
    log: IO[bytes] | None = None,
    program: Sequence[str] = ("-m", "presence", "serve"),
    workers: int = 1,
) -> Iterator[tuple[int, int]]:
    """(http port, pid) of ``python -m presence serve``, logging warnings and worse
    to ``log`` (discarded without one). ``max_connections_per_client=None`` leaves
    presence's default. ``program`` runs another server taking serve's flags
    (bench/held.py), from the repository's root. ``max_connections`` defaults
    to all that the hard open-file limit holds (each worker's). With ``workers``
    other than 1 it is ``serve --workers``: the pid is the supervising parent's
    (:func:`bench.stats.descendants` finds the workers), and it is ready once
    every worker has answered ``/healthz``."""
    port = free_port()
    if max_connections is None:
        max_connections = open_files.largest(resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    limits = ["--max-connections", str(max_connections)]
    if max_connections_per_client is not None:
        limits += ["--max-connections-per-client", str(max_connections_per_client)]
    if workers != 1:
        limits += ["--workers", str(workers)]
    proc = subprocess.Popen(
        [sys.executable, *program, "--port", str(port), "--redis-url",
         redis_url, "--server-id", "bench", "--log-level", "WARNING", *limits, *flags],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if log is None else log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        # Each connection reaches one worker (the kernel's choice): new ones
        # until every worker's server id has answered.
        expected = workers if workers > 0 else len(os.sched_getaffinity(0))  # 0: per core
        ready: set[str] = set()
        while len(ready) < expected:
            try:
                url = f"http://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as answer:
                    ready.add(json.loads(answer.read())["server"] if expected > 1 else "")
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("presence did not start") from None
                time.sleep(0.1)
            else:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {sorted(ready)} of {expected} workers started")
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


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
