"""``serve --workers``: one worker against two, side by side in one run.

For ``--workers 1`` and ``--workers 2``, each time on a fresh Redis of its own:

1. SSE fan-out, as bench/fanout.py measures it: M connections of one client
   id (the Python load, two processes), a burst of E events; deliveries per
   second, p50/p99 latency, the server's CPU and the load's.
2. Connect storm, as bench/storm.py runs it: N clients of the C load
   (bench/storm_client.c) connecting at once, until every one knows all the
   others are online; the server's CPU, Redis's, the load's; then what the
   ``presence`` stream holds (exactly N ``ONLINE``, no ``OFFLINE``).

The server's CPU is that of the process started and of every process below
it: with workers, the supervising parent, the workers and multiprocessing's
resource tracker (each recorded apart too). Both loads run at ``nice 10``, as
the storm's always has: the clients would be on other machines, so the server
and Redis come first for the cores. Each metric is reported with its ratio,
2 workers / 1 worker, beside the CPU the rest of the machine spent meanwhile
(others' work on a shared machine weighs on one side only). With ``--rounds``,
the whole is repeated, 2 workers first in every other round, and the medians
are reported with each ratio's range.

``python -m bench.workers [--clients N] [--fanout-connections M --fanout-events E]
[--rounds R]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import redis

from .cload import CLoad
from .fanout import drive, heartbeat_sender
from .procs import presence_server, redis_server
from .sse_load import Load
from .stats import CLK_TCK, cpu_seconds, descendants, header, peak_rss_kb, rss_kb, write_results
from .storm import C_LOAD_PROCESSES, LOAD_NICENESS, limit_for, listen_overflows

WORKERS = (1, 2)
#: The full run's smaller storm: about 8 s with one worker here.
CLIENTS = 5_000
#: Two million deliveries: a burst of about a second, long enough to time.
FANOUT_CONNECTIONS = 4_000
FANOUT_EVENTS = 500
#: Per-worker counters read after the storm.
WANTED = (
    "presence_sse_connections",
    "presence_heartbeats_applied_total",
    "presence_heartbeats_stale_total",
    "presence_queue_overflows_total",
    "presence_fanout_resets_total",
    "presence_heartbeat_tick_lag_max_seconds",
    # Where an OFFLINE nobody caused would come from.
    'presence_transitions_published_total{status="OFFLINE"}',
    "presence_leaves_total",
    "presence_heartbeats_claimed_total",
    "presence_heartbeats_retried_total",
    "presence_sweeper_lag_seconds",
)


class ServerTree:
    """The server's processes: the one started and all below it, fixed once it
    is ready (a worker restarted meanwhile would make the sums wrong: checked)."""

    def __init__(self, pid: int) -> None:
        self.pids = [pid, *descendants(pid)]
        self.roles = {p: _role(p) for p in self.pids}
        if len(self.pids) == 1:
            self.roles[pid] = "server"

    def cpu(self) -> dict[int, float]:
        return {p: cpu_seconds(p) for p in self.pids}

    def kernel_view(self) -> dict[str, float]:
        """Summed over the processes: system CPU seconds (of the user plus system
        that :meth:`cpu` counts) and context switches, the involuntary ones
        being preemptions by another process wanting the core."""
        found = {"system_cpu_s": 0.0, "voluntary_switches": 0.0, "preemptions": 0.0}
        for p in self.pids:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            found["system_cpu_s"] += int(stat[12]) / CLK_TCK
            status = Path(f"/proc/{p}/status").read_text()
            for key, name in (("voluntary_switches", "voluntary"), ("preemptions", "nonvoluntary")):
                switches = re.search(rf"^{name}_ctxt_switches:\s+(\d+)", status, re.M)
                found[key] += int(switches[1]) if switches else 0
        return found

    def cpu_since(
        self, before: dict[int, float], kernel_before: dict[str, float]
    ) -> dict[str, Any]:
        """CPU seconds since ``before``: in all, per role, per worker; and the
        change in :meth:`kernel_view` since ``kernel_before``."""
        if self.pids[1:] != descendants(self.pids[0]):
            raise RuntimeError("the server's processes changed during the measurement")
        spent = {p: cpu_seconds(p) - before[p] for p in self.pids}
        by_role: dict[str, float] = {}
        for p, seconds in spent.items():
            by_role[self.roles[p]] = by_role.get(self.roles[p], 0.0) + seconds
        return {
            "server_cpu_s": round(sum(spent.values()), 2),
            "server_cpu_by_role_s": {role: round(s, 2) for role, s in by_role.items()},
            "worker_cpu_s": [round(spent[p], 2) for p in self.pids if self.roles[p] == "worker"],
        } | {
            f"server_{key}": round(value - kernel_before[key], 2)
            for key, value in self.kernel_view().items()
        }

    def rss_kb(self) -> int:
        return sum(rss_kb(p) for p in self.pids)

    def peak_rss_kb(self) -> int:
        """The sum of each process's own peak: at most, since peaks need not coincide."""
        return sum(peak_rss_kb(p) for p in self.pids)


