"""Presence: who is online, in real time, through Redis and Server-Sent Events."""

from .app import create_app, setup
from .contract import OFFLINE, ONLINE, Keys, Status
from .errors import (
    ConfigError,
    InvalidClientId,
    PresenceError,
    RedisMisconfigured,
    RedisUnavailable,
)
from .events import OnlineClient, PresenceEvent
from .http import PRESENCE
from .service import Presence
from .settings import Settings

__all__ = [
    "OFFLINE",
    "ONLINE",
    "PRESENCE",
    "ConfigError",
    "InvalidClientId",
    "Keys",
    "OnlineClient",
    "Presence",
    "PresenceError",
    "PresenceEvent",
    "RedisMisconfigured",
    "RedisUnavailable",
    "Settings",
    "Status",
    "create_app",
    "setup",
]
