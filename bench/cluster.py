"""Redis Cluster: heartbeat ingestion on 3 primaries against one standalone Redis,
how evenly the primaries share it, what that projects to, and failover.

``python -m bench.cluster [--clients N] [--rounds R]``

1. Ingestion, global: N clients, each heartbeated ``TICKS`` times (the first
   brings it online, the others refresh it), as raw XADDs to the heartbeat
   stream of its shard (``{<tag>}.heartbeat`` on the cluster, ``heartbeat``
   standalone), a tick's burst applied before the next is sent, by one
   ``presence serve``. Redis's CPU per heartbeat (utime + stime of each
   redis-server, the primaries summed) and presence's, cluster against
   standalone. The cluster has primaries only, no replicas: the standalone
   Redis has none either. Both sides run the same binary and flags. Beside
   it, what Redis and presence spend idle (``IDLE`` s before the load, to
   the nanosecond), and the ratio once that idle CPU is taken off.
2. Ingestion, rooms: each client in ``ROOMS_PER_CLIENT`` of ``ROOMS`` rooms.
   Standalone, a room heartbeat keeps its client online too: 3 lines a
   client a tick. On the cluster a room heartbeat counts for its room alone,
   on the room's shard, and the client's own heartbeat goes to the client's
   shard: 4 lines. Redis's CPU per membership heartbeat, both ways.
3. Spread over the primaries, after each run: keys (DBSIZE), memory
   (``used_memory``, and ``used_memory_dataset`` which leaves out client
   buffers, above the node's own when empty) and Redis CPU of each, as a
   fraction of their mean.
4. Projection: heartbeats one primary applies per second of its CPU, and
   from it the clients at a 5 s interval, and the memberships, that K
   primaries carry.
5. Failover: two presence servers on 3 primaries and 3 replicas
   (tests.topology.Cluster), M SSE clients spread over them; each round
   SIGKILLs one primary and times, from the kill: every surviving node
   reporting ``cluster_state:ok`` with the killed node's slots on its
   promoted replica, and ``GET /clients`` on both servers listing exactly
   the M clients; counted beside, the ``OFFLINE`` events (false ones: nobody
   left) and reset snapshots the clients got, and which clients the OFFLINEs
   named (on the killed primary's shards or not). The killed node is then
   restarted, rejoins as a replica, and the cluster is whole again before
   the next round.

Rounds alternate the order of the sides; medians over the rounds are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import redis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from presence.contract import CONSUMER_GROUP
from presence.shards import SLOTS, shard_of, shard_tags
from tests.support import RedisServer
from tests.topology import NODE_TIMEOUT_MS, Cluster, client, cluster_port, wait_for

from .failover import INTERVAL as FAILOVER_INTERVAL
from .failover import hold_stream, listed
from .procs import applied, metric, poll, presence_server
from .redis_load import resp, send_raw
from .stats import cpu_precise, cpu_seconds, header, write_results

SHARDS = 12
PRIMARIES = 3
#: Heartbeats of each client (or membership): the first brings it online.
TICKS = 3
ROOMS = 200
ROOMS_PER_CLIENT = 3
INTERVAL = 5.0
#: The numbers of primaries projected.
PROJECTED = (3, 6, 12)
#: Seconds of idle CPU measured before each ingestion run.
IDLE = 2.0
#: Seconds the failover rounds go on counting events once the cluster is whole again.
SETTLE = 3.0


@dataclass
class Topology:
    """Redis processes, and where each shard's heartbeat stream lives on them."""

    name: str
    servers: list[RedisServer]
    sharded: bool
    pids: list[int] = field(default_factory=list)
    #: Each shard's node, an index into ``servers``.
    node_of_shard: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for server in self.servers:
            with client(server.port) as r:
                self.pids.append(int(r.info("server")["process_id"]))
        if not self.sharded:
            self.node_of_shard = [0]
            return
        ranges = slot_owners(self.servers[0].port)
        ports = [s.port for s in self.servers]
        self.node_of_shard = [
            ports.index(next(p for low, high, p in ranges if low <= key_slot(tag.encode()) <= high))
            for tag in shard_tags(SHARDS)
        ]

    @property
    def url(self) -> str:
        return self.servers[0].url

    def shard(self, id: str) -> int:
        return shard_of(id, SHARDS) if self.sharded else 0

    def stream(self, shard: int) -> str:
        return f"{{{shard_tags(SHARDS)[shard]}}}.heartbeat" if self.sharded else "heartbeat"

    def streams_on(self, node: int) -> list[str]:
        return [self.stream(s) for s, n in enumerate(self.node_of_shard) if n == node]


