"""``redis+sentinel://`` URLs: the sentinels to ask, and the primary's name.

    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]

``rediss+sentinel://`` speaks TLS to the primary and its replicas. The
credentials are the primary's; sentinels that need a password of their own
take it as ``?sentinel_password=``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError

SCHEMES = ("redis+sentinel", "rediss+sentinel")
_FORM = "redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]"
_OPTIONS = ("sentinel_password",)


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0] in SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a sentinel URL; ``ConfigError`` names what is wrong."""
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES:
        raise ConfigError(f"a sentinel url starts with redis+sentinel://, as {_FORM}")
    parts = urlsplit(f"x://{rest}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_address(h) for h in hosts.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(f"a sentinel url names the primary's service, as {_FORM}")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ConfigError(f"sentinel url database must be a number, got {path[1]!r}")
        db = int(path[1])
    options = parse_qs(parts.query)
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"sentinel url: unknown option {unknown[0]!r}")
    sentinel_password = options.get("sentinel_password", [None])[-1]
    return SentinelUrl(
        sentinels,
        unquote(path[0]),
        db,
        username,
        password,
        sentinel_password,
        tls=scheme == "rediss+sentinel",
    )


def _address(host: str) -> tuple[str, int]:
    name, colon, port = host.strip().rpartition(":")
    if not colon or not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"a sentinel is host:port, got {host!r} (as {_FORM})")
    return name.strip("[]"), int(port)
