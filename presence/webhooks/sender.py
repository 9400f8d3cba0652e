"""The HTTP side of webhooks: POST one request until the receiver takes it.

A failed attempt (a 5xx, a 408, 425 or 429, a redirect, a timeout, a refused
connection) is retried after a backoff that doubles up to ``MAX_BACKOFF``,
with jitter so that servers do not retry in step. A receiver that is down
costs only this task: presence never waits for it, and what is not posted
yet stays pending in Redis. Failures are logged when they begin, then at
most once a minute.

What differs from retrying everything: any other 4xx says the receiver will
never take this request, and retrying it for ever would hold up its shard's
streams for ever. After ``REJECT_AFTER`` such answers in a row the request
is given up (``REJECTED``): its entries are acknowledged, counted and
logged, and the streams go on. Redirects are not followed: a webhook URL
that moved is a configuration to mend, and a signed body is not sent on to
wherever a ``Location`` points.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from enum import Enum
from typing import Final

import aiohttp

from .. import __version__
from ..logs import Throttle
from ..settings import mask_url
from .signing import signed_headers

log = logging.getLogger(__name__)

#: Seconds one attempt may take, connecting and reading the answer included.
TIMEOUT: Final = 10.0
#: The first backoff, before its jitter (which takes it to 0.1-0.2 s).
FIRST_BACKOFF: Final = 0.2
MAX_BACKOFF: Final = 30.0
#: Seconds between two log lines about a receiver that keeps failing, and
#: between two about requests given up.
LOG_EVERY: Final = 60.0
#: Answers in a row with a 4xx other than ``TRANSIENT`` that give a request up.
REJECT_AFTER: Final = 5
#: 4xx statuses that say "later" (timeout, too early, too many requests).
TRANSIENT: Final = frozenset({408, 425, 429})

USER_AGENT: Final = f"presence/{__version__}"


class Outcome(Enum):
    #: A 2xx.
    POSTED = "posted"
    #: Refused for good (``REJECT_AFTER`` 4xx in a row): to acknowledge anyway.
    REJECTED = "rejected"
    #: The server is stopping: the request stays pending, for another server.
    STOPPED = "stopped"


def refuses(status: int) -> bool:
    """Whether a status says the receiver will never take the request."""
    return 400 <= status < 500 and status not in TRANSIENT


class Sender:
    """POSTs requests to one URL, signed with ``secret`` when there is one."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self._shown = mask_url(url)
        self._secret = secret
        self._session: aiohttp.ClientSession | None = None
        #: Events posted (a 2xx); events of attempts that failed, each retried;
        #: events of requests given up.
        self.ok = 0
        self.retried = 0
        self.rejected = 0
        self._failing_since: float | None = None
        self._logged = 0.0
        self._failures = 0
        self._rejections = Throttle(LOG_EVERY)

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, body: Callable[[], bytes], events: int, stopping: Callable[[], bool]
    ) -> Outcome:
        """POST the request ``body()`` builds (``events`` transitions; built
        anew for each attempt, which it dates) until a 2xx, a refusal for
        good, or ``stopping()`` turning true."""
        assert self._session is not None, "sender not open"
        backoff = FIRST_BACKOFF
        refusals = 0
        while True:
            data = body()
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
            if self._secret:
                headers.update(signed_headers(self._secret, data))
            try:
                async with self._session.post(
                    self.url, data=data, headers=headers, allow_redirects=False
                ) as response:
                    await response.read()
                    status = response.status
                    if 200 <= status < 300:
                        self.ok += events
                        self._recovered()
                        return Outcome.POSTED
                    reason = f"HTTP {status}"
                    if 300 <= status < 400:
                        location = mask_url(response.headers.get("Location", "none"))
                        reason += f", a redirect (not followed) to {location}"
                    refusals = refusals + 1 if refuses(status) else 0
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
                refusals = 0
            if refusals >= REJECT_AFTER:
                self._rejected(reason, events)
                return Outcome.REJECTED
            self.retried += events
            self._failed(reason)
            if stopping():
                return Outcome.STOPPED
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, MAX_BACKOFF)
            if stopping():
                return Outcome.STOPPED

    def _rejected(self, reason: str, events: int) -> None:
        self.rejected += events
        if due := self._rejections.count(events):
            log.error(
                "webhook %s refused a request %d times in a row (%s): %d transitions "
                "given up since the last such line (%d in all), acknowledged unposted; "
                "mend the receiver",
                self._shown,
                REJECT_AFTER,
                reason,
                due,
                self.rejected,
            )

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
