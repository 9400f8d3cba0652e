"""The values presence hands out: transitions and online clients."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .contract import Status


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """One entry of the presence stream."""

    #: The stream entry id, e.g. ``"1700000000000-0"``.
    id: str
    client: str
    status: Status
    server: str

    def to_json(self) -> str:
        return json.dumps(
            {"client": self.client, "status": self.status, "server": self.server},
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class OnlineClient:
    """A client that is online, and the server holding its connection."""

    client: str
    server: str


@dataclass(frozen=True, slots=True)
class Reset:
    """Who is online, replacing what a listener knew: the presence stream lost
    entries it may not have seen (trimmed, or Redis restarted without its data).

    Events after it follow from ``id``, the stream entry it is exact at.
    """

    id: str
    clients: list[OnlineClient]
