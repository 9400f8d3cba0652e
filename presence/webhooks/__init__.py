"""Webhooks: every transition POSTed once, in batches, to one URL.

``Webhooks`` runs one loop per shard (``delivery``) over the consumer group
``webhooks`` on the transition streams (``streams``), posting JSON batches
(``payload``), signed (``signing``) and retried with backoff (``sender``).
Delivery is at least once: a receiver deduplicates on each event's ``id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ..settings import Settings
from ..transitions.scripts import Transitions
from .delivery import ShardDelivery
from .sender import Sender
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature, verify
from .streams import WebhookStreams, marked

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Webhooks", "signature", "verify"]

log = logging.getLogger(__name__)


class Webhooks:
    """The webhook of one process: a delivery loop per shard, one HTTP session."""

    def __init__(
        self, shards: Sequence[Settings], transitions: Sequence[Transitions], labels: list[str]
    ) -> None:
        first = shards[0]
        self.sender = Sender(first.webhook_url, first.webhook_secret)
        kinds = first.webhook_events
        self.deliveries = [
            ShardDelivery(
                WebhookStreams(
                    t, s, rooms=kinds in ("rooms", "all"), presence=kinds in ("global", "all")
                ),
                self.sender,
                label,
            )
            for s, t, label in zip(shards, transitions, labels, strict=True)
        ]

    async def prepare(self) -> None:
        """Each shard's group on its presence stream, and its room marker:
        done at start, before anything publishes, so no transition is missed."""
        for delivery in self.deliveries:
            await delivery.prepare()

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
    def rejected(self) -> int:
        """Events of requests the receiver refused for good, given up."""
        return self.sender.rejected

    @property
    def lag(self) -> float:
        """Seconds since the oldest transition not acknowledged yet that this
        server's last look at each stream found; 0 when all were caught up."""
        oldest = [d.oldest_ms for d in self.deliveries if d.oldest_ms is not None]
        return max(0.0, time.time() - min(oldest) / 1000) if oldest else 0.0


async def warn_if_left_on(transitions: Sequence[Transitions]) -> None:
    """One warning when a server that posts no room webhooks finds their
    marker: the room scripts keep indexing rooms for webhooks, which nothing
    removes unless some server still posts them."""
    found = await marked(transitions)
    if not found:
        return
    if len(found) == 1:
        where, command = found[0], f"ZREMRANGEBYSCORE {found[0]} +inf +inf"
    else:
        where = f"{len(found)} shards' rooms.due"
        command = f"ZREMRANGEBYSCORE <key> +inf +inf on each of {', '.join(found)}"
    log.warning(
        "this server posts no room webhooks, but %s holds their marker '#', so the room "
        "scripts index rooms for them; if no server posts room webhooks any more, "
        "remove the marker and that index: %s",
        where,
        command,
    )
