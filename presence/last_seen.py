"""Last seen: when an offline client (or room member) last went OFFLINE.

The OFFLINE's script records its entry's time (``Keys.last_seen``), so the
time is the transition's own, whichever server published it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import ResponseError

from .redis_client import Redis


def iso(ms: int) -> str:
    """Unix ms as ISO 8601 in UTC, to the millisecond: ``2026-12-02T21:00:00.123Z``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def read(redis: Redis, key: str, client: str, retention_ms: int) -> int | None:
    """Unix ms of ``client``'s last OFFLINE recorded in ``key``, if within the
    retention: an older one is trimmed only by a later OFFLINE's script, and a
    retention of 0 (none kept) ignores what an earlier setting kept."""
    if retention_ms <= 0:
        return None
    try:
        score = await redis.zscore(key, client)
    except ResponseError as exc:
        if "WRONGTYPE" in str(exc):
            return None  # someone else's key there: nothing was recorded
        raise
    if score is None or score < time.time() * 1000 - retention_ms:
        return None
    return int(score)


def fields(ms: int | None) -> dict[str, Any]:
    """``last_seen`` (Unix ms) and ``last_seen_iso``, both null when unknown."""
    return {"last_seen": ms, "last_seen_iso": None if ms is None else iso(ms)}