def _role(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    if b"multiprocessing.spawn" in cmdline:
        return "worker"
    if b"multiprocessing.resource_tracker" in cmdline:
        return "resource tracker"
    return "supervisor" if b"--workers" in cmdline else "other"


def worker_metrics(port: int, workers: int, timeout: float = 20) -> dict[str, dict[str, float]]:
    """``WANTED`` of each worker, by server id. The kernel picks a worker per
    connection: on each, ``/healthz`` names the one that ``/metrics`` then
    answers for; new connections until every worker has answered."""
    found: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + timeout
    while len(found) < workers and time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/healthz")
            server = json.loads(connection.getresponse().read())["server"]
            if server in found:
                continue
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        except (OSError, ValueError, KeyError):
            continue  # a busy worker: another connection
        finally:
            connection.close()
        values = (line.partition(" ") for line in text.splitlines())
        found[server] = {key: float(value) for key, _, value in values if key in WANTED}
    return found


def _nice(pids: set[int]) -> None:
    """``nice 10`` for every thread of ``pids`` (niceness is per thread on Linux)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):  # ended meanwhile
                os.setpriority(os.PRIO_PROCESS, int(task.name), LOAD_NICENESS)


class Elsewhere:
    """The CPU the rest of the machine spends from now on: all its busy time
    (``/proc/stat``) less that of this process and everything below it (the
    servers, Redis, the loads). Others' tests or builds show up here."""

    def __init__(self) -> None:
        self._busy0, self._ours0 = _machine_busy_s(), _ours()

    def cpu_s(self) -> float:
        ours = _ours()
        spent = sum(ours[p] - self._ours0.get(p, 0.0) for p in ours)
        return round(max(0.0, _machine_busy_s() - self._busy0 - spent), 2)


def _machine_busy_s() -> float:
    """CPU seconds the machine's cores have been busy (all but idle and iowait)."""
    ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def _ours() -> dict[int, float]:
    found = {}
    for pid in [os.getpid(), *descendants(os.getpid())]:
        with suppress(OSError):  # ended meanwhile
            found[pid] = cpu_seconds(pid)
    return found


def _reads(pid: int) -> int:
    """The read() calls process ``pid`` has made (``syscr``): of its sockets, for the C load."""
    found = re.search(r"^syscr: (\d+)$", Path(f"/proc/{pid}/io").read_text(), re.M)
    return int(found[1]) if found else 0


def _transitions(r: redis.Redis) -> dict[str, int]:
    """The ``ONLINE`` and ``OFFLINE`` entries of the ``presence`` stream."""
    counts = {b"ONLINE": 0, b"OFFLINE": 0}
    start = "-"
    while entries := list[Any](r.xrange("presence", min=start, count=10_000) or []):
        for _id, fields in entries:
            status = fields.get(b"status")
            if status in counts:
                counts[status] += 1
        start = "(" + entries[-1][0].decode()
    return {"online": counts[b"ONLINE"], "offline": counts[b"OFFLINE"]}


def fanout(workers: int, connections: int, events: int) -> dict[str, Any]:
    """bench/fanout.py's burst on ``workers``, with the server's CPU summed
    over its processes (``drive`` counts the first alone)."""
    flags = ("--heartbeat-interval", "5")
    with (
        redis_server() as (url, _, redis_pid),
        presence_server(url, *flags, workers=workers) as (port, pid),
        redis.Redis.from_url(url) as r,
    ):
        server = ServerTree(pid)
        rss0 = server.rss_kb()
        before = set(descendants(os.getpid()))
        load = Load(port, ["/clients/bench/events"] * connections, skip_first=True)
        failed = load.ready()
        _nice(set(descendants(os.getpid())) - before)  # the load's processes
        time.sleep(1)  # as bench/fanout.py: the RSS settles
        rss = round((server.rss_kb() - rss0) / connections, 1)
        cpu0, kernel0, redis_cpu0 = server.cpu(), server.kernel_view(), cpu_seconds(redis_pid)
        elsewhere = Elsewhere()
        row = drive(load, pid, connections, events, heartbeat_sender(r))
        cpu = server.cpu_since(cpu0, kernel0)
        others = elsewhere.cpu_s()
        redis_cpu = cpu_seconds(redis_pid) - redis_cpu0
        spread = worker_metrics(port, workers)
        load.close()
    row |= cpu
    row["deliveries_per_server_cpu_s"] = round(
        connections * events / max(cpu["server_cpu_s"], 0.01)
    )
    row |= {
        "redis_cpu_s": round(redis_cpu, 2),
        "elsewhere_cpu_s": others,
        "failed": failed,
        "rss_kb_per_connection": rss,
        "connections_per_worker": _per_worker(spread, "presence_sse_connections"),
    }
    return row


def storm(workers: int, clients: int, limit: float) -> dict[str, Any]:
    """bench/storm.py's storm with the C load on ``workers``."""
    with (
        tempfile.TemporaryFile() as log,
        redis_server() as (url, _, redis_pid),
        # Defaults but for the connection limit, as bench/storm.py runs it.
        presence_server(
            url,
            max_connections=clients + 1_000,
            max_connections_per_client=None,
            log=log,
            workers=workers,
        ) as (port, pid),
        redis.Redis.from_url(url) as r,
    ):
        server = ServerTree(pid)
        load = CLoad(port, clients, C_LOAD_PROCESSES, niceness=LOAD_NICENESS, spread_ms=0.0)
        overflows0 = listen_overflows()
        cpu0, kernel0, redis_cpu0 = server.cpu(), server.kernel_view(), cpu_seconds(redis_pid)
        load_cpu0 = sum(cpu_seconds(p) for p in load.pids)
        reads0 = sum(_reads(p) for p in load.pids)
        elsewhere = Elsewhere()
        t0 = time.time()
        load.go()
        converged_s = None
        while time.time() - t0 < limit:
            time.sleep(0.2)
            stats = load.ask()
            if all(s["all_converged_at"] is not None for s in stats):
                converged_s = max(s["all_converged_at"] for s in stats) - t0
                break
        cpu = server.cpu_since(cpu0, kernel0)
        others = elsewhere.cpu_s()
        redis_cpu = cpu_seconds(redis_pid) - redis_cpu0
        load_cpu = sum(cpu_seconds(p) for p in load.pids) - load_cpu0
        reads = sum(_reads(p) for p in load.pids) - reads0
        peak = server.peak_rss_kb()
        overflows = {k: v - overflows0.get(k, 0) for k, v in listen_overflows().items()}
        spread = worker_metrics(port, workers)
        stream = _transitions(r)
        final = load.stop()
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()

    def total(key: str) -> int:
        return sum(s["counters"][key] for s in final)

    events = total("online_events") + total("offline_events") + total("snapshots")

    return {
        "clients": clients,
        "limit_s": limit,
        "converged_s": None if converged_s is None else round(converged_s, 2),
        "converged": sum(s["converged"] for s in final),
        **cpu,
        "redis_cpu_s": round(redis_cpu, 2),
        "load_cpu_s": round(load_cpu, 2),
        "elsewhere_cpu_s": others,
        # The C load's read()s of its sockets: events per read is how many
        # events the server's writes carried, at most (a lagging load joins some).
        "load_reads": reads,
        "events_received": events,
        "events_per_load_read": round(events / reads, 2) if reads else None,
        "server_peak_rss_kb_sum": peak,
        "streams_ended": total("ended"),
        "connects": total("connects"),
        "connect_failures": total("connect_failures"),
        "http_errors": total("http_errors"),
        # Connects established only after 0.9 s: a SYN dropped on a full accept
        # queue (the machine's counters next) and sent again, or the load not
        # running meanwhile.
        "slow_connects": sum(s["c"]["slow_connects"] for s in final),
        "connect_max_s": max(s["c"]["connect_max_s"] for s in final),
        "listen_overflows": overflows,
        "bad_ids": sum(s["c"]["bad_ids"] for s in final),
        "protocol_errors": sum(s["c"]["protocol_errors"] for s in final),
        "presence_stream": stream,
        "connections_per_worker": _per_worker(spread, "presence_sse_connections"),
        "heartbeats_applied_per_worker": _per_worker(spread, "presence_heartbeats_applied_total"),
        "heartbeats_stale": sum(
            m.get("presence_heartbeats_stale_total", 0) for m in spread.values()
        ),
        "queue_overflows": sum(m.get("presence_queue_overflows_total", 0) for m in spread.values()),
        "tick_lag_max_s": max(
            (m.get("presence_heartbeat_tick_lag_max_seconds", 0) for m in spread.values()),
            default=None,
        ),
        "worker_metrics": spread,
        "server_log_lines": len(lines),
        "server_log_sample": sorted({line[:200] for line in lines})[:5],
    }


def _per_worker(spread: dict[str, dict[str, float]], key: str) -> dict[str, int]:
    return {server: int(metrics.get(key, 0)) for server, metrics in sorted(spread.items())}


#: (part, result key, label, which way is better) of every ratio reported.
RATIOS = (
    ("fanout", "deliveries_per_s", "fan-out deliveries/s", "higher"),
    ("fanout", "deliveries_per_server_cpu_s", "fan-out deliveries per server CPU s", "higher"),
    ("fanout", "p50_ms", "fan-out latency p50 (ms)", "lower"),
    ("fanout", "p99_ms", "fan-out latency p99 (ms)", "lower"),
    ("fanout", "server_cpu_s", "fan-out server CPU (s)", "lower"),
    ("fanout", "client_cpu_s", "fan-out load CPU (s)", "lower"),
    ("fanout", "redis_cpu_s", "fan-out Redis CPU (s)", "lower"),
    ("fanout", "elsewhere_cpu_s", "fan-out: others' CPU meanwhile (s)", "noise"),
    ("storm", "converged_s", "storm: all converged (s)", "lower"),
    ("storm", "server_cpu_s", "storm server CPU (s)", "lower"),
    ("storm", "server_system_cpu_s", "... of which system (kernel) CPU (s)", "lower"),
    ("storm", "server_preemptions", "storm server preemptions", "lower"),
    ("storm", "load_cpu_s", "storm load CPU (s)", "lower"),
    ("storm", "redis_cpu_s", "storm Redis CPU (s)", "lower"),
    ("storm", "events_per_load_read", "storm events per load read()", "higher"),
    ("storm", "server_peak_rss_kb_sum", "storm server peak RSS (KB, summed)", "lower"),
    ("storm", "elsewhere_cpu_s", "storm: others' CPU meanwhile (s)", "noise"),
)


def ratios(by_workers: dict[int, dict[str, Any]]) -> dict[str, float | None]:
    """2 workers / 1 worker, per metric of ``RATIOS``."""
    found: dict[str, float | None] = {}
    for part, key, _label, better in RATIOS:
        a, b = by_workers[1][part][key], by_workers[2][part][key]
        if better != "noise":  # what others did meanwhile: no ratio of ours
            found[f"{part}_{key}"] = round(b / a, 3) if a and b is not None else None
    return found


def run_round(number: int, args: argparse.Namespace, limit: float) -> dict[str, Any]:
    """Fan-out on 1 then 2 workers, then the storm likewise (2 first in odd
    rounds, so that a drift of the machine weighs on both)."""
    order = WORKERS if number % 2 == 0 else WORKERS[::-1]
    by_workers: dict[int, dict[str, Any]] = {workers: {} for workers in WORKERS}
    for workers in order:
        f = by_workers[workers]["fanout"] = fanout(
            workers, args.fanout_connections, args.fanout_events
        )
        print(
            f"  {workers} worker(s), fan-out {args.fanout_connections:,} x {args.fanout_events:,}: "
            f"{f['deliveries_per_s']:,}/s, p99 {f['p99_ms']} ms, server CPU {f['server_cpu_s']} s "
            f"(others on the machine meanwhile: {f['elsewhere_cpu_s']} s)",
            flush=True,
        )
    for workers in order:
        s = by_workers[workers]["storm"] = storm(workers, args.clients, limit)
        rate = by_workers[workers]["fanout"]["deliveries_per_s"]
        # As bench/storm.py: N(N-1)/2 joins at the fan-out rate of the same run.
        s["inherent_bound_s"] = round(args.clients * (args.clients - 1) / 2 / rate, 2)
        took = (
            f"all converged in {s['converged_s']} s"
            if s["converged_s"] is not None
            else f"{s['converged']:,} converged within {limit:g} s"
        )
        print(
            f"  {workers} worker(s), storm {args.clients:,}: {took} "
            f"(bound {s['inherent_bound_s']} s), server CPU {s['server_cpu_s']} s, "
            f"load CPU {s['load_cpu_s']} s, {s['presence_stream']['online']:,} ONLINE / "
            f"{s['presence_stream']['offline']:,} OFFLINE (others: {s['elsewhere_cpu_s']} s)",
            flush=True,
        )
    return {
        "order": list(order),
        "workers": {str(k): v for k, v in by_workers.items()},
        "ratios": ratios(by_workers),
    }


def _median(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def summary(rounds: list[dict[str, Any]]) -> tuple[list[tuple[str, ...]], dict[str, Any]]:
    """The table's rows and the result file's ratios: the median over the
    rounds of each metric and of each round's ratio (not the ratio of the
    medians), with the ratio's range when there are several rounds."""
    rows: list[tuple[str, ...]] = [("", "1 worker", "2 workers", "2 / 1", "range", "better")]
    found: dict[str, Any] = {}
    for part, key, label, better in RATIOS:
        name = f"{part}_{key}"
        each = [r["ratios"].get(name) for r in rounds]
        ratio = _median(each)
        known = [v for v in each if v is not None]
        spread = [min(known), max(known)] if len(known) > 1 else None
        if better != "noise":
            found[name] = {"median": ratio, "range": spread} if len(rounds) > 1 else ratio
        one = _median([r["workers"]["1"][part][key] for r in rounds])
        two = _median([r["workers"]["2"][part][key] for r in rounds])
        rows.append(
            (
                label,
                _fmt(one),
                _fmt(two),
                "-" if ratio is None else f"{ratio:.2f}",
                "" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}",
                better,
            )
        )
    return rows, found


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  "
        + row[0].ljust(widths[0])
        + "".join(c.rjust(w + 2) for c, w in zip(row[1:], widths[1:], strict=True))
        for row in rows
    )


