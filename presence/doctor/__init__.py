"""``presence doctor``: one Redis deployment checked against what presence
needs, before a server starts on it.

Each check asks Redis, on every primary where configuration is per node, and
returns a ``Check``; a check Redis refuses to answer is a warning of its own,
never the end of the others. Only a Redis that cannot be reached stops the
whole run (``RedisUnavailable``, ``RedisMisconfigured``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.exceptions import RedisClusterException, ResponseError

from ..errors import RedisUnavailable
from ..redis_client import REDIS_FAILURES
from ..settings import Settings
from . import server, streams, topology
from .acl import acl
from .report import OK, PROBLEM, WARN, Check, Report
from .streams import Thresholds
from .target import connect

__all__ = ["OK", "PROBLEM", "WARN", "Check", "Report", "Thresholds", "run_doctor"]


async def run_doctor(
    settings: Settings, thresholds: Thresholds | None = None, *, acl_user: str | None = None
) -> Report:
    """Check ``settings.redis_url`` (with its namespace, shards and stream caps).

    ``acl_user``: the ACL user whose permissions are checked, when the URL
    is an admin's (default: the URL's own user).
    """
    limits = thresholds or Thresholds()
    target = await connect(settings)
    plan: list[tuple[str, Callable[[], Awaitable[Check | list[Check]]]]] = [
        ("mode", lambda: server.mode(target)),
        ("version", lambda: server.version(target)),
        ("keyspace-events", lambda: server.keyspace_events(target)),
        ("maxmemory-policy", lambda: server.maxmemory_policy(target)),
        ("acl", lambda: acl(target, acl_user)),
        ("clock", lambda: server.clock(target)),
        ("streams", lambda: streams.streams(target)),
        ("pending", lambda: streams.pending(target, limits)),
        ("consumers", lambda: streams.consumers(target, limits)),
    ]
    if target.mode == "cluster":
        plan += [
            ("shards", lambda: topology.shards(target)),
            ("replicas", lambda: topology.cluster_replicas(target)),
        ]
    elif target.mode == "sentinel":
        plan.append(("sentinel-quorum", lambda: topology.sentinel(target)))
    found: list[Check] = []
    try:
        for name, check in plan:
            found += await _run(name, check)
    finally:
        await target.aclose()
    return Report(settings.masked_redis_url, target.mode, tuple(found))


async def _run(name: str, check: Callable[[], Awaitable[Check | list[Check]]]) -> list[Check]:
    try:
        result = await check()
    except ResponseError as exc:
        # Refused by Redis (a permission, a disabled command): this check alone.
        return [
            Check(
                name,
                WARN,
                f"not checked: Redis refused it: {exc}",
                "run the doctor as a user allowed it (an admin's --redis-url, with "
                "--acl-user for presence's user)",
            )
        ]
    except (*REDIS_FAILURES, RedisClusterException) as exc:
        raise RedisUnavailable(f"lost Redis during the {name} check: {exc}") from None
    return result if isinstance(result, list) else [result]
