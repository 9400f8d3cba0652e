"""Presence out: one reader of the presence stream per process, fanned out in memory.

The reader starts at the stream's end (never its beginning) and keeps its
position across reconnects. With each read it checks that the position read
from is still in the stream; if not, entries it never saw may be lost, and
every subscriber gets a fresh snapshot instead. Each event is JSON- and SSE-encoded once, then
offered to every subscriber except those of the client it is about.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .connection import BLOCK_MS, Redis, field_map, stream_entries, text, unparsed_streams
from .contract import OFFLINE, ONLINE, Status, is_valid_raw_id
from .events import PresenceEvent, stream_position
from .local import Delivery, LocalState
from .settings import Settings
from .supervise import Worker

log = logging.getLogger(__name__)

BATCH = 1000
_STATUSES: dict[bytes, Status] = {b"ONLINE": ONLINE, b"OFFLINE": OFFLINE}
_FRAME = b'id: %b\nevent: presence\ndata: {"client":"%b","status":"%b","server":"%b"}\n\n'


class PresenceReader:
    def __init__(self, redis: Redis, settings: Settings, local: LocalState) -> None:
        self._redis = unparsed_streams(redis)
        self._stream = settings.keys.presence
        self._local = local
        self.position: str | None = None
        self.delivered = 0
        self.resyncs = 0
        #: Seconds between the newest entry of the last batch and its delivery.
        self.lag = 0.0
        # A batch larger than the log would drop subscribers that are caught up.
        self._count = min(BATCH, settings.queue_size)

    async def start(self) -> None:
        """Take the current end of the stream as the first position to read after."""
        last: Any = await self._redis.xrevrange(self._stream, count=1)
        self.position = text(last[0][0]) if last else "0-0"

    async def run(self, worker: Worker) -> None:
        if self.position is None:
            await self.start()
        worker.ok()
        while not worker.stopping:
            position = self.position or "0-0"
            # Is the position still there? Asked with every read, not only after
            # a reconnect (redis-py may have reconnected to a restarted Redis
            # without telling anyone), and in the same round trip.
            pipe = self._redis.pipeline(transaction=False)
            pipe.xrange(self._stream, position, position, count=1)
            pipe.xread({self._stream: position}, count=self._count, block=BLOCK_MS)
            found, reply = await pipe.execute()
            lost = position != "0-0" and not found
            worker.ok()
            batch = []
            newest = position
            for entry_id, fields in stream_entries(reply):
                newest = entry_id.decode()
                delivery = parse_delivery(newest, fields)
                if delivery is None:
                    log.warning("ignored malformed presence entry %s", newest)
                    continue
                batch.append(delivery)
            self.position = newest
            if lost:
                # Trimmed, deleted, or Redis restarted without its data: what this
                # process delivered may no longer add up, so everyone resyncs.
                log.warning(
                    "presence stream lost entries after %s: sending fresh snapshots", position
                )
                self.resyncs += 1
                self._local.resync_all()
                continue
            self._local.deliver(batch)
            self.delivered += len(batch)
            self.lag = max(0.0, time.time() - stream_position(newest)[0] / 1000) if batch else 0.0


def parse_delivery(entry_id: str, fields: list[bytes] | None) -> Delivery | None:
    """The event of an unparsed presence entry with its SSE frame; None unless it
    is well formed (ids valid)."""
    if (valid := _valid_fields(fields)) is None:
        return None
    client, status, server = valid
    # Valid ids are ASCII and need no JSON escaping: formatting beats
    # json.dumps on the busiest path of a burst.
    frame = _FRAME % (entry_id.encode(), client, status, server)
    return Delivery(entry_id, client.decode(), _STATUSES[status], server.decode(), frame)


def parse_event(entry_id: str, fields: list[bytes] | None) -> PresenceEvent | None:
    """The event of an unparsed presence entry; None unless it is well formed."""
    if (valid := _valid_fields(fields)) is None:
        return None
    client, status, server = valid
    return PresenceEvent(entry_id, client.decode(), _STATUSES[status], server.decode())


def _valid_fields(fields: list[bytes] | None) -> tuple[bytes, bytes, bytes] | None:
    """``(client, status, server)`` of an unparsed presence entry, if valid."""
    client: bytes | None
    status: bytes | None
    server: bytes | None
    if (
        fields is not None
        and len(fields) == 6
        and fields[0] == b"client"
        and fields[2] == b"status"
        and fields[4] == b"server"
    ):  # in the order the scripts write them: no lookup by name
        client, status, server = fields[1], fields[3], fields[5]
    else:
        found = field_map(fields)
        client, status, server = found.get(b"client"), found.get(b"status"), found.get(b"server")
        if client is None or server is None:
            return None
    if status not in _STATUSES or not is_valid_raw_id(client):
        return None
    if server and not is_valid_raw_id(server):  # empty: OFFLINE of a client with no server
        return None
    return client, status, server
