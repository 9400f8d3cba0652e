"""Last seen: when an offline client (or room member) last went OFFLINE.

The OFFLINE's script records its entry's time (``Keys.last_seen``), so the
time is the transition's own, whichever server published it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso(ms: int) -> str:
    """Unix ms as ISO 8601 in UTC, to the millisecond: ``2026-12-02T21:00:00.123Z``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fields(ms: int | None) -> dict[str, Any]:
    """``last_seen`` (Unix ms) and ``last_seen_iso``, both null when unknown."""
    return {"last_seen": ms, "last_seen_iso": None if ms is None else iso(ms)}