def _fmt(value: float | None) -> str:
    if value is None:
        return "none"
    return f"{value:,.0f}" if value >= 1_000 else f"{value:.3g}"


def _busy_fraction(seconds: float = 2.0) -> float:
    """How busy the machine's CPUs were over ``seconds``: what others' work
    leaves the benchmark as it starts."""
    busy0, t0 = _machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    cores = len(os.sched_getaffinity(0))
    return round((_machine_busy_s() - busy0) / ((time.monotonic() - t0) * cores), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.workers", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--clients", type=int, default=CLIENTS, metavar="N", help="storm clients")
    parser.add_argument("--fanout-connections", type=int, default=FANOUT_CONNECTIONS, metavar="M")
    parser.add_argument("--fanout-events", type=int, default=FANOUT_EVENTS, metavar="E")
    parser.add_argument(
        "--rounds", type=int, default=1, metavar="R", help="repeat, medians reported (default 1)"
    )
    args = parser.parse_args(argv)
    for name in ("clients", "fanout_connections", "fanout_events"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    started = time.time()
    command = " ".join(["python -m bench.workers", *(argv if argv is not None else sys.argv[1:])])
    results = header("workers", command, started)
    results["machine"]["busy_before"] = _busy_fraction()
    results["machine"]["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    limit = limit_for(args.clients)
    rounds = []
    for number in range(args.rounds):
        if args.rounds > 1:
            print(f"round {number + 1} of {args.rounds}:", flush=True)
        rounds.append(run_round(number, args, limit))
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    rows, results["ratios"] = summary(rounds)
    results["rounds"] = rounds
    results["seconds"] = round(time.time() - started, 1)
    print(_table(rows))
    out = write_results(results)
    print(f"wrote {os.path.relpath(out)} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
