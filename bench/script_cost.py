"""Redis's cost of the heartbeat script: a membership heartbeat against a global one.

Both go through the consumer's own call (``Transitions.heartbeat_command``,
``SCRIPT_BATCH`` lines a call), on lines built as the consumer builds them
(``entries.heartbeat_lines``) from entries the publisher's script added: N
global heartbeats of N clients, and N membership heartbeats of N / 5 clients
in 5 rooms of 50 each, a client's memberships side by side (bench/held.py's
rooms, in the publisher's order). Each phase applies its heartbeats once to
bring everyone online, then ``REFRESHES`` times more, refreshing them as a
steady load does. Measured, per heartbeat: Redis's CPU (``INFO cpu``,
``used_cpu_sys`` + ``used_cpu_user``), the time ``INFO commandstats`` counts
for ``evalsha`` (which leaves out reading the arguments), and this process's
time to build and encode the calls (``heartbeat_command``, then redis-py's
packing); for the refreshes, the cheapest of them (other work on the machine
only ever adds).

``--against REV`` measures that revision's call as well, in the same rounds
on the same Redis: its ``presence`` package, taken from git (``git
archive``), builds its calls in a worker process from the very same lines.
Rounds alternate the order of the sides; medians are reported.

``python -m bench.script_cost [--heartbeats N] [--rounds R] [--against REV] [--save]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from presence import Settings
from presence.contract import CONSUMER_GROUP
from presence.entries import heartbeat_lines, stream_entries
from presence.heartbeats.consumer import SCRIPT_BATCH
from presence.redis_client import unparsed_streams
from presence.transitions.lua import FAILED
from presence.transitions.scripts import Transitions
from presence.transitions.sources import HEARTBEAT

from .held import rooms_of
from .procs import redis_server
from .stats import ROOT, header, write_results

ROOMS_PER_CLIENT = 5
ROOM_SIZE = 50
#: Lines per PUBLISH script call, as the publisher sends them.
PUBLISH_BATCH = 1000
READ_BATCH = 10_000
REFRESHES = 3

Command = list[Any]

# Run by the worker process of --against, in a checkout of the other revision:
# the script's source, then one call per request, with the time they took to
# build and encode.
_WORKER = """
import json, sys, time
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from presence import Settings
from presence.transitions.scripts import Transitions
from presence.transitions.sources import HEARTBEAT
t = Transitions(aioredis.Redis(), Settings(**json.loads(sys.argv[1])))
packer = Connection()
print(json.dumps(HEARTBEAT), flush=True)
for request in sys.stdin:
    batches = [[line.encode() for line in batch] for batch in json.loads(request)]
    start = time.perf_counter()
    commands = [t.heartbeat_command(batch) for batch in batches]
    packer.pack_commands(commands)
    took = time.perf_counter() - start
    words = [[a.decode() if isinstance(a, bytes) else a for a in c] for c in commands]
    print(json.dumps([took, words]), flush=True)
"""


class Side:
    """One revision's heartbeat call: its script and its command builder."""

    def __init__(self, name: str, source: str, build: Callable[[list[list[bytes]]], Any]) -> None:
        self.name = name
        self.source = source
        #: Calls for batches of lines, and the seconds building and encoding them took.
        self.build: Callable[[list[list[bytes]]], tuple[list[Command], float]] = build

    def close(self) -> None:
        pass


def this_side(settings: Settings) -> Side:
    transitions = Transitions(aioredis.Redis(), settings)  # builds commands, never connects
    packer = Connection()

    def build(batches: list[list[bytes]]) -> tuple[list[Command], float]:
        start = time.perf_counter()
        commands = [transitions.heartbeat_command(batch) for batch in batches]
        packer.pack_commands(commands)
        return commands, time.perf_counter() - start

    return Side("this tree", HEARTBEAT, build)


