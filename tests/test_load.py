"""Load on one ``python -m presence serve`` process: thousands of SSE connections,
and clients that stop reading.

The clients are raw asyncio protocols, so the test process stays cheap next
to the server it loads. Nothing here times anything: these tests check that
nothing fails, nothing is lost and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from .support import Follower, Redis, RedisServer, ServerProcess, metric, open_events, poll

Spawn = Callable[..., ServerProcess]


class Sink(asyncio.Protocol):
    """One SSE connection that waits for its snapshot, then counts and drops bytes."""

    def __init__(self, path: str, *, read: bool = True) -> None:
        self._request = f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()
        self._read = read
        self._head = b""
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.closed_by_us = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.ready.done():
            return
        self._head += data
        if not self._head.startswith(b"HTTP/1.1 200"):
            if b"\r\n" in self._head:
                self.ready.set_exception(AssertionError(self._head[:200]))
            return
        start = self._head.find(b"event: snapshot")
        if start >= 0 and b"\n\n" in self._head[start:]:
            self.ready.set_result(None)
            if not self._read and self.transport is not None:
                self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the snapshot"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        self.closed_by_us = True
        if self.transport is not None:
            self.transport.close()


async def open_sink(port: int, path: str, *, read: bool = True, rcvbuf: int = 0) -> Sink:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    _, sink = await loop.create_connection(lambda: Sink(path, read=read), sock=sock)
    async with asyncio.timeout(30):
        await sink.ready
    return sink


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found
    return int(found[1])


async def connections(session: aiohttp.ClientSession, server: ServerProcess) -> int:
    async with session.get(f"{server.url}/healthz") as response:
        body = await response.json()
        assert response.status == 200, body
        return int(body["connections"])


@pytest.mark.timeout(180)
async def test_one_process_holds_5000_connections_with_steady_churn(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    """5,000 connections of 250 clients (20 tabs each), then rounds of churn."""
    total, clients = 5000, 250
    server = spawn(
        "--redis-url", redis_server.url,
        "--server-id", "load-1",
        "--max-connections-per-client", "64",
        "--heartbeat-interval", "2",
        "--keepalive-interval", "5",
    )  # fmt: skip
    await server.wait_healthy()
    slots = asyncio.Semaphore(200)
    rng = random.Random(3)

    async def connect(client: str) -> Sink:
        async with slots:
            return await open_sink(server.port, f"/clients/{client}/events")

    sinks = await asyncio.gather(*(connect(f"u{n % clients}") for n in range(total)))
    assert await connections(session, server) == total
    for round_ in range(3):
        # A fifth of the connections go; as many come, half of them new clients.
        leaving = rng.sample(range(total), total // 5)
        for n in leaving:
            sinks[n].close()
        newcomers = [
            f"u{rng.randrange(clients)}" if i % 2 else f"r{round_}-{i}" for i in range(len(leaving))
        ]
        fresh = await asyncio.gather(*(connect(client) for client in newcomers))
        for n, sink in zip(leaving, fresh, strict=True):
            sinks[n] = sink
        await poll(
            lambda: _settled_connections(session, server, total), timeout=10, what="5,000 open"
        )
    dropped = [s for s in sinks if s.closed.done() and not s.closed_by_us]
    assert not dropped, f"{len(dropped)} connections closed by the server"
    assert await metric(session, server.url, "presence_queue_overflows_total") == 0
    for sink in sinks:
        sink.close()
    await poll(lambda: _settled_connections(session, server, 0), timeout=10, what="all closed")
    output = server.output()
    assert "Traceback" not in output
    assert " ERROR " not in output


async def _settled_connections(
    session: aiohttp.ClientSession, server: ServerProcess, expected: int
) -> bool:
    return await connections(session, server) == expected


@pytest.mark.timeout(120)
async def test_clients_that_stop_reading_are_dropped_and_memory_stays_flat(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, session: aiohttp.ClientSession
) -> None:
    server = spawn(
        "--redis-url", redis_server.url,
        "--server-id", "slow-1",
        "--heartbeat-interval", "30",
        "--queue-size", "256",
        "--stall-timeout", "2",
    )  # fmt: skip
    await server.wait_healthy()
    assert server.process is not None
    pid = server.process.pid
    reader = Follower(await open_events(session, f"{server.url}/clients/reader/events"))
    sent = 0

    async def burst(count: int) -> None:
        nonlocal sent
        pipe = redis.pipeline(transaction=False)
        for n in range(sent, sent + count):
            pipe.xadd("heartbeat", {"client": f"c{n}", "server": "ext"})
        await pipe.execute()
        sent += count
        await poll(lambda: _received(reader, sent), timeout=30, what=f"{sent} events read")

    await burst(2000)  # warm up: the log fills, caches settle
    slow = [
        await open_sink(server.port, f"/clients/slow-{n}/events", read=False, rcvbuf=4096)
        for n in range(50)
    ]
    before = rss_kb(pid)
    for _ in range(10):
        await burst(5000)
    after = rss_kb(pid)
    # Paused, the sinks cannot see the server drop them: ask the server.
    await poll(lambda: _overflows(session, server, 50), timeout=30, what="slow clients dropped")
    # 50,000 events went by 50 stalled connections (about 275 MB had anything
    # kept them); memory did not follow.
    assert after - before < 10_000, (before, after)
    assert await connections(session, server) == 1
    for sink in slow:
        sink.close()
    assert reader.view() >= {f"c{n}" for n in range(sent)}
    reader.close()


async def _received(follower: Follower, count: int) -> bool:
    return len(follower.events) >= count + 1  # and the snapshot


async def _overflows(session: aiohttp.ClientSession, server: ServerProcess, count: int) -> bool:
    found = await metric(session, server.url, "presence_queue_overflows_total")
    assert found <= count
    return found == count
