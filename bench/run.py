"""The benchmarks: ``python -m bench [--full]``. Each result is a ratio taken side by
side in one run, next to the absolute numbers, which drift between machines.

1. Heartbeat ingestion (bench/ingest.py): one presence process applying a burst of
   heartbeats, against Redis's own ceiling for the same script (its EVALSHA
   calls written raw, pipelined); and the CPU one process spends on a steady heartbeat
   load (bench/steady.py).
2. SSE fan-out (bench/fanout.py): N connections, M events each delivered to all
   of them, against nginx with nchan (one worker) under the same load and
   message size.
3. Memory per idle SSE connection, against nchan's (bench/fanout.py).
4. OFFLINE latency at scale (bench/offline.py): a sample of tracked clients
   stops; when their OFFLINE reaches an SSE client, minus their deadline; and,
   in the same run, when Redis's own ``expired`` event arrives (what a
   keyspace-only design gets).
5. ONLINE latency under the steady load of (1) (bench/steady.py): from the
   heartbeat's XADD to the ``ONLINE`` event at an SSE client.
6. Connect storm (bench/storm.py): N EventSource clients connecting to one
   process at once, until each knows all the others are online.
7. Rooms (bench/rooms.py): a connect storm in rooms against the global one; the
   CPU of memberships heartbeated in rooms against global heartbeats as many,
   Redis's per heartbeat included; UPDATE latency under that load; and the
   fan-out of a room's events with and without idle connections in other rooms.
8. Webhooks (bench/webhooks.py): transitions per second posted to a local
   receiver, and the latency from a transition's entry to its POST's arrival.

Shared: bench/procs.py (the processes), bench/stats.py (numbers and the result
file), bench/redis_load.py and bench/sse_load.py (load generators), bench/lua.py
(presence's scripts).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from .fanout import bench_fanout
from .ingest import bench_ingest
from .offline import bench_offline
from .plot import plot
from .rooms import bench_rooms
from .scale import FULL, SHORT, Scale
from .stats import ROOT, header, write_results
from .storm import bench_storm
from .webhooks import bench_webhooks

BENCHES: list[tuple[str, Callable[[Scale], Any]]] = [
    ("ingest", bench_ingest),
    ("fanout", bench_fanout),
    ("offline", bench_offline),
    ("storm", bench_storm),
    ("rooms", bench_rooms),
    ("webhooks", lambda _: bench_webhooks(burst=20_000, rate=250, seconds=10.0)),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the whole matrix (long)")
    parser.add_argument(
        "--only", choices=[name for name, _ in BENCHES], action="append", help="repeatable"
    )
    args = parser.parse_args(argv)
    scale = FULL if args.full else SHORT
    chosen = args.only or [name for name, _ in BENCHES]
    started = time.time()
    command = "make bench-full" if args.full else "make bench"
    if args.only:
        command = "python -m bench" + " --full" * args.full
        command += "".join(f" --only {name}" for name in args.only)
    results = header("full" if args.full else "short", command, started)
    for name, run in BENCHES:
        if name in chosen:
            print(f"{name}:")
            results[name] = run(scale)
    results["seconds"] = round(time.time() - started, 1)
    out = write_results(results)
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.relative_to(ROOT)} and its plot in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
