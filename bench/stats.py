"""Numbers: percentiles, CPU and memory of processes from /proc, the result file."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_precise(pid: int) -> float:
    """CPU seconds of process ``pid``'s threads so far, to the nanosecond (their
    ``schedstat``), for windows too short for :func:`cpu_seconds`' clock ticks.
    A thread that ended is no longer counted: compare threads that live on."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
    return total / 1e9


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (its children, theirs, ...), in pid order; read
    from the threads' ``children`` files where the kernel keeps them
    (CONFIG_PROC_CHILDREN), else from every process's parent in ``/proc``."""
    table = None if Path(f"/proc/{pid}/task/{pid}/children").exists() else _children_table()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        below = _children(parent) if table is None else table.get(parent, [])
        found += below
        todo += below
    return sorted(found)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):  # ended meanwhile
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _children_table() -> dict[int, list[int]]:
    """Every process's children, from their parents' pids."""
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError):  # ended meanwhile
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                found.setdefault(parent, []).append(int(entry.name))
    return found


def _status_kb(pid: int, field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(found[1]) if found else 0


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    """The largest RSS process ``pid`` has had (VmHWM)."""
    return _status_kb(pid, "VmHWM")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def curve(values: list[float]) -> list[float]:
    """Percentiles 0 to 100 of ``values``: the distribution, for the plot."""
    return [round(percentile(values, p), 1) for p in range(101)] if values else []


def censored_percentile(values: list[float], total: int, p: float) -> float | None:
    """Percentile ``p`` of ``total`` samples of which only ``values`` were seen in
    time; None when it lies among those not seen."""
    rank = round(p / 100 * (total - 1))
    return round(sorted(values)[rank], 1) if rank < len(values) else None


def fmt_ms(value: float | None, wait: float) -> str:
    return f"> {wait:g} s" if value is None else f"{value:,.0f} ms"


def code_version() -> str:
    """The commit measured, with ``-dirty`` when tracked files differ from it."""
    try:
        described = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # not a git checkout
    return described.stdout.strip()


def header(mode: str, command: str, started: float) -> dict[str, Any]:
    """What every result file starts with: what was run, on what code and machine."""
    return {
        "mode": mode,
        "command": command,
        "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }  # fmt: skip


def write_results(results: dict[str, Any]) -> Path:
    """Writes ``bench/results/<started>-<mode>.json``; returns its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{results['started'].replace(':', '')}-{results['mode']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out
