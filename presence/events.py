"""The values presence hands out: transitions, online clients, rooms' members and transitions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .contract import RoomStatus, Status


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


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """One entry of a room's stream: a member joined (``ONLINE``), its data
    changed (``UPDATE``), or it left (``OFFLINE``)."""

    #: The room stream's entry id.
    id: str
    room: str
    client: str
    status: RoomStatus
    server: str
    #: The member's data (JSON object text), with ONLINE and UPDATE when it has some.
    data: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a scoped SSE stream's ``presence`` data has it."""
        found: dict[str, Any] = {
            "room": self.room,
            "client": self.client,
            "status": self.status,
            "server": self.server,
        }
        if self.data is not None:
            found["data"] = json.loads(self.data)
        return found


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a room: its client, server and data (JSON object text)."""

    client: str
    server: str
    data: str | None = None

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"client": self.client, "server": self.server}
        if self.data is not None:
            found["data"] = json.loads(self.data)
        return found
