"""The streams the soak holds and records: a client's SSE connection read in
the background, the watchers that keep all they receive (an observer resumes
with ``Last-Event-ID`` after any disconnect; a steady client never should
need to), and the tape, the ``presence`` stream read with ``XREAD`` from its
start as the run goes. A trim hands the tape what it removed, atomically, so
the record stays whole; any other loss is a gap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from presence.shards import MAX_SHARDS, shard_of, shard_tags

from ..support import Event, EventStream

if TYPE_CHECKING:
    from .harness import Harness

OPEN_TIMEOUT = 10.0
STREAM = "presence"
ONLINE, OFFLINE = "ONLINE", "OFFLINE"
Entry = tuple[str, str, str]  # client, status, server


def node(index: int) -> str:
    return f"node-{index + 1}"


def position(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Layout:
    """Where the presence streams are: one, or one per shard of a cluster. The
    record keys each entry by its id; on a cluster by an id of its own,
    ``<ms>-<seq * MAX_SHARDS + shard>``: unique over the shards, in each
    shard's order, and in the order of time across them."""

    def __init__(self, shards: int = 0) -> None:
        self.shards = shards
        tags = shard_tags(shards) if shards else ()
        self.streams = [f"{{{t}}}.{STREAM}" for t in tags] or [STREAM]

    def shard(self, client: str) -> int:
        return shard_of(client, self.shards) if self.shards else 0

    def key(self, shard: int, entry_id: str) -> str:
        """The record's key of entry ``entry_id`` of shard ``shard``'s stream."""
        if not self.shards:
            return entry_id
        ms, seq = position(entry_id)
        return f"{ms}-{seq * MAX_SHARDS + shard}"

    def event_key(self, event_id: str, client: str) -> str:
        """The record's key of the entry of a ``presence`` SSE event about
        ``client`` (on a cluster, its id holds every shard's position)."""
        if not self.shards:
            return event_id
        shard = self.shard(client)
        return self.key(shard, event_id.split(",")[shard])


@dataclass
class Received:
    at: float
    connection: int
    event: Event


class Stream:
    """One SSE connection of a client id to a server, read in the background."""

    def __init__(
        self,
        harness: Harness,
        client: str,
        server: int,
        *,
        record: list[Received] | None = None,
        connection: int = 0,
        on_end: Callable[[Stream], None] | None = None,
    ) -> None:
        self.harness = harness
        self.client = client
        self.server = server
        self.record = record
        self.connection = connection
        self.on_end = on_end
        self.last_id: str | None = None
        self.ended = asyncio.Event()
        self.closing = False
        self._events: EventStream | None = None
        self._task: asyncio.Task[None] | None = None

    def _ends(self) -> None:
        self.harness.ends.setdefault(self.client, []).append(time.time())

    @property
    def open(self) -> bool:
        return self._task is not None and not self.ended.is_set()

    @property
    def comments(self) -> int:
        return 0 if self._events is None else self._events.comments

    async def connect(self, resume: str | None = None) -> bool:
        """Open the stream (resuming after ``resume``); False if the server refused or is gone."""
        url = f"{self.harness.servers[self.server].url}/clients/{self.client}/events"
        headers = {"Last-Event-ID": resume} if resume else {}
        self.last_id = resume
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=5)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                response = await self.harness.session.get(url, headers=headers, timeout=timeout)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        if response.status != 200:
            response.close()
            return False
        self._events = EventStream(response)
        self._task = asyncio.create_task(self._read())
        return True

    async def _read(self) -> None:
        assert self._events is not None
        try:
            while True:
                event = await self._events.next(timeout=3600)
                if event.id is not None:
                    self.last_id = event.id
                if self.record is not None:
                    self.record.append(Received(time.time(), self.connection, event))
        except (EOFError, aiohttp.ClientError, OSError, ValueError):
            pass
        finally:
            self._events.close()  # the server ended it: release the connection
            if not self.closing:
                self._ends()
                if self.on_end is not None:
                    self.on_end(self)
            self.ended.set()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def close(self) -> None:
        """Close it for good, as a closed tab does."""
        if not self.closing and not self.ended.is_set():
            self._ends()
        self.closing = True
        if self._task is not None:
            self._task.cancel()
        if self._events is not None:
            self._events.close()
        self.ended.set()


