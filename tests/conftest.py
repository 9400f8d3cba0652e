from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from presence import Presence, Settings
from presence.redis_cluster import cluster_of

from .support import Redis, RedisServer, Serve, ServerProcess, StartPresence, StartRedis
from .topology import Cluster, Sentinels, client

#: Under pytest-xdist (``make test``), the tests of one expensive session
#: fixture run on one worker, which starts it once; the soaks, which measure
#: timing under faults, run one after another on one worker too.
_GROUPS = {"cluster": "cluster", "cluster_redis": "cluster", "browser": "browser"}
_SERIAL = ("tests/test_chaos.py", "tests/test_load.py", "tests/test_attack.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        group = next((g for name, g in _GROUPS.items() if name in fixtures), None)
        if group is None and item.nodeid.startswith(_SERIAL):
            group = "serial"
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; each test starts from an empty one."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartRedis]:
    """Start extra redis-servers (arguments are server flags); each is stopped after the test."""
    started: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis"), *extra)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sentinels]:
    """A primary, a replica and three sentinels, stopped after the test."""
    topology = Sentinels(tmp_path_factory.mktemp("sentinel"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client: Redis = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.config_set("notify-keyspace-events", "")
    if redis_server.version >= (7,):
        await client.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", 1)
    yield client
    await client.aclose()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    """Fast settings against the test redis-server: 0.4 s interval, 0.6 s TTL."""
    return Settings(
        redis_url=redis_server.url,
        server_id="test-1",
        heartbeat_interval=0.4,
        keepalive_interval=1,
    )


@pytest.fixture
async def start_presence(
    redis: Redis,
) -> AsyncIterator[StartPresence]:
    """Start ``Presence`` services in-process; each is closed after the test."""
    started: list[Presence] = []

    async def start(settings: Settings) -> Presence:
        presence = Presence(settings)
        await presence.start()
        started.append(presence)
        return presence

    yield start
    for presence in reversed(started):
        await presence.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve(redis: Redis) -> AsyncIterator[Serve]:
    """Serve aiohttp applications in-process, on an emptied Redis; closed after the test."""
    servers: list[TestServer] = []

    async def serve(app: web.Application) -> TestServer:
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        await server.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m presence serve`` processes; each is stopped after the test."""
    processes: list[ServerProcess] = []

    def spawn(
        *args: str, env: dict[str, str] | None = None, open_files: int | None = None
    ) -> ServerProcess:
        log = tmp_path / f"server-{len(processes) + 1}.log"
        process = ServerProcess(list(args), log, env=env or {}, open_files=open_files)
        process.start()
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        process.kill()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Redis Cluster of 3 primaries and 3 replicas, shared by the session's
    tests: one may fail a shard over to its replica, which leaves the cluster
    whole (3 primaries, each with a replica)."""
    topology = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture
async def cluster_redis(cluster: Cluster) -> AsyncIterator[Redis]:
    """A cluster client of ``cluster``, as presence opens it; emptied after the
    test (ask for it before ``spawn``, so the servers stop first)."""
    probe = aioredis.from_url(cluster.url)
    found = await cluster_of(probe, Settings(redis_url=cluster.url))
    await probe.aclose()
    assert found is not None
    try:
        yield found
    finally:
        await found.aclose()
        for node in cluster.primaries():  # as they are now: a test may fail one over
            with client(node.port) as direct:
                direct.flushall()
