"""Chaos soak: three ``python -m presence serve`` processes on one redis-server
that writes an append-only file (``appendfsync always``), a few dozen client
ids, and at random: churn, second tabs, reloads, a server killed (SIGKILL) and
restarted, a server frozen (SIGSTOP) for 3 s, Redis killed and restarted from
its AOF, and the ``presence`` stream trimmed to nothing.

node-1 is the stable server: it is never killed nor frozen. The steady
clients hold one stream each on it for the whole run. Every server has an
observer client that records all it receives and resumes with
``Last-Event-ID`` after any disconnect; the ``presence`` stream itself is read
with ``XREAD`` from its start as the run goes (a trim hands the harness what it
removed, atomically, so the record stays whole; any other loss is a gap).

Checked once the chaos stops and everything has settled:

1. In the ``presence`` stream, ONLINE and OFFLINE alternate per client, starting
   with ONLINE (reset only where the reader saw a gap). Each observer's events,
   between its snapshots, agree: no ONLINE of a client already online, no
   OFFLINE of one that is not, no event twice.
2. Every server's ``GET /clients``, every observer's view, and the state the
   stream adds up to are exactly the clients with an open stream.
3. A steady client never flaps: no OFFLINE of it in the stream, and no
   observer ever saw it go OFFLINE or left it out of a snapshot. And (3b) a
   reload that reopened on the same server within the leave grace, with no
   server or Redis away around it, is followed by no OFFLINE.

The seed is printed with the report; ``PRESENCE_CHAOS_SEED=<seed>`` replays the
same choices (their timing, and so the interleaving, still varies).
``python -m bench.chaos`` is the long form.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .support import Event, EventStream, RedisServer, ServerProcess, poll

INTERVAL = 1.0
GRACE = 0.5
KEEPALIVE = 0.5
FREEZE = 3.0
#: node-1, the server that is never killed nor frozen.
STABLE = 0
SERVERS = 3
#: After the chaos stops: clients reconnected, the TTL (1.5 s) and the grace run
#: out, a restarted server catches up. Polled; this is only the deadline.
SETTLE = 25.0
OPEN_TIMEOUT = 10.0
STREAM = "presence"
ONLINE, OFFLINE = "ONLINE", "OFFLINE"
# Takes the whole stream and trims it in one step, so no entry escapes the record.
TRIM = """
local taken = redis.call('XRANGE', KEYS[1], '-', '+')
redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
return taken
"""
Entry = tuple[str, str, str]  # client, status, server


def node(index: int) -> str:
    return f"node-{index + 1}"


def position(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Plan:
    seed: int
    #: Seconds of chaos.
    duration: float
    #: Client ids besides the observers, the steady ones included.
    clients: int
    steady: int

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


@dataclass
class Received:
    at: float
    connection: int
    event: Event


class Stream:
    """One SSE connection of a client id to a server, read in the background."""

    def __init__(
        self,
        chaos: Chaos,
        client: str,
        server: int,
        *,
        record: list[Received] | None = None,
        connection: int = 0,
        on_end: Callable[[Stream], None] | None = None,
    ) -> None:
        self.chaos = chaos
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
        self.chaos.ends.setdefault(self.client, []).append(time.time())

    @property
    def open(self) -> bool:
        return self._task is not None and not self.ended.is_set()

    @property
    def comments(self) -> int:
        return 0 if self._events is None else self._events.comments

    async def connect(self, resume: str | None = None) -> bool:
        """Open the stream (resuming after ``resume``); False if the server refused or is gone."""
        url = f"{self.chaos.servers[self.server].url}/clients/{self.client}/events"
        headers = {"Last-Event-ID": resume} if resume else {}
        self.last_id = resume
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=5)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                response = await self.chaos.session.get(url, headers=headers, timeout=timeout)
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

    async def run(self, chaos: Chaos) -> None:
        last_id: str | None = None
        while not chaos.closing:
            stream = Stream(
                chaos, self.client, self.server, record=self.received, connection=self.connections
            )
            if await stream.connect(last_id):
                self.connections += 1
                self.stream = stream
                await stream.ended.wait()
                if chaos.closing:
                    return
                if not self.resume:
                    self.lost = True
                    chaos.note("harness", f"{self.client}: its stream on {node(self.server)} ended")
                    return
                last_id = stream.last_id
                chaos.note(
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
    """The presence stream read with XREAD from its start, as the run goes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.entries: dict[str, Entry] = {}
        #: Entries a trim took (the harness trims atomically with a copy).
        self.trimmed: dict[str, Entry] = {}
        #: Positions the reader found gone from the stream when it read after them.
        self.missing: list[str] = []
        self.position = "0-0"
        self.failures = 0

    def record(self) -> dict[str, Entry]:
        return {**self.trimmed, **self.entries}

    def gaps(self) -> list[str]:
        """Positions after which entries may have been lost unseen: gone, and
        not by a trim the harness copied."""
        return [p for p in self.missing if p not in self.trimmed]

    async def run(self) -> None:
        redis: Any = aioredis.from_url(
            self.url, decode_responses=True, socket_timeout=3, socket_connect_timeout=1
        )
        try:
            while True:
                here = self.position
                try:
                    pipe = redis.pipeline(transaction=False)
                    pipe.xrange(STREAM, here, here, count=1)
                    pipe.xread({STREAM: here}, count=1000, block=200)
                    found, reply = await pipe.execute()
                except (RedisError, OSError):
                    self.failures += 1
                    await asyncio.sleep(0.1)
                    continue
                if here != "0-0" and not found and here not in self.missing:
                    self.missing.append(here)
                for entry_id, fields in stream_items(reply):
                    self.entries[entry_id] = (fields["client"], fields["status"], fields["server"])
                    self.position = entry_id
        finally:
            await redis.aclose()


