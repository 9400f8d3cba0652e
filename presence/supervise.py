"""Background tasks that never die silently.

Each loop reports progress with ``ok()``. When it raises, the supervisor logs
the failure once (not once per attempt), backs off exponentially up to a cap,
and runs the loop again, which resumes from the state it kept on its object.

Stopping asks first and cancels second: loops blocked in a Redis read check
``stopping`` after each read, because a cancellation that lands inside
redis-py (while it connects) or fakeredis (a blocking read) can be swallowed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
#: What Redis being unreachable raises (an outage, not a failure of its own).
#: On a cluster, so does a cluster that is down (a primary failing over), a
#: slot still moving, and the cluster client's own errors about nodes it
#: cannot reach or slots none serves.
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    OSError,
)


class Outage:
    """Redis reachability across every worker of a process, logged once per change.

    An outage begins when the first worker loses Redis and ends when none is
    failing for that reason any more: one line each, whatever the number of
    workers and attempts.
    """

    def __init__(self) -> None:
        self._failing: set[str] = set()
        self._since = 0.0
        #: Outages that ended.
        self.count = 0

    @property
    def active(self) -> bool:
        """Whether some worker is failing to reach Redis now."""
        return bool(self._failing)

    def lost(self, worker: str, exc: BaseException) -> None:
        if not self._failing:
            self._since = time.monotonic()
            log.warning(
                "Redis unreachable (%s: %s); retrying with backoff", type(exc).__name__, exc
            )
        self._failing.add(worker)

    def reached(self, worker: str) -> None:
        if worker not in self._failing:
            return
        self._failing.discard(worker)
        if not self._failing:
            self.count += 1
            log.info("Redis reachable again after %.1f s", time.monotonic() - self._since)


class Worker:
    """Health of one supervised loop, as ``/healthz`` reports it."""

    def __init__(
        self,
        name: str,
        grace: float = 0.0,
        outage: Outage | None = None,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.name = name
        self._outage = outage
        self._max_backoff = max_backoff
        #: Seconds ``stop()`` lets the loop end by itself before cancelling it.
        self.grace = grace
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._backoff = 0.1
        self.stopping = False
        #: Times the loop recovered after failing (reconnects, for most loops).
        self.recoveries = 0
        self._unreachable = False

    def ok(self) -> None:
        """Called by the loop after each successful round trip."""
        self._backoff = 0.1
        if self.error is not None:
            # The outage's end is the line that matters; this one is detail.
            level = logging.DEBUG if self._unreachable else logging.INFO
            log.log(level, "%s recovered", self.name)
            self.recoveries += 1
            self.error = None
            if self._outage is not None:
                self._outage.reached(self.name)

    def failed(self, exc: BaseException) -> None:
        if self.error is None:
            outage = self._outage if isinstance(exc, UNREACHABLE) else None
            self._unreachable = outage is not None
            if outage is not None:
                outage.lost(self.name, exc)
            level = logging.DEBUG if self._unreachable else logging.WARNING
            log.log(
                level,
                "%s failed: %s: %s; retrying with backoff",
                self.name,
                type(exc).__name__,
                exc,
            )
        self.error = f"{type(exc).__name__}: {exc}"

    @property
    def problem(self) -> str | None:
        """Why this worker is unhealthy, or None."""
        if self.task is None or self.task.done():
            return f"{self.name} is not running"
        return None if self.error is None else f"{self.name}: {self.error}"

    def start(self, loop: Callable[[Worker], Awaitable[None]]) -> None:
        self.task = asyncio.create_task(self._supervise(loop), name=self.name)

    async def stop(self) -> None:
        """Ask the loop to end, wait up to ``grace`` seconds, then cancel it."""
        task = self.task
        if task is None:
            return
        self.stopping = True
        if self.grace > 0:
            await asyncio.wait({task}, timeout=self.grace)
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s ended with %r", self.name, task.exception())

    async def _supervise(self, loop: Callable[[Worker], Awaitable[None]]) -> None:
        while True:
            try:
                await loop(self)
                if self.stopping:
                    return
                raise RuntimeError("loop returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(exc)
                log.debug("%s failure", self.name, exc_info=True)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, self._max_backoff)