def slot_owners(port: int) -> list[tuple[int, int, int]]:
    """(first slot, last slot, port) of each range a primary serves, as ``port`` sees it."""
    owners = []
    with client(port) as r:
        for address, node in r.cluster("nodes").items():
            if "master" in node["flags"] and "fail" not in node["flags"]:
                for low, high in node["slots"]:
                    owners.append((int(low), int(high), int(address.rsplit(":", 1)[1])))
    return owners


def whole(port: int, nodes: int, replicas: int) -> bool:
    """Whether the node on ``port`` sees every node, up, and the cluster ok."""
    try:
        with client(port) as r:
            state = r.cluster("info")["cluster_state"]
            known = r.cluster("nodes")
    except RedisError:
        return False
    flags = [str(n["flags"]) for n in known.values()]
    return (
        state == "ok"
        and len(known) == nodes
        and sum("slave" in f for f in flags) == replicas
        and not any("handshake" in f or "fail" in f for f in flags)
    )


@contextmanager
def standalone(tmp: Path) -> Iterator[Topology]:
    server = RedisServer(tmp, "--repl-diskless-sync-delay", "0")
    server.start()
    try:
        yield Topology("standalone", [server], sharded=False)
    finally:
        server.stop()


@contextmanager
def primaries_only(tmp: Path, count: int = PRIMARIES) -> Iterator[Topology]:
    """A cluster of ``count`` primaries and no replicas, slots split in
    contiguous ranges as ``redis-cli --cluster create`` (and tests.topology) does."""
    servers = []
    for i in range(count):
        folder = tmp / f"primary-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        server = RedisServer(
            folder,
            "--repl-diskless-sync-delay", "0",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        )  # fmt: skip
        server.port = cluster_port()
        server.url = f"redis://127.0.0.1:{server.port}/0"
        servers.append(server)
    try:
        for server in servers:
            server.start()
        for server in servers[1:]:
            with client(server.port) as r:
                r.execute_command("CLUSTER", "MEET", "127.0.0.1", servers[0].port)
        low = 0
        for i, server in enumerate(servers, start=1):
            high = round(i * SLOTS / count - 1)
            with client(server.port) as r:
                r.execute_command("CLUSTER", "ADDSLOTS", *range(low, high + 1))
            low = high + 1
        for server in servers:
            wait_for(partial(whole, server.port, count, 0), "the cluster to come up")
        yield Topology("cluster", servers, sharded=True)
    finally:
        for server in servers:
            server.stop()


# Ingestion ---------------------------------------------------------------------------


def memberships(clients: int) -> list[list[str]]:
    """Each client's rooms: ``ROOMS_PER_CLIENT`` of ``ROOMS``, drawn alike every run."""
    pick = random.Random(0)
    names = [f"room-{r}" for r in range(ROOMS)]
    return [pick.sample(names, ROOMS_PER_CLIENT) for _ in range(clients)]


def tick_load(top: Topology, kind: str, clients: int) -> list[list[bytes]]:
    """One tick's XADDs, one list per node, a client's heartbeats side by side as a
    publisher sends them."""
    per_node: list[list[bytes]] = [[] for _ in top.servers]

    def add(shard: int, name: str, room: str | None = None) -> None:
        words = [b"XADD", top.stream(shard).encode(), b"*", b"client", name.encode(),
                 b"server", b"ext"]  # fmt: skip
        if room is not None:
            words += [b"room", room.encode()]
        per_node[top.node_of_shard[shard]].append(resp(*words))

    rooms = memberships(clients) if kind == "rooms" else []
    for i in range(clients):
        name = f"c{i}"
        if kind == "global":
            add(top.shard(name), name)
            continue
        for room in rooms[i]:
            add(top.shard(room), name, room)
        if top.sharded:  # a room heartbeat counts for its room alone
            add(top.shard(name), name)
    return per_node


