"""The HTTP side of webhooks: POST one batch until the receiver takes it.

A failed attempt (a status other than 2xx, a timeout, a refused connection)
is retried after a backoff that doubles up to ``MAX_BACKOFF``, with jitter so
that servers do not retry in step. A receiver that is down costs only this
task: presence never waits for it, and what is not posted yet stays pending
in Redis. Failures are logged when they begin, then at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Final

import aiohttp

from ..settings import mask_url
from .signing import signed_headers

log = logging.getLogger(__name__)

#: Seconds one attempt may take, connecting and reading the answer included.
TIMEOUT: Final = 10.0
FIRST_BACKOFF: Final = 0.2
MAX_BACKOFF: Final = 30.0
#: Seconds between two log lines about a receiver that keeps failing.
LOG_EVERY: Final = 60.0


def _user_agent() -> str:
    try:
        return f"presence/{version('presence')}"
    except PackageNotFoundError:
        return "presence"


class Sender:
    """POSTs batches to one URL, signed with ``secret`` when there is one."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self._shown = mask_url(url)
        self._secret = secret
        self._session: aiohttp.ClientSession | None = None
        self._user_agent = _user_agent()
        #: Events posted (a 2xx), and events of attempts that failed.
        self.ok = 0
        self.retried = 0
        self._failing_since: float | None = None
        self._logged = 0.0
        self._failures = 0

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, body: bytes, events: int, stopping: Callable[[], bool]) -> bool:
        """POST ``body`` (``events`` transitions) until a 2xx: True then; False
        when ``stopping()`` turned true first (the batch stays pending)."""
        assert self._session is not None, "sender not open"
        backoff = FIRST_BACKOFF
        while True:
            headers = {"Content-Type": "application/json", "User-Agent": self._user_agent}
            if self._secret:
                headers.update(signed_headers(self._secret, body))
            try:
                async with self._session.post(self.url, data=body, headers=headers) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        self.ok += events
                        self._recovered()
                        return True
                    reason = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.retried += events
            self._failed(reason)
            if stopping():
                return False
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, MAX_BACKOFF)
            if stopping():
                return False

    def _failed(self, reason: str) -> None:
        now = time.monotonic()
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = now
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.warning(
                "webhook %s failed (%s); %d failed attempts in %.0f s, retrying with backoff",
                self._shown,
                reason,
                self._failures,
                now - self._failing_since,
            )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.info(
                "webhook delivered again after %d failed attempts in %.1f s",
                self._failures,
                time.monotonic() - self._failing_since,
            )
        self._failing_since = None
        self._failures = 0
        self._logged = 0.0
