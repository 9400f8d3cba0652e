"""The soak's processes and clients: one redis-server that writes an
append-only file (``appendfsync always``), three ``python -m presence serve``
processes, an observer client on each, the steady clients, the users the
driver moves around, and the tape. Everything they see is kept, with a
timestamped note of each action and fault (``chaos.log`` in the workdir).

node-1 is the stable server: it is never killed nor frozen. The steady
clients hold one stream each on it for the whole run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..support import RedisServer, ServerProcess, poll, truthy
from ..topology import SHARDS, Cluster
from .streams import Layout, Tape, User, Watcher, node, position

INTERVAL = 1.0
#: The TTL's factor on a cluster: a slack of 1.5 s over the interval.
CLUSTER_TTL_FACTOR = 2.5
GRACE = 0.5
KEEPALIVE = 0.5
#: node-1, the server that is never killed nor frozen.
STABLE = 0
SERVERS = 3
#: After the chaos stops: clients reconnected, the TTL (1.5 s) and the grace run
#: out, a restarted server catches up. Polled; this is only the deadline.
SETTLE = 25.0


@dataclass(frozen=True)
class Plan:
    seed: int
    #: Seconds of chaos.
    duration: float
    #: Client ids besides the observers, the steady ones included.
    clients: int
    steady: int
    #: On a Redis Cluster of 3 primaries and 3 replicas, instead of one Redis.
    cluster: bool = False

    @staticmethod
    def seed_from_env() -> int:
        chosen = os.environ.get("PRESENCE_CHAOS_SEED")
        return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


@dataclass
class Note:
    at: float
    kind: str  # "fault", "action" or "harness"
    text: str


@dataclass
class Reload:
    client: str
    server: int
    closed: float
    #: When the new stream's response came: the server held the client again by then.
    reopened: float


class Harness:
    """The processes and clients of one run, and the record of what they saw."""

    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(
            workdir / "redis", "--appendonly", "yes", "--appendfsync", "always"
        )
        #: On a cluster, its nodes (``redis`` is then unused).
        self.cluster = Cluster(workdir / "cluster") if plan.cluster else None
        self.layout = Layout(SHARDS if plan.cluster else 0)
        self.servers = [
            ServerProcess(self._flags(n), workdir / f"{node(n)}.log") for n in range(SERVERS)
        ]
        self.state = ["up"] * SERVERS
        self.notes: list[Note] = []
        self.t0 = time.time()
        self.closing = False
        self.counts: Counter[str] = Counter()
        self.tape = Tape(self.redis_url, self.layout)
        steady = plan.steady
        self.steady = [Watcher(f"steady-{n:02d}", STABLE, resume=False) for n in range(steady)]
        self.observers = [Watcher(f"observer-{n + 1}", n, resume=True) for n in range(SERVERS)]
        self.users = [User(f"user-{n:03d}") for n in range(plan.clients - steady)]
        self.ready = 0.0
        #: Each server's ``GET /clients`` once settled.
        self.final_lists: list[set[str] | None] = []
        #: The entries Redis counted added to the stream, once settled.
        self.added: int | None = None
        #: Whether keep-alives still came on every open steady stream once settled.
        self.keepalives = True
        self.reloads: list[Reload] = []
        #: When a server or Redis was away: killed or frozen, until back.
        self.outages: list[tuple[float, float]] = []
        #: When each client's streams closed or were lost.
        self.ends: dict[str, list[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._log = (workdir / "chaos.log").open("w")

    @property
    def redis_url(self) -> str:
        return self.cluster.url if self.cluster is not None else self.redis.url

    def client(self) -> Any:
        """A client of the Redis (or the cluster) the servers share."""
        if self.cluster is not None:
            return RedisCluster.from_url(self.cluster.url, decode_responses=True)
        return aioredis.from_url(self.redis.url, decode_responses=True)

    def _flags(self, index: int) -> list[str]:
        # On a cluster, keys outlive the interval by more: a primary's failover
        # pauses its writes for up to a second or so, and the TTL's slack over
        # the interval must cover it (2.5 s at the defaults).
        ttl_factor = CLUSTER_TTL_FACTOR if self.cluster is not None else 1.5
        return [
            "--redis-url", self.redis_url,
            "--server-id", node(index),
            "--heartbeat-interval", str(INTERVAL),
            "--ttl-factor", str(ttl_factor),
            "--leave-grace", str(GRACE),
            "--keepalive-interval", str(KEEPALIVE),
        ]  # fmt: skip

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    def note(self, kind: str, text: str) -> None:
        at = time.time()
        self.notes.append(Note(at, kind, text))
        line = f"{at - self.t0:8.3f}  {kind:<7} {text}"
        self._log.write(line + "\n")
        if kind != "action":
            print(line, flush=True)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.note("harness", f"a task failed: {exc!r}")

    def up(self) -> list[int]:
        return [n for n, state in enumerate(self.state) if state == "up"]

    async def start(self) -> None:
        """Redis and the servers, started and healthy."""
        print(
            f"chaos seed {self.plan.seed}: {self.plan.clients} clients "
            f"({self.plan.steady} steady on {node(STABLE)}), {SERVERS} observers, "
            f"{self.plan.duration:.0f} s of chaos; logs in {self.workdir}",
            flush=True,
        )
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self._session = aiohttp.ClientSession(connector=connector)
        await asyncio.to_thread(self.redis.start if self.cluster is None else self.cluster.start)
        for server in self.servers:
            server.start()
        for server in self.servers:
            await server.wait_healthy(timeout=30)

    async def begin(self) -> None:
        """The tape and the steady clients, online everywhere; then the
        observers, started but not waited for (see ``observed``)."""
        self.spawn(self.tape.run())
        for watcher in self.steady:
            self.spawn(watcher.run(self))
        steady = {w.client for w in self.steady}
        await poll(
            lambda: self._everywhere(lambda online: steady <= online),
            timeout=20,
            what="the steady clients online on every server",
        )
        await poll(
            lambda: truthy(all(w.received for w in self.steady)), what="the steady snapshots"
        )
        # From here on, no snapshot may leave a steady client out.
        self.ready = time.time()
        for watcher in self.observers:
            self.spawn(watcher.run(self))

    async def observed(self) -> None:
        """Every observer has its snapshot."""
        await poll(
            lambda: truthy(all(w.received for w in self.observers)),
            timeout=20,
            what="the observers' snapshots",
        )
        self.note("harness", f"{sum(bool(u.streams) for u in self.users)} users connected")

    async def _everywhere(self, condition: Callable[[set[str]], bool]) -> bool:
        for server in self.servers:
            online = await self._listed(server)
            if online is None or not condition(online):
                return False
        return True

    async def _listed(self, server: ServerProcess) -> set[str] | None:
        try:
            async with self.session.get(f"{server.url}/clients") as response:
                if response.status != 200:
                    return None
                body = await response.json()
                return {c["client"] for c in body["clients"]}
        except (aiohttp.ClientError, OSError):
            return None

    def expected(self) -> set[str]:
        """The clients with an open stream."""
        open_users = {u.client for u in self.users if any(s.open for s in u.streams)}
        steady = {w.client for w in self.steady if w.connected}
        observers = {w.client for w in self.observers if w.connected}
        return open_users | steady | observers

    async def _converged(self) -> bool:
        if not all(u.idle() for u in self.users):
            return False
        if not all(w.connected for w in self.observers):
            return False
        truth = self.expected()
        watchers = [*self.observers, *(w for w in self.steady if w.connected)]
        if any(w.view() != truth - {w.client} for w in watchers):
            return False
        return await self._everywhere(lambda online: online == truth)

    async def settle(self) -> None:
        """Once the chaos stops: every view converged (or the deadline), the
        tape at the stream's end, keep-alives still on the steady streams."""
        started = time.time()
        try:
            await poll(self._converged, timeout=SETTLE, interval=0.1, what="convergence")
            self.note("harness", f"converged {time.time() - started:.1f} s after the chaos")
        except AssertionError:
            self.note("harness", f"not converged {SETTLE:.0f} s after the chaos")
        self.final_lists = [await self._listed(server) for server in self.servers]
        # The tape has read everything there is.
        redis = self.client()
        added: int | None = 0
        try:
            for shard, stream in enumerate(self.layout.streams):
                if not await redis.exists(stream):
                    continue  # no entry ever (on a cluster, a shard nobody was on)
                info = await redis.xinfo_stream(stream)
                count = info.get("entries-added", info.get("entries_added"))
                added = None if added is None or count is None else added + count
                last = await redis.xrevrange(stream, count=1)
                if not last:
                    continue  # trimmed to nothing
                await poll(
                    partial(self._tape_at, shard, last[0][0]), what="the tape at the stream's end"
                )
        finally:
            await redis.aclose()
        self.added = added
        # Steady streams really are alive: keep-alives still arrive on each.
        before = {w.client: w.stream.comments for w in self.steady if w.stream is not None}
        try:
            await poll(
                lambda: truthy(
                    all(
                        w.stream is not None and w.stream.comments >= before[w.client] + 2
                        for w in self.steady
                        if w.connected
                    )
                ),
                what="keep-alives on the steady streams",
            )
        except AssertionError:
            self.keepalives = False

    async def _tape_at(self, shard: int, end: str) -> bool:
        return position(self.tape.positions[shard]) >= position(end)

    async def teardown(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        streams = [s for u in self.users for s in u.streams]
        streams += [w.stream for w in [*self.observers, *self.steady] if w.stream is not None]
        for stream in streams:
            stream.close()
        await asyncio.gather(
            *(s.task for s in streams if s.task is not None), return_exceptions=True
        )
        for server in self.servers:
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGCONT)
            server.kill()
        self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self._session is not None:
            await self._session.close()
        self._log.close()
