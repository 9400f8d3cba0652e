"""Fast leave and many tabs, against ``python -m presence serve`` processes.

The heartbeat interval is 5 s (TTL 7.5 s), so an OFFLINE within the 0.5 s leave
grace can only come from the leave, never from the TTL.

Absence of an event is checked with a marker: once the server reports that
it processed the leave (or the grace ran out), a marker client connects, and
the watcher must see the marker's ONLINE with nothing about the subject before it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from .support import Follower, RedisServer, ServerProcess, entry_ms, follow, metric, poll, truthy

Spawn = Callable[..., ServerProcess]
GRACE = 0.5
# Every test starts from an emptied Redis.
pytestmark = pytest.mark.usefixtures("redis")


async def start(
    spawn: Spawn, redis_server: RedisServer, server_id: str, *extra: str
) -> ServerProcess:
    server = spawn(
        "--redis-url", redis_server.url,
        "--server-id", server_id,
        "--heartbeat-interval", "5",
        "--leave-grace", str(GRACE),
        "--keepalive-interval", "0.5",
        *extra,
    )  # fmt: skip
    await server.wait_healthy()
    return server


async def leaves(session: aiohttp.ClientSession, server: ServerProcess, count: int) -> bool:
    return await metric(session, server.url, "presence_leaves_total") == count


async def offline_within_grace(watcher: Follower, client: str, closed_at: float) -> None:
    await poll(lambda: truthy("OFFLINE" in watcher.about(client)), timeout=5, what="OFFLINE")
    offline = next(
        e for e in watcher.events if e.event == "presence" and e.data["client"] == client
        and e.data["status"] == "OFFLINE"
    )  # fmt: skip
    assert offline.id is not None
    assert entry_ms(offline.id) - closed_at * 1000 <= GRACE * 1000 + 500


Nodes = tuple[ServerProcess, ServerProcess, Follower]


@pytest.fixture
async def nodes(
    spawn: Spawn, redis_server: RedisServer, session: aiohttp.ClientSession
) -> AsyncIterator[Nodes]:
    """node-1 and node-2 on one Redis, and a watcher client on node-2."""
    one = await start(spawn, redis_server, "node-1")
    two = await start(spawn, redis_server, "node-2")
    watcher = await follow(session, f"{two.url}/clients/watcher/events")
    yield one, two, watcher
    watcher.close()


async def only_online_before_marker(
    session: aiohttp.ClientSession, server: ServerProcess, watcher: Follower, client: str
) -> None:
    marker = await follow(session, f"{server.url}/clients/marker/events")
    await poll(lambda: truthy("ONLINE" in watcher.about("marker")), what="marker ONLINE")
    assert watcher.about(client) == ["ONLINE"]
    marker.close()


async def test_the_last_connection_closing_publishes_offline_within_the_grace(
    nodes: Nodes, session: aiohttp.ClientSession
) -> None:
    one, _two, watcher = nodes
    alice = await follow(session, f"{one.url}/clients/alice/events")
    await poll(lambda: truthy(watcher.about("alice") == ["ONLINE"]), what="alice ONLINE")
    alice.close()
    await offline_within_grace(watcher, "alice", time.time())
    assert watcher.about("alice") == ["ONLINE", "OFFLINE"]


async def test_tabs_on_one_or_several_servers_go_offline_only_with_the_last(
    nodes: Nodes, session: aiohttp.ClientSession
) -> None:
    one, two, watcher = nodes
    tabs = [
        await follow(session, f"{server.url}/clients/alice/events") for server in (one, one, two)
    ]
    await poll(lambda: truthy(watcher.about("alice") == ["ONLINE"]), what="alice ONLINE")
    tabs[0].close()  # one of two tabs on node-1: node-1 still holds alice
    tabs[2].close()  # the only tab on node-2: node-2 leaves, node-1 holds alice
    await poll(lambda: leaves(session, two, 1), timeout=5, what="node-2's leave")
    await only_online_before_marker(session, two, watcher, "alice")
    tabs[1].close()  # the last one anywhere
    await offline_within_grace(watcher, "alice", time.time())
    assert watcher.about("alice") == ["ONLINE", "OFFLINE"]


@pytest.mark.parametrize("where", ["same server", "other server"])
async def test_a_reload_within_the_grace_changes_nothing(
    where: str, nodes: Nodes, session: aiohttp.ClientSession
) -> None:
    one, two, watcher = nodes
    alice = await follow(session, f"{one.url}/clients/alice/events")
    await poll(lambda: truthy(watcher.about("alice") == ["ONLINE"]), what="alice ONLINE")
    alice.close()
    again = one if where == "same server" else two
    reloaded = await follow(session, f"{again.url}/clients/alice/events")
    if where == "same server":
        # The reload cancelled the leave: wait out the grace, then check.
        done = time.monotonic() + GRACE + 0.5
        await poll(lambda: truthy(time.monotonic() > done), what="grace over")
    else:
        # node-1 announces its leave, but node-2 holds alice by then.
        await poll(lambda: leaves(session, one, 1), timeout=5, what="node-1's leave")
    await only_online_before_marker(session, two, watcher, "alice")
    reloaded.close()


class Blackhole:
    """A TCP proxy whose client can vanish without a FIN: after ``vanish()`` it
    forwards nothing, and answers the server's next write with a reset, as a
    host that is gone would."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._vanished = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def vanish(self) -> None:
        self._vanished.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target)
        up = asyncio.create_task(self._pump(client_r, server_w))
        self._tasks.add(up)
        try:
            while chunk := await server_r.read(65536):
                if self._vanished.is_set():
                    sock = server_w.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    server_w.transport.abort()  # RST: the write failed
                    return
                client_w.write(chunk)
        finally:
            up.cancel()
            client_w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (chunk := await reader.read(65536)) and not self._vanished.is_set():
            writer.write(chunk)


async def test_a_connection_that_dies_without_a_close_is_found_by_its_keepalive(
    spawn: Spawn, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    server = await start(spawn, redis_server, "node-1")
    watcher = await follow(session, f"{server.url}/clients/watcher/events")
    proxy = Blackhole(server.port)
    await proxy.start()
    try:
        alice = await follow(session, f"http://127.0.0.1:{proxy.port}/clients/alice/events")
        await poll(lambda: truthy(watcher.about("alice") == ["ONLINE"]), what="alice ONLINE")
        proxy.vanish()
        vanished = time.time()
        await poll(lambda: truthy("OFFLINE" in watcher.about("alice")), timeout=5, what="OFFLINE")
        offline = next(e for e in watcher.events if e.data.get("status") == "OFFLINE")
        assert offline.id is not None
        # One keep-alive (0.5 s) finds it gone, then the grace; far below the 7.5 s TTL.
        assert entry_ms(offline.id) - vanished * 1000 <= (0.5 + GRACE) * 1000 + 750
        alice.close()
    finally:
        await proxy.close()
    watcher.close()
