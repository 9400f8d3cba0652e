"""The driver: the random choices of a run and their scheduling, all drawn
from the plan's seed. Users churn (connect, leave for good, a second tab
for a while, a reload), and their streams reconnect as EventSource does,
with ``Last-Event-ID``. Meanwhile the faults: a server killed (SIGKILL) and
restarted, a server frozen (SIGSTOP) for 3 s, Redis killed and restarted
from its AOF, and the ``presence`` stream trimmed to nothing; each kind at
least once, and sometimes a trim while a server is away. node-1 is never
a victim.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

from redis.crc import key_slot

from presence.shards import shard_tags

from .harness import SERVERS, STABLE, Harness, Reload
from .streams import Stream, User, node

FREEZE = 3.0
# Takes the whole stream and trims it in one step, so no entry escapes the record.
TRIM = """
local taken = redis.call('XRANGE', KEYS[1], '-', '+')
redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
return taken
"""


class Driver:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.rng = random.Random(harness.plan.seed)

    async def run(self) -> None:
        """About half the users connected as the observers start; then the chaos,
        for the plan's duration."""
        harness = self.harness
        await harness.begin()
        for user in harness.users:
            if self.rng.random() < 0.5:
                harness.spawn(self._connect(user, self.rng.randrange(SERVERS)))
        await harness.observed()
        loop = asyncio.get_running_loop()
        until = loop.time() + harness.plan.duration
        harness.note("harness", "chaos starts")
        await asyncio.gather(self._drive(until), self._disrupt(until))
        harness.note("harness", "chaos stops; settling")

    # --- clients -----------------------------------------------------------

    def _stream_of(self, user: User, server: int) -> Stream:
        return Stream(self.harness, user.client, server, on_end=lambda s: self._lost(user, s))

    def _lost(self, user: User, stream: Stream) -> None:
        harness = self.harness
        if harness.closing:
            return
        harness.counts["reconnect"] += 1
        harness.note("action", f"{user.client}: its stream on {node(stream.server)} ended")
        user.pending += 1
        harness.spawn(self._reconnect(user, stream, random.Random(self.rng.random())))

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
        while not self.harness.closing:
            chosen = server if server is not None else rng.choice(self.harness.up())
            stream = self._stream_of(user, chosen)
            if await stream.connect(resume):
                user.streams.append(stream)
                self.harness.note("action", f"{user.client}: stream open on {node(chosen)}")
                return chosen, time.time()
            server = None
            await asyncio.sleep(rng.uniform(0.2, 0.6))
        return None

    async def _connect(self, user: User, server: int) -> None:
        async with user.lock:
            stream = self._stream_of(user, server)
            if await stream.connect():
                user.streams.append(stream)
                self.harness.note("action", f"{user.client}: connect on {node(server)}")
            else:
                self.harness.note("action", f"{user.client}: connect on {node(server)} refused")

    async def _leave(self, user: User) -> None:
        async with user.lock:
            for stream in user.streams:
                stream.close()
                self.harness.note(
                    "action", f"{user.client}: close on {node(stream.server)} for good"
                )
            user.streams.clear()

    async def _tab(self, user: User, server: int, hold: float, which: float) -> None:
        async with user.lock:
            second = self._stream_of(user, server)
            if await second.connect():
                user.streams.append(second)
                self.harness.note("action", f"{user.client}: second tab on {node(server)}")
            await asyncio.sleep(hold)
            if len(user.streams) > 1:
                closed = user.streams.pop(int(which * len(user.streams)))
                closed.close()
                self.harness.note("action", f"{user.client}: tab on {node(closed.server)} closed")

    async def _reload(self, user: User, pause: float, rng: random.Random) -> None:
        async with user.lock:
            old = user.streams.pop()
            closed = time.time()
            old.close()
            self.harness.note("action", f"{user.client}: reload on {node(old.server)}")
            await asyncio.sleep(pause)
            # A reloaded page starts afresh: no Last-Event-ID.
            opened = await self._open_until_done(user, rng, None, old.server)
            if opened is not None and opened[0] == old.server:
                self.harness.reloads.append(Reload(user.client, old.server, closed, opened[1]))

    async def _drive(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        rng = self.rng
        harness = self.harness
        kinds = ["connect", "leave", "tab", "reload"]
        while loop.time() < until:
            await asyncio.sleep(rng.uniform(0.03, 0.15))
            kind = rng.choices(kinds, weights=[3, 2, 2, 3])[0]
            idle = [u for u in harness.users if u.idle()]
            up = harness.up()
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
            harness.counts[kind] += 1
            if kind == "connect":
                harness.spawn(self._connect(user, rng.choice(up)))
            elif kind == "leave":
                harness.spawn(self._leave(user))
            elif kind == "tab":
                others = [n for n in up if n != user.streams[0].server] or up
                hold = rng.uniform(0.3, 1.5)
                harness.spawn(self._tab(user, rng.choice(others), hold, rng.random()))
            else:
                pause = rng.uniform(0.15, 0.35)
                harness.spawn(self._reload(user, pause, random.Random(rng.random())))

    # --- faults ------------------------------------------------------------

    async def _disrupt(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.rng.random())
        # Each kind at least once, in a random order; then at random. On a
        # cluster, "redis" kills a primary, and a shard fails over too.
        kinds = ["kill", "freeze", "redis", "trim"]
        weights = [2, 3, 2, 1]
        if self.harness.cluster is not None:
            kinds, weights = [*kinds, "failover"], [*weights, 1]
        first = list(kinds)
        rng.shuffle(first)
        while True:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            if loop.time() >= until and not first:  # every kind at least once
                return
            kind = first.pop(0) if first else rng.choices(kinds, weights=weights)[0]
            self.harness.counts[kind] += 1
            victim = rng.choice([n for n in range(SERVERS) if n != STABLE])
            # Sometimes a trim while a server is away: its readers and the
            # streams resuming on it find their position gone.
            trim_inside = rng.random() < 0.4
            if kind == "kill":
                await self._kill(victim, rng.uniform(0.2, 1.0), trim_inside)
            elif kind == "freeze":
                await self._freeze(victim, trim_inside)
            elif kind == "redis":
                if self.harness.cluster is None:
                    await self._kill_redis(rng.uniform(0.5, 3.0))
                else:
                    await self._kill_primary(rng.uniform(0.5, 2.0), rng)
            elif kind == "failover":
                await self._fail_over(rng)
            else:
                await self._trim(rng)

    async def _kill(self, index: int, down: float, trim_inside: bool) -> None:
        harness = self.harness
        server = harness.servers[index]
        harness.state[index] = "down"
        server.kill()
        began = time.time()
        harness.note("fault", f"SIGKILL {node(index)}")
        await asyncio.sleep(down)
        if trim_inside:
            await self._trim(random.Random(self.rng.random()))
        server.start()
        await server.wait_healthy(timeout=30)
        harness.state[index] = "up"
        harness.outages.append((began, time.time()))
        harness.note("fault", f"{node(index)} restarted and healthy")

    async def _freeze(self, index: int, trim_inside: bool) -> None:
        harness = self.harness
        process = harness.servers[index].process
        assert process is not None
        harness.state[index] = "stopped"
        process.send_signal(signal.SIGSTOP)
        began = time.time()
        harness.note("fault", f"SIGSTOP {node(index)}")
        try:
            await asyncio.sleep(FREEZE / 2)
            if trim_inside:
                await self._trim(random.Random(self.rng.random()))
            await asyncio.sleep(FREEZE / 2)
        finally:
            process.send_signal(signal.SIGCONT)
        harness.state[index] = "up"
        harness.outages.append((began, time.time()))
        harness.note("fault", f"SIGCONT {node(index)}")

    async def _kill_redis(self, down: float) -> None:
        harness = self.harness
        await asyncio.to_thread(harness.redis.stop)  # SIGKILL
        began = time.time()
        harness.note("fault", f"SIGKILL redis for {down:.1f} s")
        await asyncio.sleep(down)
        await asyncio.to_thread(harness.redis.start)  # same port, same AOF
        harness.outages.append((began, time.time()))
        harness.note("fault", "redis restarted from its AOF")

    async def _kill_primary(self, down: float, rng: random.Random) -> None:
        """SIGKILL the primary of a shard; its replica takes over what it had
        replicated; after ``down`` the node rejoins as a replica."""
        harness = self.harness
        assert harness.cluster is not None
        tag = rng.choice(shard_tags(harness.layout.shards))
        began = time.time()
        harness.note("fault", f"SIGKILL the primary of shard {tag}")
        victim = await asyncio.to_thread(harness.cluster.kill_primary, key_slot(tag.encode()))
        harness.note("fault", f"its replica promoted in {time.time() - began:.1f} s")
        await asyncio.sleep(down)
        await asyncio.to_thread(harness.cluster.rejoin, victim)
        harness.outages.append((began, time.time()))
        harness.note("fault", "the killed primary rejoined as a replica")

    async def _fail_over(self, rng: random.Random) -> None:
        harness = self.harness
        assert harness.cluster is not None
        tag = rng.choice(shard_tags(harness.layout.shards))
        began = time.time()
        await asyncio.to_thread(harness.cluster.fail_over, key_slot(tag.encode()))
        harness.outages.append((began, time.time()))
        harness.note("fault", f"CLUSTER FAILOVER of shard {tag}")

    async def _trim(self, rng: random.Random) -> None:
        """Trim a presence stream (on a cluster, a shard's) to nothing."""
        harness = self.harness
        layout = harness.layout
        shard = rng.randrange(len(layout.streams))
        stream = layout.streams[shard]
        redis = harness.client()
        try:
            taken = await redis.eval(TRIM, 1, stream)
        finally:
            await redis.aclose()
        for entry_id, flat in taken:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            harness.tape.trimmed[layout.key(shard, entry_id)] = (
                fields["client"],
                fields["status"],
                fields["server"],
            )
        harness.note("fault", f"XTRIM {stream} MAXLEN 0 ({len(taken)} entries)")
