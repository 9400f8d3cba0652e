"""Connect storm: N EventSource clients connecting to one presence process at once.

Each client reads its stream as a browser's EventSource does, reconnecting 0.5 s
after the server ends it, with ``Last-Event-ID``. The clients are in C
(bench/storm_client.c, one process, built with ``cc`` on first use) unless
``--python-load`` asks for the Python ones (bench/eventsource.py, four processes),
which cost the machine more CPU than the server they measure. A client has
converged when it knows all N-1 others are online.

Measured: the time until every client has converged (or how many had within the
time limit), the server's CPU and peak RSS, the load's CPU, how many streams
the server ended, and then what the ``presence`` stream holds: exactly N
``ONLINE`` entries and no ``OFFLINE`` one when nothing went wrong.

With ``room_size`` (the C load only), the N clients are in rooms of that many
instead, each streaming its own room (``?room=``), and a client has converged
when it knows its whole room is online; bench/rooms.py runs that storm. The
room streams' entries are then counted too.

Every client has to receive the other N-1 joins, in its snapshot or as events:
N(N-1)/2 event deliveries at the least (per room, in rooms). Divided by the
server's fan-out rate, measured in the same run (M connections of one client
id, a burst of events, as bench/fanout.py does, on a process and Redis of
their own), that gives the inherent bound the convergence time is compared
with.

``python -m bench.storm --clients 10000 [--busy-neighbour] [--python-load]``; ``python -m bench``
runs it too.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

import redis

from .cload import CLoad
from .eventsource import Client, Counters, Storm, name
from .fanout import presence_fanout
from .procs import presence_server, redis_server
from .scale import Scale
from .stats import cpu_seconds, header, peak_rss_kb, percentile, write_results

LOAD_PROCESSES = 4  #: of the Python load
C_LOAD_PROCESSES = 1
LOAD_NICENESS = 10
#: Deliveries per fan-out measurement: enough to time, quick to run.
FANOUT_DELIVERIES = 1_000_000


def limit_for(clients: int) -> float:
    """The default time limit: 150 s for 10,000 clients, in proportion, 30 s at least."""
    return max(30.0, 150 * clients / 10_000)


# --- the load processes -----------------------------------------------------------------


def _load_main(port: int, total: int, mine: list[int], control: Connection) -> None:
    # The clients would be on other machines: the server, and its Redis, come
    # first for the CPU; the load reads with what is left, like a slow network.
    os.nice(LOAD_NICENESS)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_load(port, total, mine, control))


async def _load(port: int, total: int, mine: list[int], control: Connection) -> None:
    loop = asyncio.get_running_loop()
    clients = []
    for i in mine:
        view = bytearray(total)
        view[i] = 1
        clients.append(Client(index=i, name=name(i), view=view))
    storm = Storm(port=port, total=total, clients=clients)
    control.send("ready")
    await loop.run_in_executor(None, control.recv)  # go
    for client in clients:
        storm.connect(client)
    while True:
        command = await loop.run_in_executor(None, control.recv)
        if command == "stop":
            storm.stop()
            await asyncio.sleep(0.2)  # the closes go out
        control.send(
            {
                "counters": asdict(storm.counters),
                "converged": storm.converged,
                "all_converged_at": storm.all_converged_at,
                "converged_at": [c.converged_at for c in clients] if command == "stop" else [],
                "never_streamed": sum(not c.streams for c in clients),
            }
        )
        if command == "stop":
            return


class Load:
    """``processes`` processes holding ``total`` clients between them."""

    def __init__(self, port: int, total: int, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for p in range(processes):
            parent, child = context.Pipe()
            mine = list(range(p, total, processes))
            proc = context.Process(target=_load_main, args=(port, total, mine, child), daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)
        for pipe in self._pipes:
            pipe.recv()  # ready

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def go(self) -> None:
        for pipe in self._pipes:
            pipe.send("go")

    def ask(self, command: str = "stats") -> list[dict[str, Any]]:
        for pipe in self._pipes:
            pipe.send(command)
        return [pipe.recv() for pipe in self._pipes]

    def stop(self) -> list[dict[str, Any]]:
        answers = self.ask("stop")
        for proc in self._procs:
            proc.join(10)
        return answers


def _burn() -> None:
    """The busy neighbour: one core, spinning."""
    while True:
        pass


# --- the storm ------------------------------------------------------------------------


def bench_storm(scale: Scale) -> list[dict[str, Any]]:
    alone = [storm(clients) for clients in scale.storm]
    return alone + [storm(clients, busy_neighbour=True) for clients in scale.storm_busy]


def storm(
    clients: int,
    *,
    limit: float | None = None,
    busy_neighbour: bool = False,
    processes: int | None = None,
    fanout: bool = True,
    load: str = "c",
    spread_ms: float = 0.0,
    room_size: int = 0,
) -> dict[str, Any]:
    """One storm of ``clients``; ``load`` is "c" or "python"; the C load spreads
    its first connects over ``spread_ms``; ``room_size`` puts the clients in rooms
    of that many, each streaming its own (the C load only)."""
    if room_size and load != "c":
        raise ValueError("only the C load streams rooms")
    if processes is None:
        processes = C_LOAD_PROCESSES if load == "c" else LOAD_PROCESSES
    limit = limit_for(clients) if limit is None else limit
    neighbour = None
    if busy_neighbour:
        neighbour = multiprocessing.get_context("spawn").Process(target=_burn, daemon=True)
        neighbour.start()
    try:
        # The fan-out rate under the same conditions (the neighbour too, if any).
        rate = _fanout(clients) if fanout else None
        row = _storm(clients, limit, processes, load, spread_ms, room_size)
    finally:
        if neighbour is not None:
            neighbour.terminate()
            neighbour.join()
    row["busy_neighbour"] = busy_neighbour
    deliveries = _deliveries(clients, room_size)
    row["fanout"] = rate
    bound = deliveries / rate["deliveries_per_s"] if rate else None
    row["inherent_bound_s"] = None if bound is None else round(bound, 2)
    took = row["converged_s"]
    row["ratio_to_bound"] = round(took / bound, 2) if took is not None and bound else None
    _report(row)
    return row


def _deliveries(clients: int, room_size: int) -> int:
    """Joins every client must learn of, at the least: N(N-1)/2, per room in rooms."""
    if not room_size:
        return clients * (clients - 1) // 2
    sizes = [min(room_size, clients - base) for base in range(0, clients, room_size)]
    return sum(n * (n - 1) // 2 for n in sizes)


def rooms_of(clients: int, room_size: int) -> list[str]:
    """The rooms of a storm in rooms: client ``s<i>`` is in ``r<i // room_size>``."""
    return [f"r{k}" for k in range(-(-clients // room_size))]


def _fanout(clients: int) -> dict[str, Any]:
    connections = min(clients, 8_000)
    events = max(100, FANOUT_DELIVERIES // connections)
    _rss, result = presence_fanout(connections, events)
    keep = ("deliveries_per_s", "deliveries_per_server_cpu_s", "server_cpu_s", "client_cpu_s")
    return {"connections": connections, "events": events} | {k: result[k] for k in keep}


def _storm(
    clients: int, limit: float, processes: int, kind: str, spread_ms: float, room_size: int
) -> dict[str, Any]:
    with (
        tempfile.TemporaryFile() as log,
        redis_server() as (url, _rport, rpid),
        # Defaults but for the connection limit.
        presence_server(
            url,
            max_connections=clients + 1_000,
            max_connections_per_client=None,
            log=log,
        ) as (port, pid),
    ):
        load: Load | CLoad = (
            CLoad(
                port,
                clients,
                processes,
                niceness=LOAD_NICENESS,
                spread_ms=spread_ms,
                room_size=room_size,
            )
            if kind == "c"
            else Load(port, clients, processes)
        )
        overflows0 = listen_overflows()
        cpu0, redis_cpu0 = cpu_seconds(pid), cpu_seconds(rpid)
        load_cpu0 = sum(cpu_seconds(p) for p in load.pids)
        t0 = time.time()
        load.go()
        converged_s = None
        next_report = t0 + 10
        while True:
            time.sleep(0.2)
            stats = load.ask()
            now = time.time()
            if all(s["all_converged_at"] is not None for s in stats):
                converged_s = max(s["all_converged_at"] for s in stats) - t0
                break
            if now - t0 > limit:
                break
            if now > next_report:
                next_report += 10
                ended = sum(s["counters"]["ended"] for s in stats)
                print(
                    f"    {now - t0:.0f} s: {sum(s['converged'] for s in stats):,} of "
                    f"{clients:,} converged, {ended:,} streams ended",
                    flush=True,
                )
        seconds = time.time() - t0
        server_cpu = cpu_seconds(pid) - cpu0
        redis_cpu = cpu_seconds(rpid) - redis_cpu0
        peak = peak_rss_kb(pid)
        load_cpu = sum(cpu_seconds(p) for p in load.pids) - load_cpu0
        overflows = {k: v - overflows0.get(k, 0) for k, v in listen_overflows().items()}
        r = redis.Redis.from_url(url)
        stream = _presence_stream(r)
        rooms = _room_streams(r, rooms_of(clients, room_size)) if room_size else None
        metrics = _metrics(port)
        final = load.stop()
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()
    counters = Counters()
    for s in final:
        counters.add(Counters(**s["counters"]))
    times = sorted(t - t0 for s in final for t in s["converged_at"] if t is not None)
    events = counters.online_events + counters.offline_events + counters.snapshots
    c_only: dict[str, Any] = {}
    if kind == "c":
        c_only = {
            "bad_ids": sum(s["c"]["bad_ids"] for s in final),
            "protocol_errors": sum(s["c"]["protocol_errors"] for s in final),
            # Times a converged client's view became incomplete again.
            "lost_convergence": sum(s["c"]["unconverged"] for s in final),
            # Connects the load saw established only after 0.9 s: a SYN dropped on a
            # full accept queue (see listen_overflows) and resent, or the load,
            # at nice 10, not running meanwhile.
            "slow_connects": sum(s["c"]["slow_connects"] for s in final),
            "connect_max_s": max(s["c"]["connect_max_s"] for s in final),
            "connect_spread_ms": spread_ms,
        }
    in_rooms: dict[str, Any] = {}
    if room_size:
        in_rooms = {
            "room_size": room_size,
            "rooms": len(rooms_of(clients, room_size)),
            # Members of another room, events of another room: routing errors.
            "foreign_ids": sum(s["c"]["foreign_ids"] for s in final),
            "wrong_room": sum(s["c"]["wrong_room"] for s in final),
            "update_events_received": sum(s["c"]["update_events"] for s in final),
            "room_streams": rooms,
        }
    return {
        "clients": clients,
        "load": kind,
        "load_processes": processes,
        "limit_s": limit,
        "seconds": round(seconds, 2),
        "converged_s": None if converged_s is None else round(converged_s, 2),
        "converged": sum(s["converged"] for s in final),
        "ever_converged": len(times),
        "first_convergence_p50_s": round(percentile(times, 50), 2) if times else None,
        "first_convergence_p99_s": round(percentile(times, 99), 2) if times else None,
        "server_cpu_s": round(server_cpu, 2),
        "server_peak_rss_kb": peak,
        "redis_cpu_s": round(redis_cpu, 2),
        "load_cpu_s": round(load_cpu, 2),
        # Until convergence or the limit; events received include snapshots.
        "load_cpu_us_per_event": round(load_cpu / events * 1e6, 3) if events else None,
        "streams_ended": counters.ended,
        "clients_never_streamed": sum(s["never_streamed"] for s in final),
        "connects": counters.connects,
        "connect_failures": counters.connect_failures,
        "http_errors": counters.http_errors,
        "closed_before_answer": counters.closed_early,
        "snapshots": counters.snapshots,
        "reset_snapshots": counters.reset_snapshots,
        "online_events_received": counters.online_events,
        "offline_events_received": counters.offline_events,
        "megabytes_received": round(counters.bytes / 1e6, 1),
        **c_only,
        # The machine's TcpExt counters over the storm: a full accept queue.
        "listen_overflows": overflows,
        "presence_stream": stream,
        **in_rooms,
        "server_metrics": metrics,
        "server_log_lines": len(lines),
        "server_log_sample": sorted({line[:200] for line in lines})[:5],
    }


def listen_overflows() -> dict[str, int]:
    """The machine's (network namespace's) ``ListenOverflows`` and ``ListenDrops``."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(table[k]) for k in ("ListenOverflows", "ListenDrops") if k in table}
    return {}


def _presence_stream(r: redis.Redis, key: str = "presence") -> dict[str, Any]:
    """What a transition stream (``presence``, or a room's) holds: ONLINE, OFFLINE
    (and UPDATE) entries, all added."""
    counts = {b"ONLINE": 0, b"OFFLINE": 0, b"UPDATE": 0}
    start = "-"
    while True:
        entries: list[Any] = r.xrange(key, min=start, count=10_000) or []
        for _id, fields in entries:
            status = fields.get(b"status")
            if status in counts:
                counts[status] += 1
        if len(entries) < 10_000:
            break
        start = "(" + entries[-1][0].decode()
    info = r.xinfo_stream(key) if r.exists(key) else {}
    found = {
        "online": counts[b"ONLINE"],
        "offline": counts[b"OFFLINE"],
        "length": info.get("length", 0),
        # More than the length when the stream was trimmed (--presence-maxlen).
        "entries_added": info.get("entries-added"),
    }
    if counts[b"UPDATE"]:
        found["update"] = counts[b"UPDATE"]
    return found


def _room_streams(r: redis.Redis, rooms: list[str]) -> dict[str, Any]:
    """The entries of every room's stream, summed: ONLINE, OFFLINE, UPDATE; and the
    fewest and most ONLINE entries a room holds (one per member in a storm)."""
    found = [_presence_stream(r, f"room.{{{room}}}.presence") for room in rooms]
    online = [f["online"] for f in found]
    return {
        "online": sum(online),
        "offline": sum(f["offline"] for f in found),
        "update": sum(f.get("update", 0) for f in found),
        "rooms": len(rooms),
        "rooms_with_online_min_max": [min(online, default=0), max(online, default=0)],
    }


def _metrics(port: int) -> dict[str, float]:
    """A few of the server's counters, if it answers in time."""
    wanted = (
        "presence_sse_connections",
        "presence_queue_overflows_total",
        "presence_leaves_total",
        "presence_heartbeats_applied_total",
        "presence_heartbeats_stale_total",
        "presence_fanout_lag_seconds",
        "presence_heartbeat_tick_lag_max_seconds",
        "presence_fanout_resets_total",
    )
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in wanted:
            found[key] = float(value)
    return found


def _report(row: dict[str, Any]) -> None:
    n = row["clients"]
    rooms = f" in {row['rooms']} rooms of {row['room_size']}" if row.get("room_size") else ""
    took = (
        f"all converged in {row['converged_s']} s"
        if row["converged_s"] is not None
        else f"{row['converged']:,} of {n:,} converged within {row['limit_s']:g} s"
        if row["converged"]
        else f"none converged within {row['limit_s']:g} s"
    )
    bound = row["inherent_bound_s"]
    versus = (
        f" (bound {bound} s, ratio {row['ratio_to_bound']})"
        if bound is not None and row["ratio_to_bound"] is not None
        else f" (bound {bound} s)"
        if bound is not None
        else ""
    )
    stream = row["presence_stream"]
    print(
        f"  storm {n:,}{rooms}{' + busy neighbour' if row['busy_neighbour'] else ''}: "
        f"{took}{versus}; "
        f"server CPU {row['server_cpu_s']} s, peak RSS {row['server_peak_rss_kb'] / 1024:.0f} MB, "
        f"{row['load']} load CPU {row['load_cpu_s']} s "
        f"({row['load_cpu_us_per_event']} µs/event); streams ended {row['streams_ended']:,}, "
        f"never connected {row['clients_never_streamed']:,}; "
        f"presence stream {stream['online']:,} ONLINE / {stream['offline']:,} OFFLINE"
        + (
            f"; room streams {row['room_streams']['online']:,} ONLINE / "
            f"{row['room_streams']['offline']:,} OFFLINE"
            if row.get("room_streams")
            else ""
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.storm", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[10_000], metavar="N", help="default 10000"
    )
    parser.add_argument("--limit", type=float, help="seconds (default 150 for 10,000, in scale)")
    parser.add_argument("--busy-neighbour", action="store_true", help="burn a core meanwhile")
    parser.add_argument(
        "--processes",
        type=int,
        help=f"load processes (default {C_LOAD_PROCESSES}, {LOAD_PROCESSES} with --python-load)",
    )
    parser.add_argument(
        "--python-load", action="store_true", help="the Python clients instead of the C ones"
    )
    parser.add_argument(
        "--spread-ms", type=float, default=0.0, help="spread the C load's first connects (ms)"
    )
    parser.add_argument("--no-fanout", action="store_true", help="skip the fan-out rate")
    parser.add_argument(
        "--room-size", type=int, default=0, metavar="S", help="clients in rooms of S (C load)"
    )
    args = parser.parse_args(argv)
    started = time.time()
    command = " ".join(["python -m bench.storm", *(argv if argv is not None else sys.argv[1:])])
    results = header("storm", command, started)
    print("storm:")
    results["storm"] = [
        storm(
            n,
            limit=args.limit,
            busy_neighbour=args.busy_neighbour,
            processes=args.processes,
            fanout=not args.no_fanout,
            load="python" if args.python_load else "c",
            spread_ms=args.spread_ms,
            room_size=args.room_size,
        )
        for n in args.clients
    ]
    results["seconds"] = round(time.time() - started, 1)
    out = write_results(results)
    print(f"wrote {os.path.relpath(out)} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
