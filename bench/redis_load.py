"""Load on Redis: pre-encoded commands written raw, so that the load costs next to
nothing beside the process measured."""

from __future__ import annotations

import multiprocessing
import random
import socket
import time
from typing import Any


def resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _publish(
    redis_url: str, clients: int, interval: float, stop_after: float, key_ttl_ms: int | None
) -> None:
    """Heartbeats for ``c0..c<clients>``, each once per ``interval``, in spread chunks;
    or, given ``key_ttl_ms``, their keys set directly with that TTL instead.

    The commands are encoded once and written raw: the publisher must cost next
    to nothing, or it, not presence, would be what is measured on two cores.
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    sock = socket.create_connection(("127.0.0.1", port))
    chunk = 1000
    chunks = []
    for start in range(0, clients, chunk):
        names = [f"c{n}".encode() for n in range(start, min(clients, start + chunk))]
        if key_ttl_ms is None:
            commands = [
                resp(b"XADD", b"heartbeat", b"MAXLEN", b"~", b"400000", b"*", b"client", name,
                     b"server", b"ext")
                for name in names
            ]  # fmt: skip
        else:
            px = str(key_ttl_ms).encode()
            commands = [
                resp(b"SET", b"online.clients." + name, b"ext", b"PX", px) for name in names
            ]
        chunks.append((b"".join(commands), len(names)))
    end = time.monotonic() + stop_after
    while time.monotonic() < end:
        start_at = time.monotonic()
        for i, (packed, count) in enumerate(chunks):
            sock.sendall(packed)
            read_replies(sock, count, lines=2 if key_ttl_ms is None else 1)
            pause = start_at + (i + 1) * interval / len(chunks) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    sock.close()


def publisher(
    redis_url: str, clients: int, interval: float, seconds: float, key_ttl_ms: int | None = None
) -> Any:
    """A process publishing :func:`_publish`'s load for ``seconds``."""
    context = multiprocessing.get_context("spawn")
    args = (redis_url, clients, interval, seconds, key_ttl_ms)
    proc = context.Process(target=_publish, args=args)
    proc.start()
    return proc


def burst_commands(heartbeats: int, clients: int) -> bytes:
    """XADDs of ``heartbeats`` heartbeats of random clients among ``clients`` ids,
    drawn as the ceiling draws them (``c`` and 12 digits)."""
    draw = random.Random(clients).randrange
    return b"".join(
        resp(b"XADD", b"heartbeat", b"*", b"client", b"c%012d" % draw(clients),
             b"server", b"ext")
        for _ in range(heartbeats)
    )  # fmt: skip


def send_raw(port: int, packed: bytes, replies: int) -> None:
    """Writes pre-encoded XADDs, then reads their ``replies``."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(packed)
        read_replies(sock, replies)


def read_replies(sock: socket.socket, count: int, lines: int = 2) -> None:
    """Reads ``count`` replies of so many ``lines`` each (XADD's: "$<n>" and the id)."""
    read_until(sock, b"\n", lines * count)


def read_until(sock: socket.socket, token: bytes, count: int) -> None:
    """Reads until ``token`` has come ``count`` times, wherever reads split it."""
    sock.settimeout(60)  # a reply miscounted fails the run instead of hanging it
    tail, seen = b"", 0
    while seen < count:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError(f"connection closed after {seen} of {count} {token!r}")
        # A tail shorter than the token cannot hold one already counted.
        data = tail + chunk
        seen += data.count(token)
        tail = data[len(data) - len(token) + 1 :]