def groups_ready(top: Topology) -> bool:
    for node, server in enumerate(top.servers):
        with client(server.port) as r:
            for stream in top.streams_on(node):
                try:
                    if not any(g["name"] == CONSUMER_GROUP for g in r.xinfo_groups(stream)):
                        return False
                except ResponseError:  # no such stream yet
                    return False
    return True


def drained(top: Topology, conns: list[redis.Redis]) -> bool:
    """Whether every heartbeat stream's group has read and acknowledged all of it.

    Asked of Redis, not of presence: polling /metrics this often would cost
    the process measured."""
    for node, r in enumerate(conns):
        streams = top.streams_on(node)
        pipe = r.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_groups(stream)
            pipe.xinfo_stream(stream)
        replies = pipe.execute()
        for groups, stream_info in zip(replies[::2], replies[1::2], strict=True):
            group = next(g for g in groups if g["name"] == CONSUMER_GROUP)
            if group["pending"] or group["last-delivered-id"] != stream_info["last-generated-id"]:
                return False
    return True


def used_memory(port: int) -> tuple[int, int]:
    """``used_memory`` and ``used_memory_dataset`` (what is left once Redis's
    own overhead, client buffers among it, is taken off)."""
    with client(port) as r:
        info = r.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def ingest_run(top: Topology, kind: str, clients: int) -> dict[str, Any]:
    """One presence process applying ``TICKS`` ticks of heartbeats on ``top``."""
    per_node = tick_load(top, kind, clients)
    packed = [b"".join(commands) for commands in per_node]
    lines = [len(commands) for commands in per_node]
    heartbeats = sum(lines) * TICKS
    empty = [used_memory(s.port) for s in top.servers]
    conns = [redis.Redis(port=s.port, decode_responses=True) for s in top.servers]
    flags = ("--server-id", "bench", "--heartbeat-interval", str(INTERVAL))
    with presence_server(top.url, *flags) as (port, pid):
        poll(partial(groups_ready, top), timeout=30, what="the consumer groups")
        # What Redis and presence spend idle, to the nanosecond (cpu_precise): the
        # cluster's gossip and the per-shard loops cost with time, not per heartbeat.
        time.sleep(0.5)
        idle0 = [cpu_precise(p) for p in (*top.pids, pid)]
        time.sleep(IDLE)
        idle = [(cpu_precise(p) - c) / IDLE for p, c in zip((*top.pids, pid), idle0, strict=True)]
        redis0 = [cpu_seconds(p) for p in top.pids]
        cpu0, load0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
        for _ in range(TICKS):
            senders = [
                threading.Thread(target=send_raw, args=(s.port, data, count))
                for s, data, count in zip(top.servers, packed, lines, strict=True)
                if count
            ]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            poll(partial(drained, top, conns), timeout=120, what="every heartbeat applied",
                 every=0.01)  # fmt: skip
        seconds = time.monotonic() - t0
        load_cpu = time.process_time() - load0
        redis_cpu = [cpu_seconds(p) - c for p, c in zip(top.pids, redis0, strict=True)]
        cpu = cpu_seconds(pid) - cpu0
        keys = [int(r.dbsize()) for r in conns]
        used = [used_memory(s.port) for s in top.servers]
        memory = [u[0] - e[0] for u, e in zip(used, empty, strict=True)]
        dataset = [u[1] - e[1] for u, e in zip(used, empty, strict=True)]
        # Acknowledged by the scripts: counted once their replies are read.
        with suppress(RuntimeError):  # reported beside the others
            poll(applied(port, heartbeats), timeout=2, what="the applied count")
        counts = {
            name: int(metric(port, f"presence_heartbeats_{name}_total"))
            for name in ("applied", "stale", "malformed", "claimed", "retried")
        }
        offline = metric(port, re.escape('presence_transitions_published_total{status="OFFLINE"}'))
    for r in conns:
        r.close()
    membership_heartbeats = clients * ROOMS_PER_CLIENT * TICKS if kind == "rooms" else heartbeats
    return {
        "heartbeats": heartbeats,
        "membership_heartbeats": membership_heartbeats,
        "heartbeats_per_node": [n * TICKS for n in lines],
        "seconds": round(seconds, 2),
        "applied_per_s": round(heartbeats / seconds),
        "redis_cpu_s": round(sum(redis_cpu), 3),
        "redis_cpu_s_per_node": [round(c, 3) for c in redis_cpu],
        "redis_cpu_us_per_heartbeat": round(sum(redis_cpu) / heartbeats * 1e6, 2),
        "redis_cpu_us_per_membership": round(sum(redis_cpu) / membership_heartbeats * 1e6, 2),
        "presence_cpu_s": round(cpu, 2),
        "presence_cpu_us_per_heartbeat": round(cpu / heartbeats * 1e6, 2),
        "presence_cpu_us_per_membership": round(cpu / membership_heartbeats * 1e6, 2),
        "load_cpu_s": round(load_cpu, 2),
        "idle_redis_cpu_per_s": round(sum(idle[:-1]), 4),
        "idle_presence_cpu_per_s": round(idle[-1], 4),
        # Redis's CPU per membership heartbeat once its idle CPU over the run is taken off.
        "redis_cpu_us_per_membership_less_idle": round(
            (sum(redis_cpu) - sum(idle[:-1]) * seconds) / membership_heartbeats * 1e6, 2
        ),
        "keys_per_node": keys,
        "memory_bytes_per_node": memory,
        "dataset_bytes_per_node": dataset,
        "stale": counts["stale"],
        "counted": counts,
        "offline_published": int(offline),
    }


