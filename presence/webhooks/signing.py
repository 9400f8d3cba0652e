"""Webhook request signatures: HMAC-SHA256 of the timestamp and the raw body.

The timestamp is signed with the body (``"<timestamp>." + body``), so that a
receiver that refuses old timestamps also refuses a request replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Presence-Timestamp"
SIGNATURE_HEADER = "X-Presence-Signature"
#: Seconds a receiver should accept between a request's timestamp and its clock.
TOLERANCE = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Presence-Signature`` value: ``sha256=<hex>``."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers that sign ``body`` at ``now`` (Unix seconds)."""
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def verify(
    secret: str,
    body: bytes,
    timestamp: str,
    signed: str,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE,
) -> bool:
    """Whether a request's headers sign ``body`` with ``secret``, within
    ``tolerance`` seconds of ``now``: what a receiver checks."""
    if not timestamp.isdigit():
        return False
    when = int(timestamp)
    if abs((time.time() if now is None else now) - when) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, when, body), signed)
