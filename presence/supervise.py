"""Background tasks that never die silently.

Each loop reports progress with ``ok()``. When it raises, the supervisor logs
the failure once (not once per attempt), backs off exponentially up to a cap,
and runs the loop again, which resumes from the state it kept on its object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0


class Worker:
    """Health of one supervised loop, as ``/healthz`` reports it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._backoff = 0.1

    def ok(self) -> None:
        """Called by the loop after each successful round trip."""
        self._backoff = 0.1
        if self.error is not None:
            log.info("%s recovered", self.name)
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
        task = self.task
        if task is None:
            return
        # redis-py can swallow a cancellation that lands while it connects,
        # so cancel again until the task is really done.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s ended with %r", self.name, task.exception())

    async def _supervise(self, loop: Callable[[Worker], Awaitable[None]]) -> None:
        while True:
            try:
                await loop(self)
                raise RuntimeError("loop returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(exc)
                log.debug("%s failure", self.name, exc_info=True)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
