"""Exceptions raised by presence.

``PresenceError`` is the base of everything this package raises on purpose:

- ``ConfigError``: a setting is invalid; the message names it.
- ``InvalidClientId``: a client id breaks the id rule.
- ``RedisUnavailable``: Redis could not be reached after the configured retries.
- ``RedisMisconfigured``: Redis answers but lacks something presence needs,
  and the message says which server setting to apply.
- ``RoomUnreadable``: Redis failed to read one room (a key of the wrong type);
  it names the room. It is a ``RedisError`` too, as the failure it stands for.
"""

from redis.exceptions import RedisError


class PresenceError(Exception):
    """Base class of the errors presence raises."""


class ConfigError(PresenceError, ValueError):
    """A setting has an invalid value."""


class RedisUnavailable(PresenceError):
    """Redis did not answer after the configured retries."""


class RedisMisconfigured(PresenceError):
    """Redis answers, but a server setting presence needs is missing."""


class InvalidClientId(PresenceError, ValueError):
    """A client id is not 1 to 128 letters, digits or ``._:@-``."""


class RoomUnreadable(PresenceError, RedisError):
    """Redis failed to read one room, and only that room."""

    def __init__(self, room: str, reason: str) -> None:
        super().__init__(f"room {room} cannot be read from Redis: {reason}")
        self.room = room
