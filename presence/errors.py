"""Exceptions raised by presence.

``PresenceError`` is the base of everything this package raises on purpose:

- ``ConfigError``: a setting is invalid; the message names it.
- ``InvalidClientId``: a client id breaks the id rule.
- ``RedisUnavailable``: Redis could not be reached after the configured retries.
- ``RedisMisconfigured``: Redis answers but lacks something presence needs,
  and the message says which server setting to apply.
"""


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
