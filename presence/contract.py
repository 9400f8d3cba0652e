"""The Redis contract: key names, stream fields and the values they may hold.

Platforms written in other languages rely on these names, so they change
only with a major version. The README documents each of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from .errors import InvalidClientId

Status = Literal["ONLINE", "OFFLINE"]
ONLINE: Final = "ONLINE"
OFFLINE: Final = "OFFLINE"
#: A room member's data changed (room transitions only).
UPDATE: Final = "UPDATE"
RoomStatus = Literal["ONLINE", "UPDATE", "OFFLINE"]

#: The longest member data, encoded, in bytes.
MAX_DATA_BYTES: Final = 1024
#: Seconds an empty room's transition stream is kept, for resuming streams.
EMPTY_ROOM_TTL: Final = 3600

#: Consumer group that applies heartbeats; shared by every server.
CONSUMER_GROUP: Final = "presence"
#: Consumer group that posts transitions to the webhook, on the presence
#: stream and on each room stream; shared by every server with a webhook.
WEBHOOKS_GROUP: Final = "webhooks"
#: Member of ``rooms.due`` (score +inf: never due) present while webhooks
#: are on; a room with webhook entries not yet posted is ``#<room>`` there.
#: ``#`` is in no id and no id is empty, so no ``#<room>`` is the marker.
WEBHOOKS_MARKER: Final = "#"

ID_RULE: Final = "must be 1 to 128 letters, digits or ._:@-"
ROOM_RULE: Final = ID_RULE
#: The regex of a valid id, as bytes (valid ids are ASCII).
ID_PATTERN: Final = rb"[A-Za-z0-9._:@-]{1,128}"
_ID = re.compile(ID_PATTERN.decode())
_RAW_ID = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    """True for 1 to 128 letters, digits or ``._:@-`` (client, server and room ids)."""
    return _ID.fullmatch(value) is not None


def check_id(value: str) -> None:
    """``InvalidClientId`` unless ``value`` is a valid id (of a client or a room)."""
    if not is_valid_id(value):
        raise InvalidClientId(ID_RULE)


def is_valid_raw_id(value: bytes) -> bool:
    """``is_valid_id`` for an id as Redis sent it: valid ones are ASCII."""
    return _RAW_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key the service touches, under an optional namespace prefix."""

    namespace: str = ""

    @property
    def heartbeat(self) -> str:
        """Stream of heartbeats: fields ``client`` and ``server``."""
        return f"{self.namespace}heartbeat"

    @property
    def presence(self) -> str:
        """Stream of transitions: fields ``client``, ``status`` and ``server``."""
        return f"{self.namespace}presence"

    @property
    def online_prefix(self) -> str:
        return f"{self.namespace}online.clients."

    def online(self, client: str) -> str:
        """String key holding the server id while the client is online."""
        return f"{self.online_prefix}{client}"

    @property
    def deadlines(self) -> str:
        """Sorted set: announced-online client -> deadline (Unix ms)."""
        return f"{self.namespace}online.deadlines"

    @property
    def servers(self) -> str:
        """Hash: announced-online client -> server id."""
        return f"{self.namespace}online.servers"

    @property
    def holders_prefix(self) -> str:
        return f"{self.namespace}online.holders."

    def holders(self, client: str) -> str:
        """Sorted set: server -> deadline (Unix ms) of its last heartbeat of the
        client, or minus the time it announced the client left it."""
        return f"{self.holders_prefix}{client}"

    @property
    def last_seen(self) -> str:
        """Sorted set: client -> Unix ms of its last OFFLINE (its ``presence``
        entry's time), kept for the last-seen retention."""
        return f"{self.namespace}online.last_seen"

    @property
    def rooms_due(self) -> str:
        """Sorted set: room -> a time (Unix ms) no later than its earliest
        member deadline; the sweeper's index of rooms to visit."""
        return f"{self.namespace}rooms.due"

    @property
    def room_prefix(self) -> str:
        return f"{self.namespace}room."

    def room(self, room: str) -> RoomKeys:
        """The keys of ``room``: all in one Redis Cluster hash slot, ``{<room>}``."""
        return RoomKeys(f"{self.room_prefix}{{{room}}}.")


@dataclass(frozen=True, slots=True)
class RoomKeys:
    """The keys of one room, ``room.{<room>}.*``."""

    base: str

    @property
    def members(self) -> str:
        """Hash: announced member -> server id."""
        return f"{self.base}members"

    @property
    def deadlines(self) -> str:
        """Sorted set: announced member -> deadline (Unix ms)."""
        return f"{self.base}deadlines"

    @property
    def data(self) -> str:
        """Hash: announced member -> its data, a JSON object."""
        return f"{self.base}data"

    @property
    def presence(self) -> str:
        """Stream of the room's transitions: ``room``, ``client``, ``status``
        (``ONLINE``, ``UPDATE``, ``OFFLINE``), ``server`` and, with ONLINE and
        UPDATE of a member that has data, ``data``."""
        return f"{self.base}presence"

    @property
    def last_seen(self) -> str:
        """Sorted set, as ``last_seen`` but for the room's OFFLINEs; it expires
        one retention after its last write."""
        return f"{self.base}last_seen"

    def holders(self, client: str) -> str:
        """Sorted set, as ``online.holders.<id>`` but for the membership."""
        return f"{self.base}holders.{client}"
