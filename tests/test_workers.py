"""``presence serve --workers N``: N processes on one port, from outside.

Each worker is a server of its own (``<id>.w<k>``) on a shared Redis; the
kernel spreads connections over them (``SO_REUSEPORT``). Streams land on
both workers; a client's tabs on two workers make no flap; a worker
SIGKILLed is replaced and its clients reconnect without an ``OFFLINE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from .servers import Spawn, events_of, listed, start_server
from .support import (
    Redis,
    RedisServer,
    ServerProcess,
    follow,
    free_port,
    open_events,
    poll,
    redis_ms,
    redis_past,
    truthy,
)

WORKERS = ("n.w1", "n.w2")


async def _workers(spawn: Spawn, redis_url: str, *flags: str) -> ServerProcess:
    server = spawn(
        "--redis-url", redis_url,
        "--server-id", "n",
        "--workers", "2",
        "--heartbeat-interval", "1",
        "--leave-grace", "0.3",
        "--keepalive-interval", "0.25",
        *flags,
    )  # fmt: skip
    await server.wait_healthy()
    seen: set[str] = set()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:

        async def both_answer() -> bool:
            seen.update(await _answering(fresh, f"{server.url}/healthz"))
            return seen == set(WORKERS)

        await poll(both_answer, what="/healthz from both workers")
    return server


def _pids(server: ServerProcess) -> dict[str, int]:
    """Each worker's latest pid, from the parent's log."""
    found = re.findall(r"worker (\S+) started \(pid (\d+)\)", server.output())
    return {name: int(pid) for name, pid in found}


async def _answering(session: aiohttp.ClientSession, url: str) -> set[str]:
    """The server ids of the workers that answered a few fresh connections."""
    seen = set()
    for _ in range(8):
        async with session.get(url) as response:
            seen.add((await response.json())["server"])
    return seen


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A session opening a connection per request, as separate tabs would."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def test_streams_spread_over_the_workers_which_see_the_same_clients(
    redis: Redis, redis_server: RedisServer, spawn: Spawn, fresh: aiohttp.ClientSession
) -> None:
    base = _two_free_ports()
    server = await _workers(spawn, redis_server.url, "--worker-ports", str(base))
    # Each worker also listens alone, on its own port.
    for k, name in enumerate(WORKERS):
        async with fresh.get(f"http://127.0.0.1:{base + k}/healthz") as response:
            assert (await response.json())["server"] == name
        async with fresh.get(f"http://127.0.0.1:{base + k}/metrics") as response:
            assert response.status == 200
    observer = await follow(fresh, events_of(server, "observer"))
    clients = [f"c{n}" for n in range(16)]
    streams = [await follow(fresh, events_of(server, c)) for c in clients]
    try:
        await poll(lambda: truthy(set(clients) <= observer.view()), what="every client online")
        # The server of each ONLINE is the worker its stream landed on.
        servers = {
            e.data["server"]
            for e in observer.events
            if e.event == "presence" and e.data["client"] in clients
        }
        assert servers == set(WORKERS), servers

        everyone = {*clients, "observer"}

        async def same_everywhere() -> bool:
            answers = set()
            for _ in range(8):
                async with fresh.get(f"{server.url}/healthz") as response:
                    answers.add((await response.json())["server"])
                if await listed(fresh, server) != everyone:
                    return False
            return answers == set(WORKERS)

        await poll(same_everywhere, what="GET /clients the same on both workers")
    finally:
        for stream in [observer, *streams]:
            stream.close()
    # SIGTERM to the whole group (systemd's way): each worker stops once, as a
    # server stops, and the supervisor waits for them.
    for pid in _pids(server).values():
        os.kill(pid, signal.SIGTERM)
    assert server.terminate() == 0
    output = server.output()
    assert "all workers stopped" in output
    assert "Traceback" not in output
    assert "unclosed" not in output


async def test_a_clients_tabs_on_two_workers_make_no_flap(
    redis: Redis, redis_server: RedisServer, spawn: Spawn, fresh: aiohttp.ClientSession
) -> None:
    server = await _workers(spawn, redis_server.url)
    observer = await follow(fresh, events_of(server, "observer"))
    tabs = []

    async def holders() -> set[str]:
        # A server holding her has her deadline; one that left, minus its
        # leave's position (and "#<server>" its sequence number).
        held = await redis.zrangebyscore("online.holders.alice", 0, "+inf")
        return {h.decode() for h in held if not h.startswith(b"#")}

    try:
        # New tabs until both workers hold alice (each tab is a connection of its own).
        for _ in range(40):
            tabs.append(await open_events(fresh, events_of(server, "alice")))
            await tabs[-1].next()
            await poll(holders, what="a worker holding alice")
            if await holders() == set(WORKERS):
                break
        assert await holders() == set(WORKERS)
        # Every tab but the last closes: one worker lets go of her, the other keeps her.
        for tab in tabs[:-1]:
            tab.close()
        left = await redis_ms(redis)

        async def one_holder() -> bool:
            return len(await holders()) == 1

        await poll(one_holder, timeout=10, what="one worker holding alice")
        # Past a TTL (1.5 s) of the leave: anything it could publish is out.
        await poll(lambda: redis_past(redis, left + 2000), what="a TTL past the leave")
        assert observer.about("alice") == ["ONLINE"]
        alice = [
            f[b"status"] for _, f in await redis.xrange("presence") if f[b"client"] == b"alice"
        ]
        assert alice == [b"ONLINE"]
        async with fresh.get(f"{server.url}/clients/alice") as response:
            assert (await response.json())["status"] == "ONLINE"
    finally:
        observer.close()
        for tab in tabs:
            tab.close()


class Reconnecting:
    """A client that opens its stream again as soon as it ends, as a page would."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.opened = 0
        self._session = session
        self._url = url
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                stream = await open_events(self._session, self._url)
                self.opened += 1
                try:
                    while True:
                        await stream.next(timeout=3600)
                finally:
                    stream.close()
            except (EOFError, aiohttp.ClientError, AssertionError):
                await asyncio.sleep(0.05)  # the port is briefly without this worker

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_a_worker_sigkilled_is_replaced_and_its_clients_never_go_offline(
    redis: Redis, redis_server: RedisServer, spawn: Spawn, fresh: aiohttp.ClientSession
) -> None:
    server = await _workers(spawn, redis_server.url)
    # The observer is on a server of its own, which nothing here kills.
    other = await start_server(spawn, redis_server.url, "other")
    observer = await follow(fresh, events_of(other, "observer"))
    clients = [f"c{n}" for n in range(12)]
    pages = [Reconnecting(fresh, events_of(server, c)) for c in clients]
    try:
        await poll(lambda: truthy(set(clients) <= observer.view()), what="every client online")
        by_worker = await _servers_of(redis, clients)
        assert set(by_worker.values()) == set(WORKERS), by_worker
        victim = _pids(server)["n.w1"]
        killed_at = await redis_ms(redis)
        os.kill(victim, signal.SIGKILL)
        await poll(
            lambda: truthy(_pids(server)["n.w1"] != victim),
            timeout=15,
            what="n.w1 started again",
        )
        assert re.search(
            r"worker n\.w1 \(pid \d+\) died after .*killed by SIGKILL", server.output()
        )
        moved = [c for c, s in by_worker.items() if s == "n.w1"]
        await poll(
            lambda: truthy(all(pages[clients.index(c)].opened >= 2 for c in moved)),
            what="the killed worker's clients reconnected",
        )
        # Past the TTL (1.5 s) of the killed worker's last heartbeats, and the claim of its entries.
        await poll(lambda: redis_past(redis, killed_at + 4000), timeout=10, what="4 s")
        assert all(observer.about(c) == ["ONLINE"] for c in clients), {
            c: observer.about(c) for c in clients
        }
        assert set(clients) <= observer.view()
    finally:
        observer.close()
        for page in pages:
            await page.close()