def fractions(values: list[float]) -> list[float]:
    mean = statistics.mean(values)
    return [round(v / mean, 3) for v in values]


def spread(run: dict[str, Any]) -> dict[str, list[float]]:
    return {
        "keys": fractions(run["keys_per_node"]),
        "memory": fractions(run["memory_bytes_per_node"]),
        "dataset": fractions(run["dataset_bytes_per_node"]),
        "redis_cpu": fractions(run["redis_cpu_s_per_node"]),
        "heartbeats": fractions(run["heartbeats_per_node"]),
    }


def bench_ingest(clients: int, rounds: int) -> dict[str, Any]:
    found: dict[str, dict[str, list[dict[str, Any]]]] = {
        kind: {"standalone": [], "cluster": []} for kind in ("global", "rooms")
    }
    for n in range(rounds):
        for kind in ("global", "rooms"):
            order = ("standalone", "cluster") if n % 2 == 0 else ("cluster", "standalone")
            for side in order:
                with tempfile.TemporaryDirectory() as tmp:
                    start = standalone if side == "standalone" else primaries_only
                    with start(Path(tmp)) as top:
                        found[kind][side].append(ingest_run(top, kind, clients))
                run = found[kind][side][-1]
                print(
                    f"  round {n + 1}/{rounds} {kind:6} {side:10}: {run['heartbeats']:,} lines "
                    f"in {run['seconds']} s, Redis {run['redis_cpu_us_per_membership']} µs per "
                    f"{'membership ' if kind == 'rooms' else ''}heartbeat, presence "
                    f"{run['presence_cpu_us_per_heartbeat']} µs per line",
                    file=sys.stderr,
                )
    results: dict[str, Any] = {}
    for kind, sides in found.items():
        pairs = list(zip(sides["standalone"], sides["cluster"], strict=True))
        per = "redis_cpu_us_per_membership"
        ratios = [c[per] / s[per] for s, c in pairs]
        less = "redis_cpu_us_per_membership_less_idle"
        less_idle = [c[less] / s[less] for s, c in pairs]
        presence_ratios = [
            c["presence_cpu_us_per_membership"] / s["presence_cpu_us_per_membership"]
            for s, c in pairs
        ]
        summary: dict[str, Any] = {}
        for side, runs in sides.items():
            summary[side] = {
                key: statistics.median(r[key] for r in runs)
                for key in ("redis_cpu_us_per_heartbeat", "redis_cpu_us_per_membership",
                            "presence_cpu_us_per_heartbeat", "presence_cpu_us_per_membership",
                            "applied_per_s", "seconds", "load_cpu_s", "presence_cpu_s",
                            "redis_cpu_s", "idle_redis_cpu_per_s", "idle_presence_cpu_per_s")
            } | {"heartbeats": runs[0]["heartbeats"], "rounds": runs}  # fmt: skip
        results[kind] = summary | {
            "redis_ratio": round(statistics.median(ratios), 3),
            "redis_ratios": [round(x, 3) for x in ratios],
            "redis_ratio_less_idle": round(statistics.median(less_idle), 3),
            "redis_ratios_less_idle": [round(x, 3) for x in less_idle],
            "presence_ratio": round(statistics.median(presence_ratios), 3),
            "presence_ratios": [round(x, 3) for x in presence_ratios],
            "spread": [spread(r) for r in sides["cluster"]],
        }
    return results


