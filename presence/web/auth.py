"""Who may be whom: JSON Web Tokens for client streams and, optionally, reads.

A stream for client ``<id>`` needs a token whose ``sub`` is ``<id>`` and whose
``exp`` has not passed. Verification is PyJWT's, with the algorithm fixed by
the configured key (HS256 for a secret, RS256 or ES256 for a public key), so
a token cannot choose its own (``alg: none`` included).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..errors import ConfigError
from ..settings import Settings

#: The cookie a browser may carry the token in.
COOKIE = "presence_token"


class Unauthorized(Exception):
    """No token, or one that does not verify: 401."""


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    #: Unix seconds.
    exp: float
    #: The ``rooms`` claim: room names, or prefixes ending in ``*``.
    rooms: tuple[str, ...] = ()

    def may_join(self, room: str) -> bool:
        """Whether the ``rooms`` claim covers ``room``."""
        return any(
            room.startswith(allowed[:-1]) if allowed.endswith("*") else room == allowed
            for allowed in self.rooms
        )


class Verifier:
    """Checks tokens against the configured key; ``enabled`` is False without one."""

    def __init__(self, settings: Settings) -> None:
        self._leeway = settings.auth_leeway
        self._key: str | rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None = None
        self._algorithms: list[str] = []
        if settings.auth_secret:
            self._key, self._algorithms = settings.auth_secret, ["HS256"]
        elif settings.auth_public_key:
            self._key = _public_key(settings.auth_public_key)
            self._algorithms = ["RS256"] if isinstance(self._key, rsa.RSAPublicKey) else ["ES256"]

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def verify(self, token: str) -> Claims:
        """The token's claims; raises ``Unauthorized`` with a reason safe to show."""
        assert self._key is not None
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError:
            # The details (which check failed) help an attacker more than a user.
            raise Unauthorized("invalid token") from None
        sub, exp = claims["sub"], claims["exp"]
        if not isinstance(sub, str) or not isinstance(exp, int | float):
            raise Unauthorized("invalid token")
        rooms = claims.get("rooms", [])
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            rooms = []  # a claim that says nothing clear allows nothing
        return Claims(sub, float(exp), tuple(rooms))


def token_of(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer``, the cookie, or ``?token=``."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE) or request.query.get("token") or None


def mint(secret: str, client: str, ttl: float, rooms: Sequence[str] = ()) -> str:
    """An HS256 token for ``client``, valid ``ttl`` seconds, that may join
    ``rooms`` (names, or prefixes ending in ``*``): for development."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": client, "iat": now, "exp": now + int(ttl)}
    if rooms:
        claims["rooms"] = list(rooms)
    return jwt.encode(claims, secret, "HS256")


def _public_key(path: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the auth public key {path!r}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"the auth public key {path!r} is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return key
    raise ConfigError("the auth public key must be RSA (RS256) or EC P-256 (ES256)")
