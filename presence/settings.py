"""Settings: one frozen dataclass, validated when it is built."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.connection import parse_url

from .contract import ID_RULE, Keys, is_valid_id
from .errors import ConfigError
from .sentinel_url import is_sentinel_url, parse_sentinel_url
from .shards import MAX_SHARDS, shard_tags

IPNetwork = IPv4Network | IPv6Network
ENV_PREFIX = "PRESENCE_"
MEMORY_URL = "memory://"
_SCHEMES = ("redis", "rediss", "unix", "memory")
_NAMESPACE = re.compile(r"[A-Za-z0-9._:@{}-]{0,64}")
_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}
#: Fields never shown in full: in logs, errors or ``repr``.
_SECRETS = ("auth_secret", "webhook_secret")
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_SENTINEL_SECRET = re.compile(r"(sentinel_password=)[^&]*")
_WEBHOOK_URL = re.compile(r"https?://[^\s/?#]+(/\S*)?")
#: What ``webhook_events`` may choose: global transitions, room ones, or both.
WEBHOOK_EVENTS = ("global", "rooms", "all")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


#: The shortest automatic claim delay: below it, checks would cost more than a
#: slack this thin can protect anyway (the sweeper still waits for every entry).
MIN_CLAIM_DELAY = 0.05


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a presence server can be told; invalid values raise ``ConfigError``.

    ``Settings.from_env()`` reads ``PRESENCE_<FIELD>`` variables, for example
    ``PRESENCE_REDIS_URL`` or ``PRESENCE_HEARTBEAT_INTERVAL``.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    #: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
    #: ``rediss+sentinel://`` or ``memory://`` (in-process Redis).
    redis_url: str = MEMORY_URL
    #: Defaults to ``<host name>:<port>``.
    server_id: str = ""
    #: Seconds between two heartbeats of a connected client.
    heartbeat_interval: float = 5.0
    #: Key TTL = ttl_factor x heartbeat_interval.
    ttl_factor: float = 1.5
    #: Prefix of every Redis key; empty gives exactly the documented names.
    namespace: str = ""
    #: Logical shards clients and rooms spread over on a Redis Cluster (see
    #: ``shards``); ignored on one Redis. Every server of a cluster must use
    #: the same number.
    shards: int = 12
    #: Approximate cap (``XADD MAXLEN ~``) of the heartbeat stream.
    heartbeat_maxlen: int = 1_000_000
    #: Approximate cap (``XADD MAXLEN ~``) of the presence stream.
    presence_maxlen: int = 100_000
    #: Approximate cap (``XADD MAXLEN ~``) of each room's transition stream.
    room_maxlen: int = 10_000
    #: Seconds a client's (or room member's) last OFFLINE time is kept, for
    #: ``last_seen``; 0 keeps none.
    last_seen_retention: float = 30 * 86_400
    #: Rooms (``room`` and ``occupancy``) one stream may ask for; more get a 400.
    max_rooms_per_connection: int = 100
    #: Distinct rooms (``room`` and ``occupancy``) this server's streams may
    #: follow; a stream that would take it past them gets a 503.
    max_rooms: int = 10_000
    #: Client ids one stream may watch; more get a 400.
    max_watch: int = 1000
    #: Seconds between SSE keep-alive comments.
    keepalive_interval: float = 15.0
    #: Events a connection may fall behind before it gets a fresh snapshot
    #: instead (one buffer for the process: about 5 MB at the default).
    queue_size: int = 16384
    #: Seconds a stream that fell ``queue_size`` events behind may send nothing
    #: (its client stopped reading) before it is dropped.
    stall_timeout: float = 10.0
    #: Seconds a heartbeat entry may stay unacknowledged (its server stopped,
    #: froze or lost Redis) before another server claims and applies it; 0
    #: (the default) picks a third of the TTL's slack over the interval, at
    #: most 1 s. See ``claim_delay``.
    claim_after: float = 0.0
    #: Seconds of inactivity after which a consumer with nothing pending is
    #: removed from the group (servers that are gone for good).
    forget_after: float = 60.0
    #: Seconds after a client's last connection to this server closes before
    #: it is announced gone (a reload within it changes nothing); 0 leaves it
    #: to the TTL.
    leave_grace: float = 2.0
    #: HS256 secret verifying client tokens (JWT). Empty, with no public key,
    #: turns authentication off.
    auth_secret: str = ""
    #: PEM file of the public key verifying RS256 or ES256 client tokens.
    auth_public_key: str = ""
    #: Seconds of clock skew allowed when checking a token's ``exp``.
    auth_leeway: float = 5.0
    #: Whether GET /clients, /clients/<id> and /metrics need a token too.
    auth_reads: bool = False
    #: Open SSE connections this process accepts; more get a 503. ``serve``
    #: holds at most an eighth more connections of every kind (``open_files``).
    max_connections: int = 10_000
    #: Open SSE connections one client id may hold on this process; more get a 429.
    max_connections_per_client: int = 16
    #: Connections one client address may hold; 0 (the default) sets no cap. The
    #: address is the peer's, or, from a trusted proxy, the one it forwards.
    max_connections_per_address: int = 0
    #: Comma-separated addresses or networks (``10.0.0.0/8``) of the proxies in
    #: front: their ``X-Forwarded-For`` names the client; anyone else's is ignored.
    trusted_proxies: str = ""
    #: Seconds a request's line and headers, and then a body, may take to arrive.
    request_timeout: float = 5.0
    #: Comma-separated origins (``https://app.example.com``) allowed by CORS; none by default.
    cors_origins: str = ""
    #: Longest request line and longest header field accepted, in bytes.
    max_line_size: int = 8190
    max_field_size: int = 8190
    #: Attempts to reach Redis at start before giving up.
    connect_retries: int = 5
    #: ``http(s)://`` URL presence POSTs transitions to, in batches (see
    #: ``presence.webhooks``); empty turns webhooks off.
    webhook_url: str = ""
    #: HMAC-SHA256 key signing each webhook request; empty sends them unsigned.
    webhook_secret: str = ""
    #: Which transitions go to the webhook: ``global``, ``rooms`` or ``all``.
    webhook_events: str = "all"
    #: Server processes ``serve`` runs on one port (``SO_REUSEPORT``); 0 is one
    #: per core. Each has the server id ``<server_id>.w<k>``; needs a shared Redis.
    workers: int = 1
    #: With ``workers``, worker k also listens on ``worker_ports + k - 1`` by
    #: itself, so that each one's ``/healthz`` and ``/metrics`` can be reached
    #: (a scrape of the shared port reaches one worker at random); 0: none.
    worker_ports: int = 0
    log_level: str = "INFO"
    #: ``text`` or ``json`` (one object a line).
    log_format: str = "text"
    keys: Keys = field(init=False, repr=False, compare=False)
    #: ``trusted_proxies``, parsed.
    networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port must be between 0 and 65535")
        _check(0 <= self.workers <= 256, "workers must be between 0 (one per core) and 256")
        _check(0 <= self.worker_ports <= 65535, "worker ports must be between 0 and 65535")
        _check(
            math.isfinite(self.heartbeat_interval) and self.heartbeat_interval > 0,
            "heartbeat interval must be a positive number of seconds",
        )
        _check(
            math.isfinite(self.ttl_factor) and self.ttl_factor > 1,
            "ttl factor must be greater than 1 (a key must outlive the interval)",
        )
        _check(
            math.isfinite(self.keepalive_interval) and self.keepalive_interval > 0,
            "keep-alive interval must be a positive number of seconds",
        )
        _check(
            math.isfinite(self.forget_after) and self.forget_after > 0,
            "forget after must be a positive number of seconds",
        )
        _check(
            math.isfinite(self.claim_after) and self.claim_after >= 0,
            "claim after must be zero (automatic) or a positive number of seconds",
        )
        _check(
            self.claim_after <= self.slack / 2,
            f"claim after must be at most half the TTL's slack over the heartbeat interval "
            f"({self.slack / 2:g} s here): a stopped server's heartbeats are claimed within "
            "twice it, before the keys they refresh expire",
        )
        _check(
            math.isfinite(self.leave_grace) and self.leave_grace >= 0,
            "leave grace must be zero or a positive number of seconds",
        )
        _check(
            math.isfinite(self.auth_leeway) and self.auth_leeway >= 0,
            "auth leeway must be zero or a positive number of seconds",
        )
        _check(
            not (self.auth_secret and self.auth_public_key),
            "give either an auth secret or an auth public key, not both",
        )
        _check(self.max_connections >= 1, "max connections must be at least 1")
        _check(
            self.max_connections_per_client >= 1, "max connections per client must be at least 1"
        )
        _check(
            self.max_connections_per_address >= 0,
            "max connections per address must be 0 (no cap) or more",
        )
        _check(
            math.isfinite(self.request_timeout) and self.request_timeout > 0,
            "request timeout must be a positive number of seconds",
        )
        for origin in self.origins:
            _check(
                _ORIGIN.fullmatch(origin) is not None,
                f"cors origin must look like https://host[:port], got {origin!r}",
            )
        _check(1024 <= self.max_line_size <= 65536, "max line size must be 1024 to 65536 bytes")
        _check(1024 <= self.max_field_size <= 65536, "max field size must be 1024 to 65536 bytes")
        _check(self.heartbeat_maxlen >= 1, "heartbeat stream cap must be at least 1")
        _check(self.presence_maxlen >= 1, "presence stream cap must be at least 1")
        _check(self.queue_size >= 1, "queue size must be at least 1")
        _check(
            math.isfinite(self.stall_timeout) and self.stall_timeout > 0,
            "stall timeout must be a positive number of seconds",
        )
        _check(self.room_maxlen >= 1, "room stream cap must be at least 1")
        _check(
            math.isfinite(self.last_seen_retention) and self.last_seen_retention >= 0,
            "last seen retention must be zero (off) or a positive number of seconds",
        )
        _check(self.max_rooms_per_connection >= 1, "max rooms per connection must be at least 1")
        _check(self.max_rooms >= 1, "max rooms must be at least 1")
        _check(self.max_watch >= 1, "max watch must be at least 1")
        _check(self.connect_retries >= 1, "connect retries must be at least 1")
        _check(
            not self.webhook_url or _WEBHOOK_URL.fullmatch(self.webhook_url) is not None,
            "webhook url must look like https://host[:port]/path, "
            f"got {mask_url(self.webhook_url)!r}",
        )
        _check(
            self.webhook_events in WEBHOOK_EVENTS,
            f"webhook events must be one of {', '.join(WEBHOOK_EVENTS)}",
        )
        _check(1 <= self.shards <= MAX_SHARDS, f"shards must be 1 to {MAX_SHARDS}")
        _check(
            _NAMESPACE.fullmatch(self.namespace) is not None,
            "namespace must be up to 64 letters, digits or ._:@{}-",
        )
        level = self.log_level.upper()
        _check(level in _LOG_LEVELS, f"log level must be one of {', '.join(_LOG_LEVELS)}")
        _check(self.log_format in ("text", "json"), "log format must be text or json")
        _check_redis_url(self.redis_url)
        server_id = self.server_id or f"{socket.gethostname()}:{self.port}"
        _check(
            is_valid_id(server_id),
            f"server id {ID_RULE}",
        )
        object.__setattr__(self, "server_id", server_id)
        object.__setattr__(self, "log_level", level)
        object.__setattr__(self, "keys", Keys(self.namespace))
        object.__setattr__(self, "networks", tuple(_networks(self.trusted_proxies)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``PRESENCE_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if not f.init:
                continue
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                values[f.name] = _parse(name, env[name], _TYPES[str(f.type)])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def sharded(self) -> list[Settings]:
        """Each cluster shard's settings, shard 0 first: its keys carry the
        shard's hash tag, ``<namespace>{<tag>}.``."""
        if "{" in self.namespace or "}" in self.namespace:
            raise ConfigError("on a Redis Cluster the namespace must not hold { or }")
        return [
            dataclasses.replace(self, namespace=f"{self.namespace}{{{tag}}}.")
            for tag in shard_tags(self.shards)
        ]

    @property
    def last_seen_ms(self) -> int:
        """``last_seen_retention`` in milliseconds (0: none kept)."""
        return round(self.last_seen_retention * 1000)

    @property
    def ttl_ms(self) -> int:
        """TTL of ``online.clients.<id>`` in milliseconds."""
        return max(1, round(self.heartbeat_interval * self.ttl_factor * 1000))

    @property
    def slack(self) -> float:
        """Seconds a key outlives the heartbeat interval: how late a heartbeat
        may be applied before its client's key expires."""
        return self.heartbeat_interval * (self.ttl_factor - 1)

    @property
    def claim_delay(self) -> float:
        """Seconds before a pending heartbeat entry is claimed.

        An entry found pending this long in two checks half of it apart is
        claimed, so within twice it: kept within the slack, a heartbeat held
        by a frozen or stopped server is applied before its key expires.
        """
        return self.claim_after or min(1.0, max(MIN_CLAIM_DELAY, self.slack / 3))

    @property
    def in_memory(self) -> bool:
        return self.redis_url == MEMORY_URL

    @property
    def origins(self) -> list[str]:
        """The CORS allowlist."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def auth(self) -> bool:
        """Whether client streams need a token."""
        return bool(self.auth_secret or self.auth_public_key)

    @property
    def masked_redis_url(self) -> str:
        """The Redis URL with any password replaced by ``***``."""
        return mask_url(self.redis_url)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={_shown(f.name, v)}"
            for f in fields(self)
            if f.repr
            for v in [getattr(self, f.name)]
        )
        return f"Settings({shown})"


def _shown(name: str, value: Any) -> str:
    if name in ("redis_url", "webhook_url"):
        return mask_url(value)
    if name in _SECRETS and value:
        return "'***'"
    return repr(value)


def mask_url(url: str) -> str:
    """Hide the password of a URL; leave anything unparsable alone."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "sentinel_password=" in parts.query:
        parts = parts._replace(query=_SENTINEL_SECRET.sub(r"\1***", parts.query))
        url = urlunsplit(parts)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _networks(listed: str) -> Iterator[IPNetwork]:
    for entry in listed.split(","):
        if entry := entry.strip():
            try:
                yield ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"trusted proxies must be addresses or networks (10.0.0.0/8), got {entry!r}"
                ) from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_redis_url(url: str) -> None:
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"redis url is not a valid URL: {mask_url(url)!r}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            "redis url must start with redis://, rediss://, unix://, redis+sentinel://, "
            f"rediss+sentinel:// or memory://, got {mask_url(url)!r}"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError("a unix:// redis url needs a socket path, e.g. unix:///run/redis.sock")
    if parts.scheme == "memory" and url != MEMORY_URL:
        raise ConfigError("the in-process redis url is exactly memory://")
    db = parts.path.lstrip("/")
    if parts.scheme in ("redis", "rediss") and db and not db.isdigit():
        raise ConfigError(f"redis url database must be a number, got {db!r}")
    if parts.scheme == "memory":
        return
    try:
        options = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError(f"redis url: {exc}") from None
    if "protocol" in options:
        raise ConfigError(
            "redis url: remove protocol=: presence uses the protocol redis-py negotiates"
        )


def _parse(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.strip().lower() not in _BOOLS:
            raise ConfigError(f"{name} must be true or false, got {raw!r}")
        return _BOOLS[raw.strip().lower()]
    try:
        return kind(raw)
    except ValueError:
        noun = {int: "an integer", float: "a number"}.get(kind, "a value")
        raise ConfigError(f"{name} must be {noun}, got {raw!r}") from None