def projection(ingest: dict[str, Any]) -> dict[str, Any]:
    """What K primaries carry, from the cluster's rounds: the heartbeats a primary
    applies per second of its CPU, times K, times the interval, divided by how
    much more than the mean the busiest primary worked (the first to run out of
    its core)."""
    out: dict[str, Any] = {"interval_s": INTERVAL}
    for kind, unit in (("global", "heartbeats"), ("rooms", "membership_heartbeats")):
        runs = ingest[kind]["cluster"]["rounds"]
        rate = statistics.median(r[unit] / r["redis_cpu_s"] for r in runs)
        busiest = statistics.median(max(fractions(r["redis_cpu_s_per_node"])) for r in runs)
        presence_us = statistics.median(r["presence_cpu_s"] / r[unit] * 1e6 for r in runs)
        out[kind] = {
            "per_primary_per_cpu_s": round(rate),
            "busiest_primary_cpu_of_mean": busiest,
            "presence_cpu_us_each": round(presence_us, 2),
            "carried": {
                str(k): {
                    "full_core": round(k * rate * INTERVAL / busiest),
                    "half_core": round(k * rate * INTERVAL / busiest / 2),
                    "presence_cores_at_full": round(k * rate / busiest * presence_us / 1e6, 1),
                }
                for k in PROJECTED
            },
        }
    return out


# Failover ----------------------------------------------------------------------------


def serving(port: int, slot: int) -> str | None:
    """The id of the primary serving ``slot``, as the node on ``port`` sees it,
    when that node also reports the cluster ok."""
    with client(port) as r:
        if r.cluster("info")["cluster_state"] != "ok":
            return None
        for node in r.cluster("nodes").values():
            flags = str(node["flags"])
            if "master" in flags and "fail" not in flags:
                for low, high in node["slots"]:
                    if int(low) <= slot <= int(high):
                        return str(node["node_id"])
    return None


def promoted(survivors: list[RedisServer], replica: str, slot: int) -> bool:
    try:
        return all(serving(s.port, slot) == replica for s in survivors)
    except RedisError:
        return False


def replica_of(cluster: Cluster, primary: str) -> str:
    with client(cluster.primaries()[0].port) as r:
        for node in r.cluster("nodes").values():
            if node["master_id"] == primary:
                return str(node["node_id"])
    raise RuntimeError(f"no replica of {primary}")


async def listings(session: aiohttp.ClientSession, ports: list[int], want: set[str]) -> bool:
    return all([await listed(session, p) == want for p in ports])


async def watch(session: aiohttp.ClientSession, port: int, name: str, offline: set[str]) -> None:
    """Hold ``name``'s stream and note every client an ``OFFLINE`` named."""
    url = f"http://127.0.0.1:{port}/clients/{name}/events"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    while True:
        try:
            async with session.get(url, timeout=timeout) as response:
                async for line in response.content:
                    if line.startswith(b"data: ") and b'"OFFLINE"' in line:
                        offline.add(json.loads(line[6:])["client"])
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.5)


class Promotion(threading.Thread):
    """Polls the surviving nodes, off the event loop, until every one of them
    reports the cluster ok with ``slot`` on ``replica``; ``at`` is when."""

    def __init__(self, survivors: list[RedisServer], replica: str, slot: int) -> None:
        super().__init__(daemon=True)
        self._args = (survivors, replica, slot)
        self.started_at = time.monotonic()
        self.at: float | None = None

    def run(self) -> None:
        while time.monotonic() - self.started_at < 60:
            if promoted(*self._args):
                self.at = time.monotonic()
                return
            time.sleep(0.02)


