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
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0


class Worker:
    """Health of one supervised loop, as ``/healthz`` reports it."""

    def __init__(self, name: str, grace: float = 0.0) -> None:
        self.name = name
        #: Seconds ``stop()`` lets the loop end by itself before cancelling it.
        self.grace = grace
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._backoff = 0.1
        self.stopping = False
        #: Times the loop recovered after failing (reconnects, for most loops).
        self.recoveries = 0

    def ok(self) -> None:
        """Called by the loop after each successful round trip."""
        self._backoff = 0.1
        if self.error is not None:
            log.info("%s recovered", self.name)
            self.recoveries += 1
            self.error = None

    def failed(self, exc: BaseException) -> None:
        if self.error is None:
            log.warning(
                "%s failed: %s: %s; retrying with backoff", self.name, type(exc).__name__, exc
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
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
