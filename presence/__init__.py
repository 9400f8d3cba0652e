"""Presence: who is online, in real time, through Redis and Server-Sent Events."""

__version__ = "0.1.0"

from .contract import OFFLINE, ONLINE, UPDATE, Keys, RoomStatus, Status
from .errors import (
    ConfigError,
    InvalidClientId,
    PresenceError,
    RedisMisconfigured,
    RedisUnavailable,
    RoomUnreadable,
)
from .events import Member, OnlineClient, PresenceEvent, Reset, RoomEvent
from .presence import Presence
from .settings import Settings
from .shards import shard_of, shard_tags
from .updates.replay import Replay
from .updates.room_snapshot import RoomSnapshot
from .updates.snapshot import Snapshot
from .web.app import create_app, setup
from .web.requests import PRESENCE

__all__ = [
    "OFFLINE",
    "ONLINE",
    "PRESENCE",
    "UPDATE",
    "ConfigError",
    "InvalidClientId",
    "Keys",
    "Member",
    "OnlineClient",
    "Presence",
    "PresenceError",
    "PresenceEvent",
    "RedisMisconfigured",
    "RedisUnavailable",
    "Replay",
    "Reset",
    "RoomEvent",
    "RoomSnapshot",
    "RoomStatus",
    "RoomUnreadable",
    "Settings",
    "Snapshot",
    "Status",
    "create_app",
    "setup",
    "shard_of",
    "shard_tags",
]