class User:
    """A client id whose streams the driver opens and closes."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.streams: list[Stream] = []
        self.lock = asyncio.Lock()
        #: Reconnects scheduled but not done.
        self.pending = 0

    def idle(self) -> bool:
        return not self.lock.locked() and self.pending == 0


class Watcher:
    """A client that records everything it receives: an observer (resumes with
    ``Last-Event-ID`` after any disconnect) or a steady client (never should
    need to; if its stream ends, that is noted and it stays gone)."""

    def __init__(self, client: str, server: int, *, resume: bool) -> None:
        self.client = client
        self.server = server
        self.resume = resume
        self.received: list[Received] = []
        self.connections = 0
        self.stream: Stream | None = None
        #: A steady client whose stream ended.
        self.lost = False

    @property
    def connected(self) -> bool:
        return self.stream is not None and self.stream.open

    async def run(self, harness: Harness) -> None:
        last_id: str | None = None
        while not harness.closing:
            stream = Stream(
                harness, self.client, self.server, record=self.received, connection=self.connections
            )
            if await stream.connect(last_id):
                self.connections += 1
                self.stream = stream
                await stream.ended.wait()
                if harness.closing:
                    return
                if not self.resume:
                    self.lost = True
                    harness.note(
                        "harness", f"{self.client}: its stream on {node(self.server)} ended"
                    )
                    return
                last_id = stream.last_id
                harness.note(
                    "harness",
                    f"{self.client} lost its stream on {node(self.server)}; "
                    f"resuming after {last_id}",
                )
            await asyncio.sleep(0.2)

    def view(self) -> set[str]:
        online: set[str] = set()
        for item in self.received:
            event = item.event
            if event.event == "snapshot":
                online = {c["client"] for c in event.data["clients"]}
            elif event.data["status"] == ONLINE:
                online.add(event.data["client"])
            else:
                online.discard(event.data["client"])
        return online


class Tape:
    """Every presence stream read with XREAD from its start, as the run goes."""

    def __init__(self, url: str, layout: Layout) -> None:
        self.url = url
        self.layout = layout
        self.entries: dict[str, Entry] = {}
        #: Entries a trim took (the driver trims atomically with a copy).
        self.trimmed: dict[str, Entry] = {}
        #: Positions the reader found gone from the stream when it read after them.
        self.missing: list[str] = []
        #: Each stream's position read up to.
        self.positions = ["0-0"] * len(layout.streams)
        self.failures = 0

    def record(self) -> dict[str, Entry]:
        return {**self.trimmed, **self.entries}

    def gaps(self) -> list[str]:
        """Positions after which entries may have been lost unseen: gone, and
        not by a trim the driver copied."""
        return [p for p in self.missing if p not in self.trimmed]

    async def run(self) -> None:
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": 3,
            "socket_connect_timeout": 1,
        }
        if self.layout.shards:
            redis: Any = RedisCluster.from_url(self.url, **options)
        else:
            redis = aioredis.from_url(self.url, **options)
        try:
            await asyncio.gather(*(self._read(redis, n) for n in range(len(self.positions))))
        finally:
            await redis.aclose()

    async def _read(self, redis: Any, shard: int) -> None:
        stream, key = self.layout.streams[shard], self.layout.key
        while True:
            here = self.positions[shard]
            try:
                pipe = redis.pipeline(transaction=False)
                pipe.xrange(stream, here, here, count=1)
                pipe.xread({stream: here}, count=1000, block=200)
                found, reply = await pipe.execute()
            except (RedisError, OSError, AttributeError, TypeError):
                # AttributeError, TypeError: redis-py's cluster client closes
                # its connections under commands in flight on a failover.
                self.failures += 1
                await asyncio.sleep(0.1)
                continue
            if here != "0-0" and not found and key(shard, here) not in self.missing:
                self.missing.append(key(shard, here))
            for entry_id, fields in stream_items(reply):
                entry = (fields["client"], fields["status"], fields["server"])
                self.entries[key(shard, entry_id)] = entry
                self.positions[shard] = entry_id


def stream_items(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an XREAD reply, RESP2 (a list) or RESP3 (a map)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [items for _, items in reply]
    return [(entry_id, dict(fields)) for items in streams for entry_id, fields in items]