async def kill_one(
    cluster: Cluster,
    session: aiohttp.ClientSession,
    ports: list[int],
    want: set[str],
    seen: dict[str, int],
    offline: set[str],
    index: int,
) -> dict[str, Any]:
    # Each round another third of the slots: the primary serving it now.
    owners = sorted(slot_owners(cluster.primaries()[0].port))
    port = owners[index % len(owners)][2]
    victim = next(n for n in cluster.nodes if n.port == port)
    victim_id = cluster.node_id(victim)
    replica = replica_of(cluster, victim_id)
    ranges = [(low, high) for low, high, p in slot_owners(victim.port) if p == victim.port]
    down = {
        i for i, tag in enumerate(shard_tags(SHARDS))
        if any(low <= key_slot(tag.encode()) <= high for low, high in ranges)
    }  # fmt: skip
    survivors = [n for n in cluster.nodes if n is not victim]
    deadline = time.monotonic() + 30
    while not await listings(session, ports, want):
        if time.monotonic() > deadline:
            raise RuntimeError("the clients were not all listed before the kill")
        await asyncio.sleep(0.05)
    seen.update(offline=0, resets=0)
    offline.clear()
    watcher = Promotion(survivors, replica, ranges[0][0])
    killed = watcher.started_at = time.monotonic()
    victim.stop()  # SIGKILL
    watcher.start()
    true_again_s = None
    wrong: list[float] = []
    slowest = 0.0
    while true_again_s is None:
        started = time.monotonic() - killed
        after_promotion = watcher.at is not None
        right = await listings(session, ports, want)
        slowest = max(slowest, time.monotonic() - killed - started)
        if right:
            if after_promotion:
                true_again_s = started
        else:
            wrong.append(started)
        if started > 60:
            raise RuntimeError("the cluster or presence did not recover within 60 s")
        await asyncio.sleep(0.02)
    assert watcher.at is not None
    promoted_s = watcher.at - killed
    offline_then, resets_then = seen["offline"], seen["resets"]
    restarted = time.monotonic()
    await asyncio.to_thread(victim.start)
    for node in cluster.nodes:
        await asyncio.to_thread(
            wait_for, partial(whole, node.port, len(cluster.nodes), PRIMARIES), "a whole cluster"
        )
    rejoined_s = time.monotonic() - restarted
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        if not await listings(session, ports, want):
            wrong.append(time.monotonic() - killed)
        await asyncio.sleep(0.05)
    return {
        "killed_port": victim.port,
        "killed_shards": sorted(down),
        "promoted_s": round(promoted_s, 3),
        "true_again_s": round(true_again_s, 3),
        "after_promotion_s": round(true_again_s - promoted_s, 3),
        "listing_wrong_from_s": round(wrong[0], 3) if wrong else None,
        "listing_wrong_until_s": round(wrong[-1], 3) if wrong else None,
        "slowest_listings_s": round(slowest, 3),
        "false_offline_events": offline_then,
        "reset_snapshots": resets_then,
        "rejoined_s": round(rejoined_s, 3),
        "false_offline_events_by_settled": seen["offline"],
        "reset_snapshots_by_settled": seen["resets"],
        "clients_gone_offline": len(offline),
        "of_them_on_killed_shards": sum(shard_of(c, SHARDS) in down for c in offline),
        "clients_on_killed_shards": sum(shard_of(c, SHARDS) in down for c in want),
    }


async def failovers(
    cluster: Cluster, ports: list[int], clients: int, rounds: int
) -> list[dict[str, Any]]:
    names = [f"c{i}" for i in range(clients)]
    watchers = [f"watcher-{i}" for i in range(len(ports))]
    want = {*names, *watchers}
    seen = {"offline": 0, "resets": 0}
    offline: set[str] = set()
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [
            asyncio.create_task(hold_stream(session, ports[i % len(ports)], name, seen))
            for i, name in enumerate(names)
        ] + [
            asyncio.create_task(watch(session, port, name, offline))
            for port, name in zip(ports, watchers, strict=True)
        ]
        deadline = time.monotonic() + 60
        while not await listings(session, ports, want):
            if time.monotonic() > deadline:
                raise RuntimeError("the clients did not come online within 60 s")
            await asyncio.sleep(0.05)
        for n in range(rounds):
            results.append(await kill_one(cluster, session, ports, want, seen, offline, n))
            print(f"  failover {n + 1}/{rounds}: {results[-1]}", file=sys.stderr)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results


