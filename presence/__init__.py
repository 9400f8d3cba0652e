"""Presence: who is online, in real time, through Redis and Server-Sent Events."""

from .contract import OFFLINE, ONLINE, Keys, Status
from .errors import (
    ConfigError,
    InvalidClientId,
    PresenceError,
    RedisMisconfigured,
    RedisUnavailable,
)
from .events import OnlineClient, PresenceEvent, Reset
from .presence import Presence
from .settings import Settings
from .web.app import create_app, setup
from .web.requests import PRESENCE

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
    "Reset",
    "Settings",
    "Status",
    "create_app",
    "setup",
]
