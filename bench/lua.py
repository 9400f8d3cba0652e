"""presence's Lua scripts, as the benchmarks call them outside presence.

The one module of bench that reaches into presence's internals (its scripts and
batch size): when their module paths or arguments change, this is the place to
follow them.
"""

from __future__ import annotations

import redis

from presence import scripts
from presence.consumer import SCRIPT_BATCH

__all__ = ["SCRIPT_BATCH", "heartbeat_call"]


def heartbeat_call(r: redis.Redis, ttl_ms: int, lines: str) -> list[str]:
    """The consumer's own heartbeat script call, as command words for ``EVALSHA``
    (loading the script into ``r``): ``lines`` holds one heartbeat a line,
    ``<client> <server> <sent>``, and the keys are presence's defaults (no
    namespace). The lines carry no entry ids, so nothing is acknowledged."""
    sha = r.script_load(scripts.HEARTBEAT)
    return [
        "EVALSHA", sha, "4", "online.deadlines", "online.servers", "presence", "heartbeat",
        str(ttl_ms), "100000", "online.clients.", "online.holders.", lines, "presence",
    ]  # fmt: skip