def bench_failover(clients: int, rounds: int, interval: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), primaries=PRIMARIES)
        try:
            cluster.start()
            flags = ("--heartbeat-interval", str(interval))
            with (
                presence_server(cluster.url, "--server-id", "node-1", *flags) as (one, _),
                presence_server(cluster.url, "--server-id", "node-2", *flags) as (two, _),
            ):
                results = asyncio.run(failovers(cluster, [one, two], clients, rounds))
        finally:
            cluster.stop()
    return {
        "clients": clients,
        "primaries": PRIMARIES,
        "replicas": PRIMARIES,
        "heartbeat_interval_s": interval,
        "node_timeout_ms": NODE_TIMEOUT_MS,
        "rounds": results,
        "median_promoted_s": statistics.median(r["promoted_s"] for r in results),
        "median_true_again_s": statistics.median(r["true_again_s"] for r in results),
    }


# Report ------------------------------------------------------------------------------


def worst(spreads: list[dict[str, list[float]]], what: str) -> float:
    return max(abs(f - 1) for s in spreads for f in s[what])


def report(results: dict[str, Any]) -> None:
    ingest = results["ingest"]
    g, m = ingest["global"], ingest["rooms"]
    print(
        f"Cluster of {PRIMARIES} primaries ({SHARDS} shards) against one Redis, "
        f"{results['clients']:,} clients x {TICKS} ticks, median of {results['rounds']}:"
    )
    print(
        f"  global: Redis CPU/heartbeat {g['cluster']['redis_cpu_us_per_heartbeat']:.2f} µs "
        f"(3 primaries) vs {g['standalone']['redis_cpu_us_per_heartbeat']:.2f} µs: ratio "
        f"{g['redis_ratio']:.3f} {g['redis_ratios']} (goal <= 1.3); presence "
        f"{g['cluster']['presence_cpu_us_per_heartbeat']:.2f} vs "
        f"{g['standalone']['presence_cpu_us_per_heartbeat']:.2f} µs, ratio "
        f"{g['presence_ratio']:.3f}"
    )
    print(
        f"  rooms ({ROOMS_PER_CLIENT} of {ROOMS} a client): Redis CPU/membership heartbeat "
        f"{m['cluster']['redis_cpu_us_per_membership']:.2f} µs vs "
        f"{m['standalone']['redis_cpu_us_per_membership']:.2f} µs: ratio {m['redis_ratio']:.3f} "
        f"{m['redis_ratios']}; presence {m['cluster']['presence_cpu_us_per_membership']:.2f} vs "
        f"{m['standalone']['presence_cpu_us_per_membership']:.2f} µs, ratio "
        f"{m['presence_ratio']:.3f}"
    )
    for kind in ("global", "rooms"):
        k = ingest[kind]
        print(
            f"    {kind}, idle CPU taken off: ratio {k['redis_ratio_less_idle']:.3f} "
            f"{k['redis_ratios_less_idle']}; idle Redis "
            f"{k['cluster']['idle_redis_cpu_per_s']:.1%} of a core (3 primaries) vs "
            f"{k['standalone']['idle_redis_cpu_per_s']:.1%}, idle presence "
            f"{k['cluster']['idle_presence_cpu_per_s']:.1%} vs "
            f"{k['standalone']['idle_presence_cpu_per_s']:.1%}; load generator "
            f"{k['cluster']['load_cpu_s']} s vs {k['standalone']['load_cpu_s']} s, presence "
            f"{k['cluster']['presence_cpu_s']} s vs {k['standalone']['presence_cpu_s']} s"
        )
    print(
        f"    the cluster's figure includes the client's own heartbeat: standalone a room "
        f"heartbeat keeps its client online, on the cluster it counts for its room alone, "
        f"so each client adds 1 line on its own shard to its {ROOMS_PER_CLIENT} "
        f"({ROOMS_PER_CLIENT + 1} lines a tick against {ROOMS_PER_CLIENT})"
    )
    odd = {
        f"{kind} {side}": (sum(r["stale"] for r in runs), sum(r["offline_published"] for r in runs))
        for kind in ("global", "rooms")
        for side, runs in ((s, ingest[kind][s]["rounds"]) for s in ("standalone", "cluster"))
    }
    print(f"  stale heartbeats and OFFLINEs published during the runs (should be 0): {odd}")
    short = {
        f"{kind} {side}": [r["heartbeats"] - r["counted"]["applied"] for r in runs]
        for kind in ("global", "rooms")
        for side, runs in ((s, ingest[kind][s]["rounds"]) for s in ("standalone", "cluster"))
    }
    print(f"  heartbeats applied in Redis but not in presence_heartbeats_applied_total: {short}")
    for kind in ("global", "rooms"):
        spreads = ingest[kind]["spread"]
        mid = spreads[len(spreads) // 2]
        print(
            f"  spread after {kind} (fractions of the mean, round {len(spreads) // 2 + 1}; "
            f"worst of all rounds):"
        )
        for what in ("keys", "memory", "dataset", "redis_cpu", "heartbeats"):
            print(f"    {what:10} {mid[what]}  worst ±{worst(spreads, what):.1%}")
    p = results["projection"]
    print(f"  projection ({INTERVAL:g} s interval, one core per primary):")
    for kind, what in (("global", "clients"), ("rooms", "memberships")):
        figures = p[kind]
        carried = ", ".join(
            f"{k} primaries {c['full_core']:,} ({c['half_core']:,} at half a core; presence "
            f"needs {c['presence_cores_at_full']} cores)"
            for k, c in figures["carried"].items()
        )
        print(
            f"    {kind}: {figures['per_primary_per_cpu_s']:,} {what[:-1]} heartbeats per "
            f"CPU-second of a primary, the busiest at {figures['busiest_primary_cpu_of_mean']}"
            f" x the mean: {what} carried: {carried}"
        )
    print(
        "    why: Redis runs every script on one thread, so a primary is worth one core;\n"
        f"    the {SHARDS} shards' tags sit in the middle of {SHARDS} equal slot ranges, so "
        "3, 6 or 12 primaries hold 4, 2 or 1 each\n"
        "    (beyond 12 primaries, more shards); a membership costs its room's line plus, "
        f"shared by the client's {ROOMS_PER_CLIENT} rooms, the client's own line on\n"
        "    another shard (a separate call); replicas, absent here, add the replication "
        "of each write to a primary's work."
    )
    f = results["failover"]
    print(
        f"  failover ({f['clients']} clients on 2 servers, 3 primaries + 3 replicas, node "
        f"timeout {f['node_timeout_ms']} ms, interval {f['heartbeat_interval_s']:g} s): median "
        f"promoted {f['median_promoted_s']:.3f} s, /clients true {f['median_true_again_s']:.3f} s"
    )
    for r in f["rounds"]:
        print(
            f"    promoted {r['promoted_s']:.3f} s, /clients true {r['true_again_s']:.3f} s "
            f"(wrong from {r['listing_wrong_from_s']} to {r['listing_wrong_until_s']}); false "
            f"OFFLINE {r['false_offline_events']} (once settled "
            f"{r['false_offline_events_by_settled']}), resets {r['reset_snapshots']}; "
            f"rejoined in {r['rejoined_s']:.3f} s; {r['clients_gone_offline']} clients went "
            f"OFFLINE, {r['of_them_on_killed_shards']} of them on the killed primary's shards "
            f"{r['killed_shards']} (which hold {r['clients_on_killed_shards']})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--clients", type=int, default=20_000, metavar="N")
    parser.add_argument("--rounds", type=int, default=3, metavar="R")
    parser.add_argument("--failover-clients", type=int, default=300, metavar="M")
    parser.add_argument(
        "--failover-interval", type=float, default=FAILOVER_INTERVAL, metavar="SECONDS",
        help=f"the servers' heartbeat interval in the failover rounds (default "
        f"{FAILOVER_INTERVAL:g}, as bench.failover's)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.time()
    command = "python -m bench.cluster " + " ".join(argv if argv is not None else sys.argv[1:])
    results = header("cluster", command.strip(), started) | {
        "clients": args.clients,
        "rounds": args.rounds,
        "ticks": TICKS,
        "shards": SHARDS,
        "primaries": PRIMARIES,
        "rooms": ROOMS,
        "rooms_per_client": ROOMS_PER_CLIENT,
        "heartbeat_interval_s": INTERVAL,
    }
    results["ingest"] = bench_ingest(args.clients, args.rounds)
    results["projection"] = projection(results["ingest"])
    results["failover"] = bench_failover(args.failover_clients, args.rounds, args.failover_interval)
    results["seconds"] = round(time.time() - started, 1)
    report(results)
    out = write_results(results)
    print(f"wrote {out} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
