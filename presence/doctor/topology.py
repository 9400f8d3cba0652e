"""Checks of the mode's own shape: a cluster's shards over its primaries and
their replicas; the sentinels' quorum and the primary's replicas."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from ..entries import text
from ..redis_client import REDIS_FAILURES, SOCKET_TIMEOUT
from ..sentinel_url import parse_sentinel_url
from ..shards import shard_tags
from .report import OK, PROBLEM, WARN, Check
from .target import Target

#: A primary serving more than this many times its share of the shards is reported.
HEAVY = 1.5
#: Fewer sentinels than this cannot lose one and still authorise a failover.
SENTINELS = 3


async def shards(target: Target) -> Check:
    """The shard count the servers recorded, and where each shard's tag lands."""
    cluster = target.cluster
    assert cluster is not None
    settings = target.settings
    key = f"{settings.namespace}shards"
    recorded = await target.redis.get(key)
    if recorded is not None and not text(recorded).isdigit():
        return Check(
            "shards",
            PROBLEM,
            f"{key} holds {text(recorded)!r}, not a shard count: no server starts on it",
            f"DEL {key} (the first server to start records its --shards again)",
        )
    if recorded is not None and int(recorded) != settings.shards:
        return Check(
            "shards",
            PROBLEM,
            f"the servers on this cluster use {int(recorded)} shards ({key}), not "
            f"{settings.shards}: a server given {settings.shards} refuses to start",
            f"start every server (and the doctor) with --shards {int(recorded)}",
        )
    served: dict[str, int] = dict.fromkeys(target.primaries(), 0)
    for tag in shard_tags(settings.shards):
        # The slot of the tag (CLUSTER KEYSLOT), then the primary serving it.
        node = cluster.get_node_from_key(f"{{{tag}}}")
        if node is not None and node.name in served:
            served[node.name] += 1
    share = settings.shards / len(served)
    spread = ", ".join(f"{node} {count}" for node, count in served.items())
    detail = f"{settings.shards} shards over {len(served)} primaries: {spread}"
    idle = [n for n, count in served.items() if not count]
    heavy = [n for n, count in served.items() if count > HEAVY * share and count - share >= 1]
    if settings.shards < len(served):
        return Check(
            "shards",
            WARN,
            f"{detail}: fewer shards than primaries, so some primaries serve none",
            "choose --shards as a multiple of the primaries when starting a new population "
            "(the number of a running one cannot change)",
        )
    if idle or heavy:
        which = ", ".join(f"{n} serves none" for n in idle) or ", ".join(
            f"{n} serves {served[n]}, more than {HEAVY:g} times its share" for n in heavy
        )
        return Check(
            "shards",
            WARN,
            f"{detail}: {which}",
            "give each primary one contiguous, equal range of slots "
            "(redis-cli --cluster rebalance <node>)",
        )
    note = "" if recorded is not None else f" ({key} not recorded yet: the first server does)"
    return Check("shards", OK, detail + note)


async def cluster_replicas(target: Target) -> Check:
    replies = await target.on_primaries("INFO", "replication")
    alone = [n for n, info in replies.items() if not int(info.get("connected_slaves", 0))]
    counts = ", ".join(f"{n} {int(i.get('connected_slaves', 0))}" for n, i in replies.items())
    if alone:
        return Check(
            "replicas",
            WARN,
            f"replicas per primary: {counts}: a primary without one takes its shards down "
            "with it until it is back",
            "give every primary a replica (CLUSTER REPLICATE <primary id> on a new node)",
        )
    return Check("replicas", OK, f"replicas per primary: {counts}")


async def sentinel(target: Target) -> list[Check]:
    """The sentinels' view of the primary: quorum, sentinels, replicas."""
    url = parse_sentinel_url(target.settings.redis_url)
    state: dict[str, Any] | None = None
    replicas: list[dict[str, Any]] = []
    agreed: str | None = None
    silent: list[str] = []
    for host, port in url.sentinels:
        client = aioredis.Redis(
            host=host,
            port=port,
            password=url.sentinel_password,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        try:
            found: Any = await client.sentinel_master(url.service)
            if state is None:
                state = found
                replicas = list(await client.sentinel_slaves(url.service))
                try:
                    await client.sentinel_ckquorum(url.service)
                except REDIS_FAILURES as exc:
                    agreed = str(exc)
        except REDIS_FAILURES:
            silent.append(f"{host}:{port}")
        finally:
            await client.aclose()
    if state is None:
        return [
            Check(
                "sentinel-quorum",
                PROBLEM,
                f"no sentinel answered SENTINEL MASTER {url.service}",
                "check the sentinels' addresses and the service name in the URL",
            )
        ]
    return [_quorum(url.service, state, agreed, silent), _replicas(state, replicas)]


def _quorum(service: str, state: dict[str, Any], agreed: str | None, silent: list[str]) -> Check:
    quorum = int(state.get("quorum", 0))
    known = int(state.get("num-other-sentinels", 0)) + 1
    detail = f"{known} sentinels watch {service}, quorum {quorum}"
    if known < quorum:
        return Check(
            "sentinel-quorum",
            PROBLEM,
            f"{detail}: fewer sentinels than the quorum, so no failover can start",
            f"start more sentinels, or SENTINEL SET {service} quorum {known // 2 + 1} on each",
        )
    if agreed is not None:
        return Check(
            "sentinel-quorum",
            PROBLEM,
            f"{detail}; SENTINEL CKQUORUM {service}: {agreed}",
            "start the sentinels that are down: a failover needs the quorum to agree and "
            "a majority of all sentinels to authorise it",
        )
    if silent or known < SENTINELS:
        why = (
            f"{', '.join(silent)} did not answer"
            if silent
            else f"fewer than {SENTINELS}: losing one host may leave no majority to fail over"
        )
        return Check(
            "sentinel-quorum",
            WARN,
            f"{detail}; {why}",
            f"run at least {SENTINELS} sentinels on separate hosts, all listed in the URL",
        )
    return Check("sentinel-quorum", OK, f"{detail}; SENTINEL CKQUORUM {service}: OK")


def _replicas(state: dict[str, Any], replicas: list[dict[str, Any]]) -> Check:
    healthy = [r for r in replicas if not _down(r)]
    detail = f"{len(healthy)} of {len(replicas)} replicas up"
    if not healthy:
        return Check(
            "replicas",
            PROBLEM,
            f"{detail}: a failover has no replica to promote",
            f"start a replica with replicaof {state.get('ip')} {state.get('port')} in its "
            "redis.conf",
        )
    return Check("replicas", OK, detail)


def _down(replica: dict[str, Any]) -> bool:
    flags = str(replica.get("flags", ""))
    return (
        any(replica.get(f) for f in ("is_sdown", "is_odown", "is_disconnected"))
        or "down" in flags
        or "disconnected" in flags
    )
