"""SSE load: child processes holding many raw asyncio connections, cheap enough
not to be what is measured (their CPU time is reported next to the server's).

Every connection counts ``data:`` lines. One in ``SAMPLE`` also matches each
line against ``pattern``, whose first group is a Unix time in ms carried in the
event (the benchmarks put it in the client id, ``b<ms>x<n>``), for latency.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import resource
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

SAMPLE = 10
DATA = b"data: "
#: Any event whose client id carries a time.
SENT = rb'"client":"b(\d+)x'


@dataclass
class Stats:
    events: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    cpu_seconds: float = 0.0


class _Sink(asyncio.Protocol):
    def __init__(
        self,
        request: bytes,
        stats: Stats,
        pattern: re.Pattern[bytes] | None,
        ready: asyncio.Future[None],
        skip_first: bool,
    ) -> None:
        self._request = request
        self._stats = stats
        self._pattern = pattern
        self._ready = ready
        self._skip_first = skip_first
        self._tail = b""
        self._in_snapshot = False
        self._line: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        buf = self._tail + data
        count = buf.count(DATA)
        self._tail = buf[-(len(DATA) - 1) :]
        if not self._ready.done():
            if self._skip_first:
                # presence: ready once its snapshot (no event; a large one with
                # many clients online) is all in, so nothing queues behind it.
                rest = buf
                if not self._in_snapshot:
                    at = buf.find(DATA)
                    if at < 0:
                        return
                    self._in_snapshot, count, rest = True, count - 1, buf[at:]
                if b"\n\n" not in rest:
                    self._stats.events += count
                    return
            elif b"\r\n\r\n" not in buf:  # nchan: ready once the headers are in
                return
            self._ready.set_result(None)
        self._stats.events += count
        if self._pattern is not None:
            self._match(data)

    def _match(self, data: bytes) -> None:
        """Latencies of the complete lines so far; joins a partial line only once."""
        now = time.time() * 1000
        parts = data.split(b"\n")
        if len(parts) == 1:
            self._line.append(data)
            return
        parts[0] = b"".join([*self._line, parts[0]])
        self._line = [parts.pop()]
        for line in parts:
            if line.startswith(DATA) and (found := self._pattern.search(line)):  # type: ignore[union-attr]
                self._stats.latencies_ms.append(now - int(found[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ready.done():
            self._ready.set_exception(ConnectionError("closed before it was ready"))


async def _hold(
    port: int, paths: list[str], pattern: bytes, skip_first: bool, control: Connection
) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    sinks: list[_Sink] = []
    slots = asyncio.Semaphore(200)
    compiled = re.compile(pattern)

    async def connect(n: int, path: str) -> None:
        ready: asyncio.Future[None] = loop.create_future()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        sampled = compiled if n % SAMPLE == 0 else None
        async with slots:
            try:
                _, sink = await loop.create_connection(
                    lambda: _Sink(request, stats, sampled, ready, skip_first), "127.0.0.1", port
                )
                sinks.append(sink)
                await asyncio.wait_for(ready, 120)
            except (OSError, TimeoutError, ConnectionError):
                stats.failed += 1

    await asyncio.gather(*(connect(n, p) for n, p in enumerate(paths)))
    control.send(("ready", stats.failed))
    while True:
        command = await loop.run_in_executor(None, control.recv)
        if command == "reset":
            stats.events, stats.latencies_ms = 0, []
            control.send("ok")
        elif command == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime
            control.send((stats.events, stats.latencies_ms, stats.failed, cpu))
        else:
            break
    for sink in sinks:
        if sink.transport is not None:
            sink.transport.close()
    control.send("closed")


def _main(
    port: int, paths: list[str], pattern: bytes, skip_first: bool, control: Connection
) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_hold(port, paths, pattern, skip_first, control))


class Load:
    """``processes`` child processes holding ``paths`` between them."""

    def __init__(
        self,
        port: int,
        paths: list[str],
        *,
        processes: int = 2,
        pattern: bytes = SENT,
        skip_first: bool = True,
    ) -> None:
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        context = multiprocessing.get_context("spawn")
        for i in range(processes):
            parent, child = context.Pipe()
            args = (port, paths[i::processes], pattern, skip_first, child)
            proc = context.Process(target=_main, args=args, daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)

    def ready(self) -> int:
        """Waits until every connection is ready; returns how many failed."""
        return sum(pipe.recv()[1] for pipe in self._pipes)

    def reset(self) -> None:
        for pipe in self._pipes:
            pipe.send("reset")
        for pipe in self._pipes:
            pipe.recv()

    def stats(self) -> Stats:
        total = Stats()
        for pipe in self._pipes:
            pipe.send("stats")
        for pipe in self._pipes:
            events, latencies, failed, cpu = pipe.recv()
            total.events += events
            total.latencies_ms += latencies
            total.failed += failed
            total.cpu_seconds += cpu
        return total

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.send("close")
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            pipe.recv()
            proc.join(10)
