"""presence's heartbeat script call, as a load generator sends it.

The one module of bench that reaches into presence's internals: it asks
presence for the very command its consumer sends, so the ceiling measures
the same call.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from presence import Settings
from presence.heartbeats.consumer import SCRIPT_BATCH
from presence.transitions.scripts import Transitions
from presence.transitions.sources import HEARTBEAT

__all__ = ["SCRIPT_BATCH", "heartbeat_call"]


def heartbeat_call(r: redis.Redis, settings: Settings, lines: list[str]) -> list[str]:
    """The consumer's own heartbeat script call, as command words for ``EVALSHA``
    (loading the script into ``r``): one heartbeat a line, ``<client> <server>
    <sent>``. The lines carry no entry ids, so nothing is acknowledged."""
    r.script_load(HEARTBEAT)
    # A client that never connects: Transitions only builds the command here.
    transitions = Transitions(aioredis.Redis(), settings)
    command = transitions.heartbeat_command([line.encode() for line in lines])
    return [a.decode() if isinstance(a, bytes) else str(a) for a in command]