class WorkerSide(Side):
    """Another revision's call, built by a worker process in its own checkout."""

    def __init__(self, revision: str, settings: dict[str, Any]) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", revision, "presence"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(self._tmp.name, filter="data")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, json.dumps(settings)],
            cwd=self._tmp.name, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._in, self._out = self._proc.stdin, self._proc.stdout
        source = json.loads(self._out.readline())
        super().__init__(revision, source, self._build)

    def _build(self, batches: list[list[bytes]]) -> tuple[list[Command], float]:
        self._in.write(json.dumps([[b.decode() for b in batch] for batch in batches]) + "\n")
        self._in.flush()
        took, commands = json.loads(self._out.readline())
        return commands, took

    def close(self) -> None:
        self._in.close()
        self._proc.wait()
        self._tmp.cleanup()


def members(heartbeats: int, kind: str) -> str:
    """The publisher's lines for one heartbeat each: ``<client>[ <room>]``."""
    if kind == "global":
        return "\n".join(f"g{i}" for i in range(heartbeats))
    clients = heartbeats // ROOMS_PER_CLIENT
    return "\n".join(
        f"h{i} {room}"
        for i in range(clients)
        for room in rooms_of(i, clients, ROOMS_PER_CLIENT, ROOM_SIZE)
    )


async def redis_cpu(r: aioredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def evalsha_usec(r: aioredis.Redis) -> tuple[int, int]:
    """(calls, usec) of EVALSHA since the last CONFIG RESETSTAT."""
    stats = (await r.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


class Bench:
    def __init__(self, url: str, settings: Settings) -> None:
        self.r = aioredis.Redis.from_url(url)
        self.raw = unparsed_streams(self.r)
        self.t = Transitions(self.r, settings)
        self.settings = settings

    async def lines(self, published: str, heartbeats: int) -> list[bytes]:
        """Heartbeat entries added by the publisher's script, then read and
        turned into script lines by the consumer's code."""
        split = published.split("\n")

        def fill(pipe: Any) -> None:
            for start in range(0, len(split), PUBLISH_BATCH):
                batch = "\n".join(split[start : start + PUBLISH_BATCH])
                self.t.publish(pipe, "bench", batch, 10_000_000)

        await self.t.execute(fill)
        lines: list[bytes] = []
        stream = self.settings.keys.heartbeat
        while len(lines) < heartbeats:
            reply = await self.raw.xreadgroup(
                CONSUMER_GROUP, "bench", {stream: ">"}, count=READ_BATCH
            )
            good, bad = heartbeat_lines(stream_entries(reply))
            assert not bad, bad[:1]
            lines += good
        return lines

    async def apply(self, commands: Sequence[Command]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) or FAILED in reply:
                raise RuntimeError(f"a heartbeat failed: {reply!r}")

    async def phase(self, side: Side, kind: str, heartbeats: int) -> dict[str, float]:
        """Everyone online, then the refreshes, from an empty Redis."""
        await self.r.flushall()
        await self.r.xgroup_create(self.settings.keys.heartbeat, CONSUMER_GROUP, mkstream=True)
        published = members(heartbeats, kind)
        result: dict[str, float] = {}
        for step in ("online", *["refresh"] * REFRESHES):
            lines = await self.lines(published, heartbeats)
            batches = [lines[i : i + SCRIPT_BATCH] for i in range(0, len(lines), SCRIPT_BATCH)]
            commands, built = side.build(batches)
            await self.r.config_resetstat()
            cpu = await redis_cpu(self.r)
            await self.apply(commands)
            cpu = await redis_cpu(self.r) - cpu
            calls, usec = await evalsha_usec(self.r)
            assert calls == len(commands), (calls, len(commands))
            measured = {"redis_cpu_us": cpu * 1e6, "evalsha_us": usec, "build_us": built * 1e6}
            for what, value in measured.items():
                key = f"{step}_{what}"
                result[key] = min(result.get(key, float("inf")), value / heartbeats)
            await self.r.xtrim(self.settings.keys.heartbeat, maxlen=0)  # all acknowledged
        return result


def median(rounds: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 2)


async def run(url: str, heartbeats: int, rounds: int, sides: list[Side]) -> dict[str, Any]:
    bench = Bench(url, Settings(redis_url=url, server_id="bench", heartbeat_interval=5))
    for side in sides:
        await bench.r.script_load(side.source)
    found: dict[str, dict[str, list[dict[str, float]]]] = {
        s.name: {"global": [], "rooms": []} for s in sides
    }
    for n in range(rounds):
        order = [(s, k) for s in sides for k in ("global", "rooms")]
        for side, kind in order if n % 2 == 0 else reversed(order):
            found[side.name][kind].append(await bench.phase(side, kind, heartbeats))
        print(f"  round {n + 1}/{rounds} done", file=sys.stderr)
    await bench.r.aclose()
    results: dict[str, Any] = {}
    for side in sides:
        g, m = found[side.name]["global"], found[side.name]["rooms"]
        figures: dict[str, Any] = {}
        for step in ("refresh", "online"):
            for what in ("redis_cpu_us", "evalsha_us", "build_us"):
                key = f"{step}_{what}"
                figures[key] = {"global": median(g, key), "rooms": median(m, key)}
                if what != "build_us":
                    # Each round's ratio, sides measured one after the other.
                    ratios = [b[key] / a[key] for a, b in zip(g, m, strict=True)]
                    figures[key]["ratio"] = round(statistics.median(ratios), 3)
                    figures[key]["ratios"] = [round(x, 3) for x in ratios]
        results[side.name] = figures
    return results


def report(results: dict[str, Any]) -> None:
    for name, figures in results.items():
        print(f"{name}:")
        for step in ("refresh", "online"):
            cpu, usec, built = (figures[f"{step}_{w}"] for w in ("redis_cpu_us", "evalsha_us",
                                                                   "build_us"))  # fmt: skip
            print(
                f"  {step:7} Redis CPU/heartbeat: global {cpu['global']:.2f} µs, rooms "
                f"{cpu['rooms']:.2f} µs, ratio {cpu['ratio']:.3f}; evalsha usec: "
                f"{usec['global']:.2f} / {usec['rooms']:.2f}, ratio {usec['ratio']:.3f}; "
                f"build+encode: {built['global']:.2f} / {built['rooms']:.2f} µs"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.script_cost", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--heartbeats", type=int, default=20_000, metavar="N")
    parser.add_argument("--rounds", type=int, default=5, metavar="R")
    parser.add_argument("--against", metavar="REV", help="measure this git revision's call too")
    parser.add_argument("--save", action="store_true", help="write bench/results/...json")
    args = parser.parse_args(argv)
    if args.heartbeats % (ROOMS_PER_CLIENT * ROOM_SIZE):
        parser.error(f"--heartbeats must be a multiple of {ROOMS_PER_CLIENT * ROOM_SIZE}")
    started = time.time()
    with redis_server() as (url, _, _):
        sides = [this_side(Settings(redis_url=url, server_id="bench", heartbeat_interval=5))]
        if args.against:
            worker_settings = {"redis_url": url, "server_id": "bench", "heartbeat_interval": 5}
            sides.append(WorkerSide(args.against, worker_settings))
        try:
            results = asyncio.run(run(url, args.heartbeats, args.rounds, sides))
        finally:
            for side in sides:
                side.close()
    report(results)
    if args.save:
        command = "python -m bench.script_cost " + " ".join(argv or sys.argv[1:])
        out = write_results(
            header("script-cost", command.strip(), started)
            | {"heartbeats": args.heartbeats, "rounds": args.rounds,
               "rooms_per_client": ROOMS_PER_CLIENT, "room_size": ROOM_SIZE,
               "script_batch": SCRIPT_BATCH, "refreshes": REFRESHES, "sides": results}
        )  # fmt: skip
        print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
