"""Every example, run as a user would run it, so that none can rot."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from .support import Redis, RedisServer, ServerProcess, free_port, open_events, poll
from .topology import Cluster, Sentinels

EMBED_APP = Path(__file__).resolve().parent.parent / "examples" / "embed_app.py"


@dataclass
class App:
    process: subprocess.Popen[str]
    url: str

    def output(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.read() if self.process.poll() is not None else ""


@pytest.fixture
def embed_app() -> Iterator[App]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EMBED_APP), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield App(process, f"http://127.0.0.1:{port}")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.stdout is not None
        process.stdout.close()


async def test_websocket_user_is_online_through_the_mounted_presence(
    embed_app: App, session: aiohttp.ClientSession
) -> None:
    async def healthy() -> bool:
        if embed_app.process.poll() is not None:
            raise AssertionError(f"embed_app exited early:\n{embed_app.output()}")
        try:
            async with session.get(f"{embed_app.url}/presence/healthz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await poll(healthy, timeout=15, what="embed_app healthy")

    async with session.ws_connect(f"{embed_app.url}/ws/carol") as ws:
        assert await ws.receive_json(timeout=5) == {"user": "carol", "status": "ONLINE"}

        async def carol_online() -> bool:
            async with session.get(f"{embed_app.url}/presence/clients/carol") as response:
                body = await response.json()
                return response.status == 200 and body["status"] == "ONLINE"

        await poll(carol_online, what="carol ONLINE")
        async with session.get(f"{embed_app.url}/online") as response:
            assert await response.json() == {"online": ["carol"]}

        dave = await open_events(session, f"{embed_app.url}/presence/clients/dave/events")
        try:
            snapshot = await dave.next()
            assert snapshot.event == "snapshot"
            assert [c["client"] for c in snapshot.data["clients"]] == ["carol"]
        finally:
            dave.close()

    embed_app.process.send_signal(signal.SIGTERM)
    assert embed_app.process.wait(10) == 0
    assert "carol is ONLINE" in embed_app.output()


EXAMPLES = EMBED_APP.parent


async def test_the_curl_walkthrough_shows_two_clients_come_and_go(
    spawn: Callable[..., ServerProcess],
) -> None:
    server = spawn("--leave-grace", "0.5")  # its in-process Redis
    await server.wait_healthy()
    env = {**os.environ, "PRESENCE_URL": server.url, "SECONDS_OPEN": "4"}
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(EXAMPLES / "curl_walkthrough.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    alice = done.stdout.split("== what alice received")[1]
    assert '{"client":"bob","status":"ONLINE"' in alice
    assert '{"client":"bob","status":"OFFLINE"' in alice
    assert '"count": 2' in done.stdout


async def test_the_external_platform_keeps_its_users_online_and_sees_everyone(
    spawn: Callable[..., ServerProcess],
    redis_server: RedisServer,
    redis: Redis,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    server = spawn("--redis-url", redis_server.url, "--server-id", "node-1")
    await server.wait_healthy()
    out = tmp_path / "platform.out"
    async with _platform(out, redis_server.url):
        await poll(lambda: _contains(out, "following presence"), timeout=10, what="platform up")
        await poll(lambda: _server_of(redis, "carol"), timeout=10, what="carol ONLINE")
        alice = await open_events(session, f"{server.url}/clients/alice/events")
        snapshot = await alice.next()
        assert snapshot.data == {"clients": [{"client": "carol", "server": "platform-x"}]}
        await poll(lambda: _contains(out, "alice is ONLINE (on node-1)"), what="platform sees")
        alice.close()


async def test_the_external_platform_puts_its_users_in_rooms_through_redis_alone(
    spawn: Callable[..., ServerProcess],
    redis_server: RedisServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    server = spawn("--redis-url", redis_server.url, "--server-id", "node-1")
    await server.wait_healthy()
    out = tmp_path / "platform.out"
    async with _platform(out, redis_server.url, "--room", "lobby", "--data", '{"status": "here"}'):
        await poll(lambda: _contains(out, "following lobby"), timeout=10, what="platform up")
        await poll(lambda: _contains(out, "carol is ONLINE in lobby"), what="carol in lobby")
        alice = await open_events(session, f"{server.url}/clients/alice/events?room=lobby")
        snapshot = await alice.next()
        assert snapshot.data == {
            "rooms": {
                "lobby": [{"client": "carol", "server": "platform-x", "data": {"status": "here"}}]
            }
        }
        await poll(lambda: _contains(out, "alice is ONLINE in lobby (on node-1)"), what="alice")
        alice.close()


async def test_the_external_platform_reaches_presence_through_the_sentinels(
    spawn: Callable[..., ServerProcess],
    sentinels: Sentinels,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    server = spawn("--redis-url", sentinels.url, "--server-id", "node-1")
    await server.wait_healthy()
    out = tmp_path / "platform.out"
    async with _platform(out, sentinels.url, "--room", "lobby"):
        await poll(lambda: _contains(out, "carol is ONLINE in lobby"), timeout=10, what="carol")
        alice = await open_events(session, f"{server.url}/clients/alice/events?room=lobby")
        snapshot = await alice.next()
        assert snapshot.data == {"rooms": {"lobby": [{"client": "carol", "server": "platform-x"}]}}
        await poll(lambda: _contains(out, "alice is ONLINE in lobby (on node-1)"), what="alice")
        alice.close()


async def test_the_external_platform_runs_on_a_cluster_through_redis_alone(
    cluster: Cluster,
    cluster_redis: Redis,
    spawn: Callable[..., ServerProcess],
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """On a cluster: the room's shard for the membership, carol's own shard
    for her global presence, every shard's stream followed."""
    server = spawn("--redis-url", cluster.url, "--server-id", "node-1")
    await server.wait_healthy()
    out = tmp_path / "platform.out"
    async with _platform(out, cluster.url, "--room", "lobby", "--data", '{"s": 1}'):
        await poll(lambda: _contains(out, "carol is ONLINE in lobby"), timeout=10, what="carol")
        everyone = await open_events(session, f"{server.url}/clients/dave/events")
        assert (await everyone.next()).data == {
            "clients": [{"client": "carol", "server": "platform-x"}]
        }
        alice = await open_events(session, f"{server.url}/clients/alice/events?room=lobby")
        snapshot = await alice.next()
        assert snapshot.data == {
            "rooms": {"lobby": [{"client": "carol", "server": "platform-x", "data": {"s": 1}}]}
        }
        await poll(lambda: _contains(out, "alice is ONLINE in lobby (on node-1)"), what="alice")
        alice.close()
        everyone.close()
    async with _platform(out, cluster.url):
        await poll(lambda: _contains(out, "following presence"), timeout=10, what="platform up")
        bob = await open_events(session, f"{server.url}/clients/bob/events")
        await poll(lambda: _contains(out, "bob is ONLINE (on node-1)"), what="bob, any shard")
        bob.close()


@asynccontextmanager
async def _platform(out: Path, redis_url: str, *extra: str) -> AsyncIterator[None]:
    """examples/external_platform.py for user carol, its output in ``out``;
    stopped with SIGTERM, which it must answer with exit code 0."""
    with out.open("w") as sink:
        platform = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "external_platform.py"),
            "--redis-url", redis_url, "--user", "carol", "--interval", "1", *extra,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield
    finally:
        platform.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await platform.wait() == 0


async def _server_of(redis: Redis, client: str) -> bool:
    return bool(await redis.hget("online.servers", client) == b"platform-x")


async def _contains(path: Path, text: str) -> bool:
    return text in path.read_text()  # noqa: ASYNC240 - a small local file