async def _servers_of(redis: Redis, clients: list[str]) -> dict[str, str]:
    values = await redis.hmget("online.servers", clients)
    return {c: v.decode() for c, v in zip(clients, values, strict=True) if v is not None}


def test_workers_need_a_shared_redis_and_a_free_port(redis_server: RedisServer) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "presence", "serve", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    done = serve("--workers", "2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "presence: error: --workers needs a shared Redis (memory:// lives in one process): "
        "pass --redis-url"
    ]
    with socket_held() as port:
        done = serve("--workers", "2", "--redis-url", redis_server.url, "--port", str(port))
    assert done.returncode == 2
    assert done.stderr.startswith(f"presence: error: cannot listen on 127.0.0.1:{port}: ")
    assert len(done.stderr.strip().splitlines()) == 1
    done = serve("--workers", "-1")
    assert done.returncode == 2
    assert "workers must be between 0" in done.stderr
    url = redis_server.url
    done = serve("--workers", "2", "--redis-url", url, "--worker-ports", "65535")
    assert (done.returncode, done.stderr) == (
        2,
        "presence: error: --worker-ports 65535 leaves no port for worker 2\n",
    )
    port = free_port()
    done = serve(
        "--workers", "2", "--redis-url", url, "--port", str(port), "--worker-ports", str(port)
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"presence: error: cannot listen on 127.0.0.1:{port}: ")


def _two_free_ports() -> int:
    """A port free, with the next one free too."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


@contextlib.contextmanager
def socket_held() -> Iterator[int]:
    """A port some other program listens on, without SO_REUSEPORT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]
