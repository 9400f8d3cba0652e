"""The Redis contract: key names, stream fields and the values they may hold.

Platforms written in other languages rely on these names, so they change
only with a major version. The README documents each of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Status = Literal["ONLINE", "OFFLINE"]
ONLINE: Final = "ONLINE"
OFFLINE: Final = "OFFLINE"

#: Consumer group that applies heartbeats; shared by every server.
CONSUMER_GROUP: Final = "presence"

ID_RULE: Final = "must be 1 to 128 letters, digits or ._:@-"
#: The regex of a valid id, as bytes (valid ids are ASCII).
ID_PATTERN: Final = rb"[A-Za-z0-9._:@-]{1,128}"
_ID = re.compile(ID_PATTERN.decode())
_RAW_ID = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    """True for 1 to 128 letters, digits or ``._:@-`` (client and server ids)."""
    return _ID.fullmatch(value) is not None


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