def stream_items(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an XREAD reply, RESP2 (a list) or RESP3 (a map)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [items for _, items in reply]
    return [(entry_id, dict(fields)) for items in streams for entry_id, fields in items]


@dataclass
class Report:
    plan: Plan
    lines: list[str] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, invariant: str, problem: str) -> None:
        self.problems.setdefault(invariant, []).append(problem)

    def text(self) -> str:
        out = list(self.lines)
        for invariant in INVARIANTS:
            found = self.problems.get(invariant, [])
            out.append(f"{invariant}: {'ok' if not found else f'{len(found)} problem(s)'}")
            out += [f"  {p}" for p in found[:40]]
            if len(found) > 40:
                out.append(f"  ... and {len(found) - 40} more")
        out.append(f"seed {self.plan.seed}: replay with PRESENCE_CHAOS_SEED={self.plan.seed}")
        return "\n".join(out)


INVARIANTS = (
    "harness",
    "invariant 1 (ONLINE/OFFLINE alternate)",
    "invariant 2 (final state is the truth)",
    "invariant 3 (steady clients never flap)",
    "invariant 3b (a reload within the grace, away from faults, changes nothing)",
)
HARNESS, ALTERNATE, FINAL, STEADY, RELOAD = INVARIANTS


class Chaos:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.workdir = workdir
        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(
            workdir / "redis", "--appendonly", "yes", "--appendfsync", "always"
        )
        self.servers = [
            ServerProcess(self._flags(n), workdir / f"{node(n)}.log") for n in range(SERVERS)
        ]
        self.state = ["up"] * SERVERS
        self.notes: list[Note] = []
        self.t0 = time.time()
        self.closing = False
        self.counts: Counter[str] = Counter()
        self.tape = Tape(self.redis.url)
        steady = plan.steady
        self.steady = [Watcher(f"steady-{n:02d}", STABLE, resume=False) for n in range(steady)]
        self.observers = [Watcher(f"observer-{n + 1}", n, resume=True) for n in range(SERVERS)]
        self.users = [User(f"user-{n:03d}") for n in range(plan.clients - steady)]
        self.ready = 0.0
        #: Each server's ``GET /clients`` once settled.
        self.final_lists: list[set[str] | None] = []
        self.reloads: list[Reload] = []
        #: When a server or Redis was away: killed or frozen, until back.
        self.outages: list[tuple[float, float]] = []
        #: When each client's streams closed or were lost.
        self.ends: dict[str, list[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._log = (workdir / "chaos.log").open("w")

    def _flags(self, index: int) -> list[str]:
        return [
            "--redis-url", self.redis.url,
            "--server-id", node(index),
            "--heartbeat-interval", str(INTERVAL),
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

    # --- the run ---------------------------------------------------------

    async def run(self) -> Report:
        print(
            f"chaos seed {self.plan.seed}: {self.plan.clients} clients "
            f"({self.plan.steady} steady on {node(STABLE)}), {SERVERS} observers, "
            f"{self.plan.duration:.0f} s of chaos; logs in {self.workdir}",
            flush=True,
        )
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self._session = aiohttp.ClientSession(connector=connector)
        try:
            await asyncio.to_thread(self.redis.start)
            for server in self.servers:
                server.start()
            for server in self.servers:
                await server.wait_healthy(timeout=30)
            await self._begin()
            loop = asyncio.get_running_loop()
            until = loop.time() + self.plan.duration
            self.note("harness", "chaos starts")
            await asyncio.gather(self._drive(until), self._disrupt(until))
            self.note("harness", "chaos stops; settling")
            report = Report(self.plan)
            await self._settle(report)
            self._check(report)
            return report
        finally:
            await self._teardown()

    async def _begin(self) -> None:
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
        for user in self.users:
            if self.rng.random() < 0.5:
                self.spawn(self._connect(user, self.rng.randrange(SERVERS)))
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

    # --- clients -----------------------------------------------------------

    def _stream_of(self, user: User, server: int) -> Stream:
        return Stream(self, user.client, server, on_end=lambda s: self._lost(user, s))

    def _lost(self, user: User, stream: Stream) -> None:
        if self.closing:
            return
        self.counts["reconnect"] += 1
        self.note("action", f"{user.client}: its stream on {node(stream.server)} ended")
        user.pending += 1
        self.spawn(self._reconnect(user, stream, random.Random(self.rng.random())))

    async def _reconnect(self, user: User, dead: Stream, rng: random.Random) -> None:
        """As EventSource does: after a moment, again, with Last-Event-ID."""
        try:
            async with user.lock:
                if dead not in user.streams:
                    return  # the driver closed it meanwhile
                user.streams.remove(dead)
                await asyncio.sleep(rng.uniform(0.1, 0.5))
                await self._open_until_done(user, rng, dead.last_id, None)
        finally:
            user.pending -= 1

    async def _open_until_done(
        self, user: User, rng: random.Random, resume: str | None, server: int | None
    ) -> tuple[int, float] | None:
        """Open a stream, retrying on any server; where and when it opened."""
        while not self.closing:
            chosen = server if server is not None else rng.choice(self.up())
            stream = self._stream_of(user, chosen)
            if await stream.connect(resume):
                user.streams.append(stream)
                self.note("action", f"{user.client}: stream open on {node(chosen)}")
                return chosen, time.time()
            server = None
            await asyncio.sleep(rng.uniform(0.2, 0.6))
        return None

    async def _connect(self, user: User, server: int) -> None:
        async with user.lock:
            stream = self._stream_of(user, server)
            if await stream.connect():
                user.streams.append(stream)
                self.note("action", f"{user.client}: connect on {node(server)}")
            else:
                self.note("action", f"{user.client}: connect on {node(server)} refused")

    async def _leave(self, user: User) -> None:
        async with user.lock:
            for stream in user.streams:
                stream.close()
                self.note("action", f"{user.client}: close on {node(stream.server)} for good")
            user.streams.clear()

    async def _tab(self, user: User, server: int, hold: float, which: float) -> None:
        async with user.lock:
            second = self._stream_of(user, server)
            if await second.connect():
                user.streams.append(second)
                self.note("action", f"{user.client}: second tab on {node(server)}")
            await asyncio.sleep(hold)
            if len(user.streams) > 1:
                closed = user.streams.pop(int(which * len(user.streams)))
                closed.close()
                self.note("action", f"{user.client}: tab on {node(closed.server)} closed")

    async def _reload(self, user: User, pause: float, rng: random.Random) -> None:
        async with user.lock:
            old = user.streams.pop()
            closed = time.time()
            old.close()
            self.note("action", f"{user.client}: reload on {node(old.server)}")
            await asyncio.sleep(pause)
            # A reloaded page starts afresh: no Last-Event-ID.
            opened = await self._open_until_done(user, rng, None, old.server)
            if opened is not None and opened[0] == old.server:
                self.reloads.append(Reload(user.client, old.server, closed, opened[1]))

    async def _drive(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        rng = self.rng
        kinds = ["connect", "leave", "tab", "reload"]
        while loop.time() < until:
            await asyncio.sleep(rng.uniform(0.03, 0.15))
            kind = rng.choices(kinds, weights=[3, 2, 2, 3])[0]
            idle = [u for u in self.users if u.idle()]
            up = self.up()
            if kind == "connect":
                candidates = [u for u in idle if not u.streams]
            elif kind == "reload":
                candidates = [
                    u
                    for u in idle
                    if len(u.streams) == 1 and u.streams[0].open and u.streams[0].server in up
                ]
            else:
                candidates = [u for u in idle if len(u.streams) == 1 and u.streams[0].open]
            if not candidates:
                continue
            user = rng.choice(candidates)
            self.counts[kind] += 1
            if kind == "connect":
                self.spawn(self._connect(user, rng.choice(up)))
            elif kind == "leave":
                self.spawn(self._leave(user))
            elif kind == "tab":
                others = [n for n in up if n != user.streams[0].server] or up
                hold = rng.uniform(0.3, 1.5)
                self.spawn(self._tab(user, rng.choice(others), hold, rng.random()))
            else:
                pause = rng.uniform(0.15, 0.35)
                self.spawn(self._reload(user, pause, random.Random(rng.random())))

    # --- faults ------------------------------------------------------------

    async def _disrupt(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.rng.random())
        # Each kind at least once, in a random order; then at random.
        first = ["kill", "freeze", "redis", "trim"]
        rng.shuffle(first)
        while True:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            if loop.time() >= until and not first:  # every kind at least once
                return
            kinds = ["kill", "freeze", "redis", "trim"]
            kind = first.pop(0) if first else rng.choices(kinds, weights=[2, 3, 2, 1])[0]
            self.counts[kind] += 1
            victim = rng.choice([n for n in range(SERVERS) if n != STABLE])
            # Sometimes a trim while a server is away: its readers and the
            # streams resuming on it find their position gone.
            trim_inside = rng.random() < 0.4
            if kind == "kill":
                await self._kill(victim, rng.uniform(0.2, 1.0), trim_inside)
            elif kind == "freeze":
                await self._freeze(victim, trim_inside)
            elif kind == "redis":
                await self._kill_redis(rng.uniform(0.5, 3.0))
            else:
                await self._trim()

    async def _kill(self, index: int, down: float, trim_inside: bool) -> None:
        server = self.servers[index]
        self.state[index] = "down"
        server.kill()
        began = time.time()
        self.note("fault", f"SIGKILL {node(index)}")
        await asyncio.sleep(down)
        if trim_inside:
            await self._trim()
        server.start()
        await server.wait_healthy(timeout=30)
        self.state[index] = "up"
        self.outages.append((began, time.time()))
        self.note("fault", f"{node(index)} restarted and healthy")

    async def _freeze(self, index: int, trim_inside: bool) -> None:
        process = self.servers[index].process
        assert process is not None
        self.state[index] = "stopped"
        process.send_signal(signal.SIGSTOP)
        began = time.time()
        self.note("fault", f"SIGSTOP {node(index)}")
        try:
            await asyncio.sleep(FREEZE / 2)
            if trim_inside:
                await self._trim()
            await asyncio.sleep(FREEZE / 2)
        finally:
            process.send_signal(signal.SIGCONT)
        self.state[index] = "up"
        self.outages.append((began, time.time()))
        self.note("fault", f"SIGCONT {node(index)}")

    async def _kill_redis(self, down: float) -> None:
        await asyncio.to_thread(self.redis.stop)  # SIGKILL
        began = time.time()
        self.note("fault", f"SIGKILL redis for {down:.1f} s")
        await asyncio.sleep(down)
        await asyncio.to_thread(self.redis.start)  # same port, same AOF
        self.outages.append((began, time.time()))
        self.note("fault", "redis restarted from its AOF")

    async def _trim(self) -> None:
        redis: Any = aioredis.from_url(self.redis.url, decode_responses=True)
        try:
            taken = await redis.eval(TRIM, 1, STREAM)
        finally:
            await redis.aclose()
        for entry_id, flat in taken:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            self.tape.trimmed[entry_id] = (fields["client"], fields["status"], fields["server"])
        self.note("fault", f"XTRIM {STREAM} MAXLEN 0 ({len(taken)} entries)")

    # --- the end -----------------------------------------------------------

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

    async def _settle(self, report: Report) -> None:
        started = time.time()
        try:
            await poll(self._converged, timeout=SETTLE, interval=0.1, what="convergence")
            self.note("harness", f"converged {time.time() - started:.1f} s after the chaos")
        except AssertionError:
            self.note("harness", f"not converged {SETTLE:.0f} s after the chaos")
        self.final_lists = [await self._listed(server) for server in self.servers]
        # The tape has read everything there is.
        redis: Any = aioredis.from_url(self.redis.url, decode_responses=True)
        try:
            last = await redis.xrevrange(STREAM, count=1)
            info = await redis.xinfo_stream(STREAM)
        finally:
            await redis.aclose()
        if last:
            end = last[0][0]
            await poll(
                lambda: truthy(position(self.tape.position) >= position(end)),
                what="the tape at the stream's end",
            )
        added = info.get("entries-added", info.get("entries_added"))
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
            report.fail(HARNESS, "keep-alives stopped on a steady stream")
        record = self.tape.record()
        report.lines += [
            f"actions: {dict(sorted(self.counts.items()))}",
            f"presence stream: {len(self.tape.entries)} entries read, "
            f"{len(self.tape.trimmed)} taken by trims, {len(record)} in all; "
            f"Redis counted {added} added; gaps after {self.tape.gaps() or 'none'}",
            "observers: "
            + ", ".join(
                f"{w.client} {w.connections} connection(s), {resets(w)} reset snapshot(s)"
                for w in self.observers
            ),
        ]
        if added is not None and added != len(record) and not self.tape.gaps():
            report.fail(
                HARNESS, f"Redis added {added} presence entries, the record has {len(record)}"
            )

    def _check(self, report: Report) -> None:
        record = self.tape.record()
        ordered = sorted(record, key=position)
        steady = {w.client for w in self.steady}
        for watcher in self.steady:
            if watcher.lost or watcher.connections != 1:
                report.fail(HARNESS, f"{watcher.client}: its stream did not stay open")
        for watcher in self.observers:
            if not watcher.connected:
                report.fail(HARNESS, f"{watcher.client}: not connected at the end")

        # 1. Alternation in the stream, and in what each observer received.
        gaps = sorted(self.tape.gaps(), key=position)
        last: dict[str, str] = {}
        after_gap = False
        for entry_id in ordered:
            while gaps and position(gaps[0]) < position(entry_id):
                gaps.pop(0)
                last.clear()
                after_gap = True
            client, status, _server = record[entry_id]
            before = last.get(client)
            if (before is None and status != ONLINE and not after_gap) or before == status:
                report.fail(
                    ALTERNATE,
                    f"stream: {client} {status} at {self._at(entry_id)} after "
                    f"{before or 'nothing'}",
                )
            last[client] = status
        for watcher in [*self.observers, *self.steady]:
            for problem in self._order(watcher):
                report.fail(ALTERNATE, f"{watcher.client} received {problem}")

        # 2. The final state.
        truth = self.expected()
        derived = {c for c, s in last.items() if s == ONLINE}
        if derived != truth:
            report.fail(FINAL, f"the stream adds up to {self._diff(derived, truth)}")
        for watcher in [*self.observers, *self.steady]:
            if watcher.connected and watcher.view() != truth - {watcher.client}:
                wrong = self._diff(watcher.view(), truth - {watcher.client})
                report.fail(FINAL, f"{watcher.client} sees {wrong}")
        for index, listed in enumerate(self.final_lists):
            if listed != truth:
                wrong = "no answer" if listed is None else self._diff(listed, truth)
                report.fail(FINAL, f"GET /clients on {node(index)}: {wrong}")

        # 3. Steady clients never flap. OFFLINEs of the same millisecond (one
        # script call) are reported together.
        flaps: dict[int, list[str]] = {}
        for entry_id in ordered:
            client, status, _server = record[entry_id]
            if client in steady and status == OFFLINE:
                flaps.setdefault(position(entry_id)[0], []).append(entry_id)
        watchers = len(self.observers) + len(self.steady) - 1
        for ms, ids in flaps.items():
            clients = sorted(record[i][0] for i in ids)
            saw = min(len(self._saw_offline(record[i][0], i)) for i in ids)
            back = [self._back(record[i][0], i, record) for i in ids]
            report.fail(
                STEADY,
                f"{len(ids)} steady client(s) OFFLINE in the stream at "
                f"+{ms / 1000 - self.t0:.3f} (ids {ids[0]}..{ids[-1]}): {', '.join(clients)}; "
                f"seen by at least {saw} of {watchers} watchers; "
                f"back ONLINE after {', '.join(sorted(set(back)))}; "
                f"server(s) {sorted({record[i][2] for i in ids})}; "
                f"around it: {self._context(ms / 1000)}; "
                f"first one's entries: {self._history(clients[0], record)}",
            )
        for watcher in [*self.observers, *self.steady]:
            online: set[str] = set()
            for item in watcher.received:
                event = item.event
                if event.event == "snapshot":
                    online = {c["client"] for c in event.data["clients"]}
                    if item.at >= self.ready:
                        for gone in sorted(steady - online - {watcher.client}):
                            kind = "reset snapshot" if event.data.get("reset") else "snapshot"
                            report.fail(
                                STEADY,
                                f"{watcher.client} got a {kind} (id {event.id}, connection "
                                f"{item.connection}) without {gone} at +{item.at - self.t0:.3f}",
                            )
                elif (
                    event.data["client"] in steady
                    and event.data["status"] == OFFLINE
                    and event.id not in record
                ):
                    report.fail(
                        STEADY,
                        f"{watcher.client} saw {event.data['client']} go OFFLINE "
                        f"(id {event.id}, not in the stream) at +{item.at - self.t0:.3f}",
                    )

        # 3b. A clean reload: reopened on the same server within the grace, and
        # no server or Redis away from 1 s before the close to 3 s after the
        # window (a trim changes no state). No OFFLINE may come in the window:
        # 2.5 s after the reopening, or until the client's next close.
        clean: list[tuple[Reload, float]] = []
        for reload in self.reloads:
            later = [at for at in self.ends.get(reload.client, []) if at > reload.reopened]
            until = min([reload.reopened + 2.5, *later])
            if reload.reopened - reload.closed < GRACE and not any(
                start - 1 <= until and reload.closed <= end + 3 for start, end in self.outages
            ):
                clean.append((reload, until))
        for reload, until in clean:
            for entry_id in ordered:
                client, status, _server = record[entry_id]
                at = position(entry_id)[0] / 1000
                if client == reload.client and status == OFFLINE and reload.closed < at < until:
                    report.fail(
                        RELOAD,
                        f"{client} reloaded on {node(reload.server)}: closed at "
                        f"+{reload.closed - self.t0:.3f}, open again at "
                        f"+{reload.reopened - self.t0:.3f}, yet OFFLINE at {self._at(entry_id)}; "
                        f"its entries: {self._history(client, record)}",
                    )
        report.lines.append(f"reloads: {len(self.reloads)}, {len(clean)} clean (checked)")

    def _back(self, client: str, entry_id: str, record: dict[str, Entry]) -> str:
        """How long after ``entry_id`` the client's next ONLINE came."""
        after = [i for i in record if record[i][0] == client and position(i) > position(entry_id)]
        if not after:
            return "never"
        first = min(after, key=position)
        return f"{(position(first)[0] - position(entry_id)[0]) / 1000:.1f} s"

    def _saw_offline(self, client: str, entry_id: str) -> list[str]:
        return [
            w.client
            for w in [*self.observers, *self.steady]
            if any(r.event.event == "presence" and r.event.id == entry_id for r in w.received)
        ]

    def _order(self, watcher: Watcher) -> Iterable[str]:
        online: set[str] = set()
        newest = (0, 0)
        for item in watcher.received:
            event = item.event
            if event.event == "snapshot":
                online = {c["client"] for c in event.data["clients"]}
                continue
            assert event.id is not None
            client, status = event.data["client"], event.data["status"]
            where = f"at {self._at(event.id)} (connection {item.connection})"
            if position(event.id) <= newest:
                yield f"event {event.id} out of order or twice {where}"
            newest = max(newest, position(event.id))
            if status == ONLINE and client in online:
                yield f"ONLINE of {client}, online already, {where}"
            if status == OFFLINE and client not in online:
                yield f"OFFLINE of {client}, not online, {where}"
            (online.add if status == ONLINE else online.discard)(client)

    def _at(self, entry_id: str) -> str:
        return f"{entry_id} (+{position(entry_id)[0] / 1000 - self.t0:.3f})"

    def _history(self, client: str, record: dict[str, Entry]) -> str:
        return ", ".join(
            f"{record[i][1]}@+{position(i)[0] / 1000 - self.t0:.3f}({record[i][2] or '-'})"
            for i in sorted(record, key=position)
            if record[i][0] == client
        )

    def _context(self, at: float) -> str:
        """The faults in the 6 s before a moment (and 1 s after)."""
        near = [
            f"+{n.at - self.t0:.3f} {n.text}"
            for n in self.notes
            if n.kind == "fault" and at - 6 <= n.at <= at + 1
        ]
        reloads = sum(
            1
            for n in self.notes
            if n.kind == "action" and "reload" in n.text and at - 2 <= n.at <= at
        )
        faults = "; ".join(near or ["no fault within 6 s"])
        return f"{faults}; {reloads} reload(s) in the 2 s before"

    @staticmethod
    def _diff(seen: set[str], truth: set[str]) -> str:
        return f"{len(seen)} online: extra {sorted(seen - truth)}, missing {sorted(truth - seen)}"

    async def _teardown(self) -> None:
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
        if self._session is not None:
            await self._session.close()
        self._log.close()


def resets(watcher: Watcher) -> int:
    return sum(
        1 for r in watcher.received if r.event.event == "snapshot" and r.event.data.get("reset")
    )


async def truthy(value: object) -> bool:
    return bool(value)


async def run_chaos(plan: Plan, workdir: Path) -> Report:
    """Run the soak; the report lists what broke, by invariant."""
    chaos = Chaos(plan, workdir)
    report = await chaos.run()
    print(report.text(), flush=True)
    return report


@pytest.mark.timeout(150)
async def test_chaos_soak(tmp_path: Path) -> None:
    plan = Plan(seed=Plan.seed_from_env(), duration=12, clients=60, steady=20)
    report = await run_chaos(plan, tmp_path)
    assert not report.problems, report.text()
