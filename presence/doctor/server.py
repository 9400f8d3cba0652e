"""Checks of each primary's own state: its version and role, keyspace
events, eviction policy and clock.

On a cluster each is asked of every primary: configuration is per node, and
a replica promoted by a failover keeps its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from ..entries import text
from ..redis_client import MIN_VERSION, version_of
from ..transitions.keyspace import (
    KEYSPACE_FLAGS,
    has_keyspace_flags,
    keyspace_events_arrive,
    wanted_flags,
)
from .report import OK, PROBLEM, WARN, Check
from .target import Target

#: Clock skew between this host and Redis that is reported, in seconds.
SKEW_WARN = 1.0
SKEW_PROBLEM = 10.0
#: TIME round trips per primary; the quickest one counts.
CLOCK_SAMPLES = 3


async def version(target: Target) -> Check:
    found = {n: str(i.get("redis_version", "0")) for n, i in await _info(target, "server")}
    old = [n for n, v in found.items() if version_of(v) < MIN_VERSION]
    if old:
        return Check(
            "version",
            PROBLEM,
            f"Redis {found[old[0]]}{target.where(old)}: presence needs 6.2 or newer "
            "(ZADD GT, XPENDING IDLE, XADD MINID, exclusive XRANGE ranges, SET KEEPTTL)",
            "upgrade Redis to 6.2 or newer (7.0 or newer for exact room resumes)",
        )
    versions = ", ".join(sorted(set(found.values())))
    note = "" if min(version_of(v) for v in found.values()) >= (7, 0) else " (no ACL DRYRUN)"
    return Check("version", OK, f"Redis {versions}{note}; presence needs 6.2 or newer")


async def mode(target: Target) -> Check:
    """The mode, and that presence writes to a primary."""
    if target.mode == "cluster":
        states = await target.on_primaries("CLUSTER", "INFO")
        down = [
            n
            for n, s in states.items()
            if not isinstance(s, Exception) and "cluster_state:ok" not in text(s)
        ]
        shape = f"Redis Cluster of {len(states)} primaries, {len(target.shards)} shards"
        if down:
            return Check(
                "mode",
                PROBLEM,
                f"{shape}; cluster_state is not ok on {', '.join(down)}",
                "serve every slot from a primary that is up (redis-cli --cluster check <node>)",
            )
        return Check("mode", OK, shape)
    info = await target.redis.info("replication")
    shape = "standalone"
    if target.mode == "sentinel":
        pool: Any = target.redis.connection_pool
        host, port = await pool.get_master_address()
        shape = f"sentinel-managed primary {host}:{port}"
    if info.get("role") != "master":
        primary = f"{info.get('master_host')}:{info.get('master_port')}"
        return Check(
            "mode",
            PROBLEM,
            f"{shape}, but a replica of {primary}: presence writes, which a replica refuses",
            f"point --redis-url at the primary ({primary}), or at the sentinels "
            "with redis+sentinel://",
        )
    return Check("mode", OK, f"{shape} (role master)")


async def keyspace_events(target: Target) -> Check:
    """``notify-keyspace-events`` on every primary, and whether presence can add
    what is missing (a CONFIG SET of the current value tells, changing nothing)."""
    name = "keyspace-events"
    refused: list[str] = []
    settable: dict[str, str] = {}
    stuck: dict[str, str] = {}
    present = ""
    replies = await target.on_primaries("CONFIG", "GET", "notify-keyspace-events")
    for node, reply in replies.items():
        if isinstance(reply, Exception):
            refused.append(node)
            continue
        flags = text(next(iter(reply.values()), None) or b"")
        if has_keyspace_flags(flags):
            present = flags
        elif await _settable(target, node, flags):
            settable[node] = flags
        else:
            stuck[node] = flags
    if stuck:
        node, flags = next(iter(stuck.items()))
        wanted = wanted_flags(flags)
        return Check(
            name,
            PROBLEM,
            f"notify-keyspace-events is {flags!r}{target.where(list(stuck))}, without "
            f"{KEYSPACE_FLAGS!r}, and CONFIG SET is refused: a deleted client key goes "
            "OFFLINE at its deadline instead of at once",
            f"CONFIG SET notify-keyspace-events {wanted} as an admin, and "
            f"notify-keyspace-events {wanted} in redis.conf",
        )
    if refused and target.cluster is None:
        # The servers' own probe: a key deleted under a subscription.
        if await keyspace_events_arrive(target.redis, target.settings):
            return Check(name, OK, "CONFIG is refused, but a probe key's del event arrived")
        return Check(
            name,
            PROBLEM,
            "CONFIG is refused and a probe key's del event did not arrive: a deleted "
            "client key goes OFFLINE at its deadline instead of at once",
            f"notify-keyspace-events {KEYSPACE_FLAGS} in redis.conf (or in the provider's "
            "parameter group)",
        )
    if refused:
        return Check(
            name,
            WARN,
            f"CONFIG is refused{target.where(refused)}: notify-keyspace-events cannot be "
            "read there, and presence counts its del events as missing",
            f"notify-keyspace-events {KEYSPACE_FLAGS} on every node",
        )
    if settable:
        node, flags = next(iter(settable.items()))
        wanted = wanted_flags(flags)
        return Check(
            name,
            WARN,
            f"notify-keyspace-events is {flags!r}{target.where(list(settable))}; presence "
            f"sets {wanted!r} itself at start (CONFIG SET is allowed)",
            f"notify-keyspace-events {wanted} in redis.conf, so that a restarted Redis has it",
        )
    return Check(name, OK, f"notify-keyspace-events {present!r} includes {KEYSPACE_FLAGS!r}")


async def _settable(target: Target, node: str, flags: str) -> bool:
    try:
        await target.on(node, "CONFIG", "SET", "notify-keyspace-events", flags)
    except ResponseError:
        return False
    return True


async def maxmemory_policy(target: Target) -> Check:
    name = "maxmemory-policy"
    found = dict(await _info(target, "memory"))
    evicting = [n for n, i in found.items() if i.get("maxmemory_policy") != "noeviction"]
    if not evicting:
        return Check(name, OK, "noeviction: a full Redis refuses writes instead of evicting keys")
    info = found[evicting[0]]
    limit = int(info.get("maxmemory", 0))
    bound = f"maxmemory {limit}" if limit else "maxmemory 0: nothing evicted until a limit is set"
    return Check(
        name,
        PROBLEM,
        f"{info.get('maxmemory_policy')}{target.where(evicting)} ({bound}): presence's "
        "keys carry TTLs, so volatile-* policies evict them first and allkeys-* any of them",
        "CONFIG SET maxmemory-policy noeviction (and maxmemory-policy noeviction in "
        "redis.conf): a full Redis then fails writes, which presence retries, instead of "
        "evicting an online key (a client gone) or a deadline index or stream (state lost)",
    )


async def clock(target: Target, now: Callable[[], float] = time.time) -> Check:
    """How far each primary's clock (TIME, the scripts' clock) is from this
    host's, which reads ``at``, last seen and webhooks' ``time_ms``."""
    measured = [(*await _skew(target, node, now), node) for node in target.primaries()]
    skew, error, node = max(measured, key=lambda m: abs(m[0]) - m[1])
    side = "ahead of" if skew >= 0 else "behind"
    detail = (
        f"Redis's clock{target.where([node])} is {abs(skew):.3f} s {side} this host's "
        f"(measured to {error:.3f} s)"
    )
    off = abs(skew) - error
    fix = "synchronise this host's and Redis's clocks (NTP: chrony or systemd-timesyncd)"
    if off > SKEW_PROBLEM:
        return Check(
            "clock",
            PROBLEM,
            f"{detail}: hosts reading at, last seen and webhooks' time_ms (Redis's clock) "
            f"are more than {SKEW_PROBLEM:g} s off, longer than a default TTL",
            fix,
        )
    if off > SKEW_WARN:
        return Check(
            "clock", WARN, f"{detail}: lag metrics and 'last seen ... ago' are off by it", fix
        )
    return Check("clock", OK, detail)


async def _skew(target: Target, node: str, now: Callable[[], float]) -> tuple[float, float]:
    """Redis's clock minus this host's, and the measurement's error (half a round trip)."""
    samples = []
    for _ in range(CLOCK_SAMPLES):
        before = now()
        seconds, micros = await target.on(node, "TIME")
        after = now()
        middle = (before + after) / 2
        samples.append((int(seconds) + int(micros) / 1e6 - middle, (after - before) / 2))
    return min(samples, key=lambda s: s[1])


async def _info(target: Target, section: str) -> list[tuple[str, dict[str, Any]]]:
    return [(node, await target.on(node, "INFO", section)) for node in target.primaries()]
