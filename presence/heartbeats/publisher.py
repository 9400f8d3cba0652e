"""Heartbeats and leaves out: one pipelined XADD batch per tick for this
process's memberships, and a leave for each one whose last connection closed.

A client in rooms is heartbeated once per room (such a heartbeat counts for
its global presence too); a client in none, once.

A client held for the first time is heartbeated at once, in a batch of its own,
so it comes online without waiting for the next tick. Each server's ticks run
at a random phase, so servers started together spread their batches.

A leave waits for the leave grace, so a reload changes nothing; then the LEAVE
script publishes OFFLINE unless another server still holds the client. After
Redis was unreachable, leaves wait one more interval: see
``HeldClients.postpone_leaves``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random

from redis.asyncio.client import Pipeline

from ..settings import Settings
from ..shards import Router
from ..supervise import UNREACHABLE, Outage, Worker
from ..transitions.scripts import LEFT, Transitions
from .held import HeldClients, Member

log = logging.getLogger(__name__)

#: Heartbeats per script call: a call holds Redis for its whole duration.
PUBLISH_BATCH = 1000
#: Memberships whose heartbeats are prepared per event loop iteration: a tick
#: of 100,000 prepared at once held the loop, and every stream on it, for half
#: a second.
PREPARE_BATCH = 5000
#: First delay before a tick that failed to reach Redis runs again; it
#: doubles up to a quarter of the interval.
RETRY = 0.05
#: Intervals a tick waits for a shard's calls before it goes on without them.
SHARD_WAIT = 0.1


class HeartbeatPublisher:
    def __init__(
        self,
        settings: Settings,
        held: HeldClients,
        transitions: Transitions,
        outage: Outage,
        shards: Router[Transitions] | None = None,
    ) -> None:
        self._transitions = transitions
        #: Each shard's scripts (one, on a standalone Redis).
        self._shards = shards or Router([transitions])
        self._held = held
        self._server = settings.server_id
        self._maxlen = settings.heartbeat_maxlen
        self._interval = settings.heartbeat_interval
        self.published = 0
        #: Leaves announced, and how many of them published OFFLINE.
        self.leaves = 0
        self.left = 0
        self._ran = False
        #: Seconds the last tick ran late, and the most since start.
        self.tick_lag = 0.0
        self.max_tick_lag = 0.0
        self._outage = outage
        self._outages = outage.count
        #: Memberships whose heartbeats could not reach Redis, tried again at
        #: ``_retry_at`` (see ``run``), ``_retry`` seconds after the last try.
        self._unsent: list[Member] = []
        #: The memberships of the calls the last ``publish`` could not send.
        self.failed: list[Member] = []
        #: Memberships whose leave outlasted its tick, until it is back.
        self._leaving: dict[Member, asyncio.Future[None]] = {}
        #: Shards whose calls outlasted their tick, and the memberships that
        #: came up for them since: sent the moment the calls land. One call
        #: at a time per shard: a paused primary's would otherwise pile up
        #: and take every turn the cluster client has.
        self._in_flight: set[int] = set()
        self._deferred: dict[int, dict[Member, None]] = {}
        #: Leaves of those shards, sent once the calls land: sent before, a
        #: leave could reach Redis ahead of a heartbeat it should follow.
        self._leaves_after: dict[int, list[Member]] = {}
        self._worker: Worker | None = None
        self._retry_at = 0.0
        self._retry = RETRY

    async def run(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        self._worker = worker
        # A random phase: servers started together do not tick together. After
        # a failure, at once: Redis may have lost every key while it was away.
        phase = 0.0 if self._ran else random.uniform(0, self._interval)
        if self._ran:
            # Restarted after a failure: Redis may just be back.
            self._held.postpone_leaves(self._interval)
        self._ran = True
        next_tick = loop.time() + phase
        while True:
            if self._outage.active or self._outage.count != self._outages:
                # Redis is away, or just came back (this process's workers say
                # so): leaves wait until it has been back for an interval, see
                # HeldClients.postpone_leaves. Should Redis never settle, the
                # clients in question are no longer heartbeated: the TTL decides.
                self._outages = self._outage.count
                self._held.postpone_leaves(self._interval)
            now = loop.time()
            if now >= next_tick:
                # How late the tick runs: what liveness loses to everything else.
                self.tick_lag = now - next_tick
                self.max_tick_lag = max(self.max_tick_lag, self.tick_lag)
                next_tick = now + self._interval
                # In the order they were held, a client's memberships side by
                # side: Redis applies a client's heartbeats one after another
                # faster than scattered among everyone's (its keys are hot).
                # A fresh one released since is heartbeated too (its first
                # heartbeat); one in its leave grace is then listed twice,
                # which costs a refresh.
                batch = self._held.heartbeated()
                batch += [m for m in self._held.take_fresh() if m not in self._held]
                self._unsent = []  # all in the tick
            else:
                batch = self._held.take_fresh()
                if self._unsent and now >= self._retry_at:
                    batch += [m for m in self._unsent if self._held.beats(m)]
                    self._unsent = []
            failure = await self._publish(batch) if batch else None
            if failure is not None:
                # Tried again here, soon, rather than after the supervisor's
                # growing backoff, and only what failed: on a cluster with one
                # primary away, the other shards are refreshed on time, and
                # leaves go on.
                worker.failed(failure)
                self._retry_at = loop.time() + self._retry
                self._retry = min(self._retry * 2, self._interval / 4)
            elif batch:
                self._retry = RETRY
            if leaves := self._after_in_flight(self._held.take_leaves()):
                # Waited for as a shard's heartbeats are: a paused primary's
                # leaves finish in the background.
                leaving = asyncio.ensure_future(self.leave(leaves))
                await asyncio.wait({leaving}, timeout=SHARD_WAIT * self._interval)
                if not leaving.done():
                    leaving.add_done_callback(functools.partial(self._left, leaves))
                    # Their heartbeats wait for them (a reconnect's): one sent
                    # now could reach Redis before the leave, and not count.
                    for member in leaves:
                        self._leaving[member] = leaving
                elif (error := leaving.exception()) is not None:
                    self._held.retry_leaves(leaves)
                    self._held.postpone_leaves(self._interval)
                    raise error
            if not self._unsent:
                worker.ok()
            wake_at = min(next_tick, self._retry_at) if self._unsent else next_tick
            if (leave_at := self._held.next_leave()) is not None:
                # next_leave is on the monotonic clock, which the loop's clock is too.
                wake_at = min(wake_at, leave_at)
            await self._pause(wake_at)

    async def _pause(self, until: float) -> None:
        """Until the loop's clock reads ``until``, or a client is held."""
        try:
            async with asyncio.timeout(max(0.0, until - asyncio.get_running_loop().time())):
                await self._held.wake.wait()
        except TimeoutError:
            pass

    async def _publish(self, members: list[Member]) -> BaseException | None:
        """``publish``, keeping what Redis could not be reached for in
        ``_unsent``; the failure, if so."""
        try:
            await self.publish(members)
        except UNREACHABLE as exc:
            self._keep_unsent(self.failed or members)
            return exc
        return None

    async def publish(self, members: list[Member]) -> None:
        """XADD one heartbeat per membership, in script calls of ``PUBLISH_BATCH``
        sent in one round trip per shard; prepared ``PREPARE_BATCH`` at a time,
        the event loop running in between. Data taken for heartbeats that were
        not sent goes with the next ones.

        A shard whose calls are still waiting after ``SHARD_WAIT`` x interval
        (its primary paused by a failover, or busy) holds back neither this
        tick nor the other shards: its calls finish in the background (a
        failure is tried again as any other), and what comes up for the shard
        meanwhile goes the moment they land. A membership whose leave is
        still on its way waits for it. Raises the first failure of the shards
        that answered.
        """
        take = self._held.take_data
        shards = self._shards
        self.failed = []
        for member, leaving in list(self._leaving.items()):
            if leaving.done():
                del self._leaving[member]
        # Per shard: its lines, the membership of each, and the data in them
        # with its line's index.
        lines: list[list[str]] = [[] for _ in shards.items]
        of_line: list[list[Member]] = [[] for _ in shards.items]
        sent_data: list[list[tuple[int, tuple[str, str, str]]]] = [[] for _ in shards.items]
        await asyncio.sleep(0)  # after the tick's memberships were listed
        # On one Redis a membership's heartbeat counts for its client too.
        # Sharded, the room's shard is seldom the client's: its own goes.
        in_rooms = set() if shards.sharded else {client for client, room in members if room}
        for start in range(0, len(members), PREPARE_BATCH):
            await asyncio.sleep(0)
            for client, room in members[start : start + PREPARE_BATCH]:
                shard = shards.of(room or client)
                if (not room and client in in_rooms) or (client, room) in self._leaving:
                    continue
                if shard in self._in_flight:
                    self._deferred.setdefault(shard, {})[(client, room)] = None
                    continue
                of_line[shard].append((client, room))
                if not room:
                    lines[shard].append(client)
                elif data := take((client, room)):
                    sent_data[shard].append((len(lines[shard]), (client, room, data)))
                    # Initial data: it never replaces data set since.
                    lines[shard].append(f"{client} {room} ?{data}")
                else:
                    lines[shard].append(f"{client} {room}")
        sends = {
            shard: asyncio.ensure_future(self._send(shard, found, of_line[shard], sent_data[shard]))
            for shard, found in enumerate(lines)
            if found
        }
        if not sends:
            return
        await asyncio.wait(sends.values(), timeout=SHARD_WAIT * self._interval)
        failure: BaseException | None = None
        for shard, send in sends.items():
            if not send.done():
                self._in_flight.add(shard)
                send.add_done_callback(functools.partial(self._landed, shard))
                continue
            failed, error = send.result()
            self.failed += failed
            failure = failure or error
        if failure is not None:
            raise failure

    async def _send(
        self,
        shard: int,
        lines: list[str],
        members: list[Member],
        data: list[tuple[int, tuple[str, str, str]]],
    ) -> tuple[list[Member], BaseException | None]:
        """One shard's calls; the memberships of those that failed, and the
        first failure. Their data goes again."""
        calls = range(0, len(lines), PUBLISH_BATCH)
        target = self._shards[shard]

        def fill(pipe: Pipeline) -> None:
            for start in calls:
                batch = "\n".join(lines[start : start + PUBLISH_BATCH])
                target.publish(pipe, self._server, batch, self._maxlen)

        try:
            replies = await self._transitions.execute(fill, partial=True)
        except Exception as exc:
            # Whether Redis took any of it is unknown: the data goes again.
            self._held.keep_data(beat for _, beat in data)
            return members, exc
        lost = {calls[n] for n, reply in enumerate(replies) if isinstance(reply, Exception)}
        if not lost:
            self.published += len(lines)
            return [], None
        # Only the data of the calls Redis failed: what it took may since
        # have been replaced (a PUT), and must not come back.
        self._held.keep_data(beat for index, beat in data if index - index % PUBLISH_BATCH in lost)
        failed = [m for at in sorted(lost) for m in members[at : at + PUBLISH_BATCH]]
        self.published += len(lines) - len(failed)
        return failed, next(r for r in replies if isinstance(r, Exception))

    def _left(self, leaves: list[Member], leaving: asyncio.Future[None]) -> None:
        """Leaves that outlasted their tick came back; failed, they go again.
        The heartbeats that waited for them go at once."""
        for member in leaves:
            if self._leaving.get(member) is leaving:
                del self._leaving[member]
        if back := [m for m in leaves if self._held.beats(m)]:
            self._keep_unsent(back)
            self._retry_at = asyncio.get_running_loop().time()
            self._held.wake.set()
        if leaving.cancelled() or (error := leaving.exception()) is None:
            return
        log.warning("%d leave(s) failed in Redis, retrying: %s", len(leaves), error)
        self._held.retry_leaves(leaves)
        self._held.postpone_leaves(self._interval)

    def _after_in_flight(self, leaves: list[Member]) -> list[Member]:
        """The leaves to send now; those of shards with calls on their way
        wait for them."""
        now = []
        for member in leaves:
            shard = self._shards.of(member[1] or member[0])
            if shard in self._in_flight:
                self._leaves_after.setdefault(shard, []).append(member)
            else:
                now.append(member)
        return now

    def _keep_unsent(self, members: list[Member]) -> None:
        self._unsent = list(dict.fromkeys([*self._unsent, *members]))

    def _landed(
        self, shard: int, send: asyncio.Future[tuple[list[Member], BaseException | None]]
    ) -> None:
        """A shard's calls that outlasted their tick came back: what came up
        for it meanwhile goes now, and what failed after a while."""
        self._in_flight.discard(shard)
        loop = asyncio.get_running_loop()
        if later := self._leaves_after.pop(shard, None):
            self._held.retry_leaves(later)  # now after the heartbeats they follow
        if deferred := [m for m in self._deferred.pop(shard, {}) if self._held.beats(m)]:
            self._keep_unsent(deferred)
            self._retry_at = loop.time()
            self._held.wake.set()
        if send.cancelled():
            return
        failed, error = send.result()
        if error is None:
            return
        if not isinstance(error, UNREACHABLE):
            log.warning("heartbeats failed in Redis: %s: %s", type(error).__name__, error)
        self._keep_unsent(failed)
        if isinstance(error, UNREACHABLE) and self._worker is not None:
            self._worker.failed(error)  # in /healthz until a tick gets through
        if not deferred:
            self._retry_at = loop.time() + self._retry
        self._held.wake.set()

    async def leave(self, members: list[Member]) -> None:
        shards = self._shards

        def fill(pipe: Pipeline) -> None:
            for client, room in members:
                if room:
                    shards[shards.of(room)].leave_room(pipe, room, client, self._server)
                else:
                    shards[shards.of(client)].leave(pipe, client, self._server)

        results = await self._transitions.execute(fill)
        failed = [(m, r) for m, r in zip(members, results, strict=True) if isinstance(r, Exception)]
        if failed:
            # Sent again after a while; meanwhile the TTL runs (see heartbeated()).
            log.warning("%d leave(s) failed in Redis, retrying: %s", len(failed), failed[0][1])
            self._held.retry_leaves(m for m, _ in failed)
            self._held.postpone_leaves(self._interval)
        self.leaves += len(results) - len(failed)
        self.left += sum(1 for m, r in zip(members, results, strict=True) if r == LEFT and not m[1])
