"""The latency distributions of one benchmark run, as a PNG for the README.

``python -m bench.plot bench/results/<run>.json docs/bench-latency.png``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

PERCENTILES = list(range(101))


def plot(results: dict[str, Any], out: Path) -> None:
    panels = [_online, _fanout, _offline, _update]
    # A Figure of its own, not pyplot's: no backend, no display, no global state.
    fig = Figure(figsize=(20, 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for draw, ax in zip(panels, axes, strict=True):
        draw(results, ax)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("percentile")
        ax.set_ylim(0, 100)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a partial run leaves panels empty
            ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"presence latency, {results['command']} ({results['started']})")
    fig.savefig(out, dpi=100)


def _curve(ax: Axes, values: list[float], label: str, **style: Any) -> None:
    if values:
        # A log axis has no zero: sub-0.1 ms deliveries sit at its left edge.
        ax.plot([max(v, 0.1) for v in values], PERCENTILES, label=label, **style)


def _online(results: dict[str, Any], ax: Axes) -> None:
    steady = results.get("ingest", {}).get("steady", {})
    label = f"{steady.get('clients', 0):,} clients / {steady.get('interval_s', 0):g} s"
    _curve(ax, steady.get("online_percentiles_ms", []), label)
    ax.set_title("ONLINE: heartbeat XADD to SSE client")
    ax.set_xlabel("ms")


def _fanout(results: dict[str, Any], ax: Axes) -> None:
    for i, row in enumerate(results.get("fanout", [])):
        n, color = f"{row['connections']:,}", f"C{i}"  # one color per N, nchan dashed
        _curve(ax, row["presence"].get("percentiles_ms", []), f"presence, {n} conns", color=color)
        _curve(ax, row["nchan"].get("percentiles_ms", []), f"nchan, {n} conns", color=color,
               linestyle="--")  # fmt: skip
    ax.set_title("fan-out: send to delivery, every connection")
    ax.set_xlabel("ms")


def _offline(results: dict[str, Any], ax: Axes) -> None:
    offline = results.get("offline", {})
    _curve(ax, offline.get("sweeper_percentiles_ms", []), "presence (sweeper)")
    expired = offline.get("expired_percentiles_ms", [])
    if expired:
        # Percentiles of those that came in time, scaled to the whole sample.
        share = offline["expired_events_received"] / offline["sample"]
        ax.plot([max(v, 0.1) for v in expired], [p * share for p in PERCENTILES],
                label=f"Redis expired events alone ({share:.0%} within "
                f"{offline['expired_wait_s']:g} s)", linestyle="--")  # fmt: skip
    tracked = offline.get("tracked_clients", 0)
    ax.set_title(f"OFFLINE after the deadline, {tracked:,} tracked")
    ax.set_xlabel("ms")


def _update(results: dict[str, Any], ax: Axes) -> None:
    steady = results.get("rooms", {}).get("steady", {})
    for key, label in (("idle", "idle"), ("global", "global load"), ("rooms", "load in rooms")):
        row = steady.get(key, {})
        _curve(ax, row.get("update_percentiles_ms", []), label)
    rooms = steady.get("rooms", {})
    ax.set_title(
        f"UPDATE: PUT to SSE member, {rooms.get('clients', 0):,} clients x "
        f"{rooms.get('rooms_per_client', 0)} rooms"
    )
    ax.set_xlabel("ms")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    plot(json.loads(Path(args[0]).read_text()), Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
