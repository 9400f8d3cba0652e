"""What presence really sends, checked against ``docs/asyncapi.yaml``.

Real servers (on one Redis, and on a Redis Cluster) serve every kind of SSE
event: global and scoped snapshots, reset ones, global and room transitions,
a watch list's, occupancy. Each event's data and id, and every entry presence
wrote to its Redis streams, are validated against the document's schemas,
which forbid unknown fields: a field added to the code but not to the
document fails here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from presence.shards import shard_of, shard_tags

from .asyncapi import validate
from .servers import Spawn
from .support import Redis, RedisServer, ServerProcess, poll, truthy
from .topology import SHARDS, Cluster

_ROOM_DATA = quote(json.dumps({"status": "here"}))
#: A stream in two rooms, watching two ids, counting one room.
_SCOPED = f"room=lobby&room=den&watch=alice&watch=bob&occupancy=lobby&data={_ROOM_DATA}"


@dataclass(frozen=True)
class Frame:
    #: ``global``, ``scoped`` or ``occupancy``: the kind of stream it came on.
    stream: str
    event: str
    id: str | None
    data: Any


class Frames:
    """The events of one SSE stream, read in the background as sent (a frame
    per event, each with its own ``id`` line or none)."""

    def __init__(self, stream: str, response: aiohttp.ClientResponse) -> None:
        self.stream = stream
        self.frames: list[Frame] = []
        self._response = response
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        buffer = b""
        while chunk := await self._response.content.readany():
            buffer += chunk
            *whole, buffer = buffer.split(b"\n\n")
            for frame in whole:
                lines = frame.decode().split("\n")
                fields = dict(line.split(": ", 1) for line in lines if not line.startswith(":"))
                if fields:  # not a ping
                    assert len(fields) == len(lines), f"a repeated field in {frame!r}"
                    data = json.loads(fields["data"])
                    self.frames.append(Frame(self.stream, fields["event"], fields.get("id"), data))

    def has(self, match: Callable[[Frame], bool]) -> Callable[[], Any]:
        return lambda: truthy(any(match(f) for f in self.frames))

    def close(self) -> None:
        self._task.cancel()
        self._response.close()


async def _open(session: aiohttp.ClientSession, stream: str, url: str, **headers: str) -> Frames:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    response = await session.get(url, timeout=timeout, headers=headers)
    assert response.status == 200, await response.text()
    frames = Frames(stream, response)
    await poll(frames.has(lambda f: True), what=f"the first event of {url}")
    return frames


def _presence(client: str, status: str, *, room: bool = False) -> Callable[[Frame], bool]:
    def match(f: Frame) -> bool:
        d = f.data
        return (
            f.event == "presence"
            and d["client"] == client
            and d["status"] == status
            and ("room" in d) == room
        )

    return match


@dataclass(frozen=True)
class Keys:
    """The stream keys of a deployment: one of each, or one per shard."""

    heartbeat: list[str]
    presence: list[str]
    lobby: str
    #: Entry ids per global SSE id.
    parts: int


STANDALONE = Keys(["heartbeat"], ["presence"], "room.{lobby}.presence", 1)
_TAGS = shard_tags(SHARDS)
CLUSTER = Keys(
    [f"{{{t}}}.heartbeat" for t in _TAGS],
    [f"{{{t}}}.presence" for t in _TAGS],
    f"{{{_TAGS[shard_of('lobby', SHARDS)]}}}.room.{{lobby}}.presence",
    SHARDS,
)


async def _serve(spawn: Spawn, redis_url: str) -> ServerProcess:
    server = spawn(
        "--redis-url", redis_url,
        "--server-id", "node-1",
        "--heartbeat-interval", "1",
        "--leave-grace", "0.2",
        "--keepalive-interval", "0.25",
    )  # fmt: skip
    await server.wait_healthy()
    return server


async def _entries(redis: Redis, keys: list[str]) -> list[dict[str, str]]:
    found = []
    for key in keys:
        for _, fields in await redis.xrange(key):
            found.append({k.decode(): v.decode() for k, v in fields.items()})
    return found


async def _scenario(
    session: aiohttp.ClientSession, redis: Redis, server: ServerProcess, keys: Keys
) -> list[Frame]:
    """Every kind of event and entry, captured; checked against the document."""
    events = f"{server.url}/clients"
    opened: list[Frames] = []

    async def open_(stream: str, path: str, **headers: str) -> Frames:
        opened.append(found := await _open(session, stream, f"{events}/{path}", **headers))
        return found

    try:
        watcher = await open_("global", "watcher/events")
        scoped = await open_("scoped", f"roomy/events?{_SCOPED}")
        counter = await open_("occupancy", "counter/events?occupancy=lobby")
        data = quote(json.dumps({"mood": "ok"}))
        alice = await open_("scoped", f"alice/events?room=lobby&data={data}")
        await poll(scoped.has(_presence("alice", "ONLINE", room=True)), what="alice joins")
        await poll(scoped.has(_presence("alice", "ONLINE")), what="alice, watched, online")
        async with session.put(
            f"{server.url}/rooms/lobby/clients/alice/data", json={"mood": "busy"}
        ) as response:
            assert response.status == 200, await response.text()
        await poll(scoped.has(_presence("alice", "UPDATE", room=True)), what="alice's update")
        await open_("global", "bob/events")
        await poll(scoped.has(_presence("bob", "ONLINE")), what="bob, watched, online")
        await poll(watcher.has(_presence("bob", "ONLINE")), what="bob online")
        alice.close()
        await poll(scoped.has(_presence("alice", "OFFLINE", room=True)), what="alice leaves")
        await poll(watcher.has(_presence("alice", "OFFLINE")), what="alice offline")
        await poll(scoped.has(_presence("alice", "OFFLINE")), what="alice, watched, offline")
        await poll(counter.has(lambda f: f.data["count"] >= 1), what="lobby's count")

        # Every entry presence wrote so far, before the trim below.
        heartbeats = await _entries(redis, keys.heartbeat)
        for entry in heartbeats:
            validate("HeartbeatEntry", entry)
        assert {"room", "initial"} <= {name for e in heartbeats for name in e}
        for entry in await _entries(redis, keys.presence):
            validate("PresenceEntry", entry)
        room_entries = await _entries(redis, [keys.lobby])
        for entry in room_entries:
            validate("RoomPresenceEntry", entry)
        assert {e["status"] for e in room_entries} == {"ONLINE", "UPDATE", "OFFLINE"}

        # A resume from an entry the stream lost, and one of another scope: resets.
        old = next(f.id for f in watcher.frames if _presence("alice", "ONLINE")(f))
        assert old is not None
        for key in keys.presence:
            await redis.xtrim(key, maxlen=0)
        await open_("global", "late/events", **{"Last-Event-ID": old})
        other_scope = ".".join(["00000000", *["0-0"] * 3])
        await open_("scoped", f"roomy2/events?{_SCOPED}", **{"Last-Event-ID": other_scope})
        return [f for stream in opened for f in stream.frames]
    finally:
        for stream in opened:
            stream.close()


def _check(frames: list[Frame], keys: Keys) -> None:
    """Each frame against its schema; and the scenario gave every kind."""
    kinds: set[tuple[object, ...]] = set()
    for f in frames:
        if f.event == "occupancy":
            validate("Occupancy", f.data)
            assert f.id is None, f
            kinds.add((f.stream, "occupancy"))
            continue
        assert f.stream != "occupancy", f"a stream of occupancy alone sent {f}"
        assert f.id is not None, f
        if f.stream == "global":
            validate("GlobalEventId", f.id)
            assert len(f.id.split(",")) == keys.parts, f.id
        else:
            validate("ScopedEventId", f.id)
        if f.event == "snapshot":
            reset = "reset" in f.data
            if reset:
                validate("SnapshotReset", f.data)
            validate("SnapshotGlobal" if f.stream == "global" else "SnapshotScoped", f.data)
            kinds.add((f.stream, "snapshot", reset))
        else:
            assert f.event == "presence", f
            room = "room" in f.data
            validate("PresenceRoom" if room else "PresenceGlobal", f.data)
            kinds.add((f.stream, "room" if room else "global", f.data["status"]))
    assert kinds >= {
        ("global", "snapshot", False),
        ("global", "snapshot", True),
        ("global", "global", "ONLINE"),
        ("global", "global", "OFFLINE"),
        ("scoped", "snapshot", False),
        ("scoped", "snapshot", True),
        ("scoped", "global", "ONLINE"),
        ("scoped", "global", "OFFLINE"),
        ("scoped", "room", "ONLINE"),
        ("scoped", "room", "UPDATE"),
        ("scoped", "room", "OFFLINE"),
        ("scoped", "occupancy"),
        ("occupancy", "occupancy"),
    }, kinds


async def test_events_and_entries_on_one_redis_match_the_document(
    redis: Redis, redis_server: RedisServer, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    server = await _serve(spawn, redis_server.url)
    frames = await _scenario(session, redis, server, STANDALONE)
    _check(frames, STANDALONE)
    # Members' data reached the snapshots: the schema saw it too.
    assert any(
        m.get("data")
        for f in frames
        if f.event == "snapshot"
        for m in f.data.get("rooms", {}).get("lobby", [])
    )


async def test_events_and_entries_on_a_cluster_match_the_document(
    cluster: Cluster, cluster_redis: Redis, spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    server = await _serve(spawn, cluster.url)
    _check(await _scenario(session, cluster_redis, server, CLUSTER), CLUSTER)
