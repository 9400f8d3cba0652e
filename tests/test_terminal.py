"""``presence watch`` and ``presence status`` as a user runs them: child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from presence import Presence, Settings
from presence.last_seen import iso

from .support import Redis, RedisServer, StartPresence, free_port, poll


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    return subprocess.run(
        [sys.executable, "-m", "presence", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


async def test_status_lists_online_clients_with_counts_per_server(
    redis: Redis, settings: Settings, start_presence: StartPresence, redis_server: RedisServer
) -> None:
    presence = await start_presence(settings.replace(heartbeat_interval=30))
    for client, server in (("alice", "node-1"), ("bob", "node-2"), ("carol", "node-1")):
        await redis.xadd("heartbeat", {"client": client, "server": server})
    await poll(lambda: _count(presence.online(), 3), what="three online")
    done = await asyncio.to_thread(run, "status", "--redis-url", redis_server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "CLIENT  SERVER",
        "alice   node-1",
        "bob     node-2",
        "carol   node-1",
        "",
        "3 online: node-1 2, node-2 1",
    ]


@asynccontextmanager
async def _watching(out: Path, redis_server: RedisServer, *extra: str) -> AsyncIterator[list[int]]:
    """``presence watch`` printing into ``out`` while the block runs, then
    ended with Ctrl-C; its exit code is in the list yielded, after."""
    code: list[int] = []
    with out.open("w") as sink:
        watcher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "presence", "watch", "--redis-url", redis_server.url, *extra,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield code
    finally:
        watcher.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            code.append(await watcher.wait())


async def _count(online: object, n: int) -> bool:
    return len(await online) == n  # type: ignore[misc]


async def test_watch_prints_one_line_per_transition_live_and_ends_on_ctrl_c(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    await redis.xadd("presence", {"client": "old", "status": "ONLINE", "server": "n1"})
    out = tmp_path / "watch.out"
    async with _watching(out, redis_server, "--last", "1") as code:
        await poll(lambda: _has(out, "old"), timeout=15, what="the last transition")
        await redis.xadd("presence", {"client": "alice", "status": "ONLINE", "server": "n1"})
        await redis.xadd("presence", {"client": "alice", "status": "OFFLINE", "server": "n1"})
        await poll(lambda: _has(out, "OFFLINE"), timeout=10, what="live transitions")
    lines = out.read_text().splitlines()
    assert [line.split(None, 2)[2] for line in lines] == [
        "ONLINE   old  (n1)",
        "ONLINE   alice  (n1)",
        "OFFLINE  alice  (n1)",
    ]
    assert code == [0]


async def _has(path: Path, text: str) -> bool:
    return text in path.read_text()  # noqa: ASYNC240 - a small local file


def test_watch_and_status_explain_in_one_line_what_is_missing() -> None:
    for command in ("watch", "status"):
        done = run(command)
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1
        assert "--redis-url" in done.stderr
        unreachable = run(command, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
        assert unreachable.returncode == 1
        assert unreachable.stderr.startswith("presence: error: cannot reach Redis")
        assert "Traceback" not in unreachable.stderr


async def test_status_of_a_room_lists_its_members_with_their_data(
    redis: Redis, settings: Settings, start_presence: StartPresence, redis_server: RedisServer
) -> None:
    presence = await start_presence(settings.replace(heartbeat_interval=30))
    for client, server, room in (
        ("carol", "node-1", "lobby"),
        ("alice", "node-1", "lobby"),
        ("bob", "node-2", "lobby"),
        ("dave", "node-1", "kitchen"),
    ):
        await redis.xadd("heartbeat", {"client": client, "server": server, "room": room})
    await poll(lambda: _members(presence, "lobby", 3), what="three in the lobby")
    assert await presence.set_data("lobby", "alice", {"status": "away"})
    done = await asyncio.to_thread(
        run, "status", "--redis-url", redis_server.url, "--room", "lobby"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "CLIENT  SERVER  DATA",
        'alice   node-1  {"status":"away"}',
        "bob     node-2",
        "carol   node-1",
        "",
        "3 in lobby: node-1 2, node-2 1",
    ]
    empty = await asyncio.to_thread(run, "status", "--redis-url", redis_server.url, "--room", "x")
    assert empty.stdout.splitlines() == ["CLIENT  SERVER  DATA", "", "0 in x"]
    member = await asyncio.to_thread(
        run, "status", "alice", "--redis-url", redis_server.url, "--room", "lobby"
    )
    assert member.stdout == 'alice in lobby  ONLINE  node-1  {"status":"away"}\n'


async def test_status_of_one_client_says_when_it_was_last_seen(
    redis: Redis, settings: Settings, start_presence: StartPresence, redis_server: RedisServer
) -> None:
    presence = await start_presence(settings)

    async def node_1() -> None:  # heartbeating alice while the command starts
        while True:
            await redis.xadd("heartbeat", {"client": "alice", "server": "node-1"})
            await asyncio.sleep(settings.heartbeat_interval / 2)

    beating = asyncio.create_task(node_1())
    try:
        await poll(lambda: presence.status("alice"), what="alice online")
        online = await asyncio.to_thread(run, "status", "alice", "--redis-url", redis_server.url)
    finally:
        beating.cancel()
    assert (online.returncode, online.stdout) == (0, "alice  ONLINE  node-1\n")
    # No more heartbeats: OFFLINE at her deadline, a TTL (0.6 s) later.
    seen = await poll(lambda: presence.last_seen("alice"), what="alice last seen")
    assert seen is not None
    offline = await asyncio.to_thread(run, "status", "alice", "--redis-url", redis_server.url)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith(f"alice  OFFLINE  last seen {iso(seen)} (")
    assert offline.stdout.endswith(" s ago)\n")
    never = await asyncio.to_thread(run, "status", "nobody", "--redis-url", redis_server.url)
    assert never.stdout == "nobody  OFFLINE  last seen: unknown\n"
    bad = await asyncio.to_thread(run, "status", "no spaces", "--redis-url", redis_server.url)
    assert (bad.returncode, bad.stderr) == (
        2,
        "presence: error: client id must be 1 to 128 letters, digits or ._:@-\n",
    )


async def _members(presence: Presence, room: str, n: int) -> bool:
    return len((await presence.room(room)).members) == n


async def test_watch_of_a_room_prints_its_transitions_with_data(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    stream = "room.{lobby}.presence"
    await redis.xadd(stream, {"room": "lobby", "client": "old", "status": "ONLINE", "server": "n1"})
    out = tmp_path / "watch.out"
    async with _watching(out, redis_server, "--room", "lobby", "--last", "1") as code:
        await poll(lambda: _has(out, "old"), timeout=15, what="the last transition")
        await redis.xadd("presence", {"client": "elsewhere", "status": "ONLINE", "server": "n1"})
        for status, data in (("ONLINE", '{"status":"here"}'), ("UPDATE", '{"status":"away"}')):
            fields = {"room": "lobby", "client": "alice", "status": status, "server": "n1"}
            await redis.xadd(stream, {**fields, "data": data})
        await redis.xadd(
            stream, {"room": "lobby", "client": "alice", "status": "OFFLINE", "server": "n1"}
        )
        await poll(lambda: _has(out, "OFFLINE"), timeout=10, what="live transitions")
    lines = out.read_text().splitlines()
    assert [line.split(None, 2)[2] for line in lines] == [
        "ONLINE   old  (n1)",
        'ONLINE   alice  (n1)  {"status":"here"}',
        'UPDATE   alice  (n1)  {"status":"away"}',
        "OFFLINE  alice  (n1)",
    ]
    assert code == [0]


def test_watch_and_status_refuse_an_invalid_room_in_one_line() -> None:
    for command, room in (("watch", "no spaces"), ("status", ""), ("status", "x" * 129)):
        # Refused before Redis is reached (none listens on port 1).
        done = run(command, "--redis-url", "redis://127.0.0.1:1/0", "--room", room)
        assert done.returncode == 2
        assert done.stderr == "presence: error: room must be 1 to 128 letters, digits or ._:@-\n"
