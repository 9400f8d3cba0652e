"""Webhooks: every transition POSTed once, in batches, to one URL.

``Webhooks`` runs one loop per shard (``delivery``) over the consumer group
``webhooks`` on the transition streams (``streams``), posting JSON batches
(``payload``), signed (``signing``) and retried with backoff (``sender``).
Delivery is at least once: a receiver deduplicates on each event's ``id``.
"""

from __future__ import annotations

import time

from ..redis_client import Redis
from ..settings import Settings
from .delivery import ShardDelivery
from .sender import Sender
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature, verify
from .streams import WebhookStreams

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Webhooks", "signature", "verify"]


class Webhooks:
    """The webhook of one process: a delivery loop per shard, one HTTP session."""

    def __init__(self, redis: Redis, shards: list[Settings], labels: list[str]) -> None:
        first = shards[0]
        self.sender = Sender(first.webhook_url, first.webhook_secret)
        kinds = first.webhook_events
        self.deliveries = [
            ShardDelivery(
                WebhookStreams(
                    redis, s, rooms=kinds in ("rooms", "all"), presence=kinds in ("global", "all")
                ),
                self.sender,
                label,
            )
            for s, label in zip(shards, labels, strict=True)
        ]

    async def open(self) -> None:
        await self.sender.open()

    async def close(self) -> None:
        await self.sender.close()

    @property
    def ok(self) -> int:
        """Events posted (a 2xx)."""
        return self.sender.ok

    @property
    def retried(self) -> int:
        """Events of attempts that failed, each to be retried."""
        return self.sender.retried

    @property
    def dropped(self) -> int:
        """Events trimmed from their streams before they were posted."""
        return sum(d.dropped for d in self.deliveries)

    @property
    def lag(self) -> float:
        """Seconds since the oldest transition taken and not posted yet; 0 when none is."""
        oldest = [d.oldest_ms for d in self.deliveries if d.oldest_ms is not None]
        return max(0.0, time.time() - min(oldest) / 1000) if oldest else 0.0
