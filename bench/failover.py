"""Failover: how long after a primary's SIGKILL presence is true again.

``python -m bench.failover [--clients N] [--rounds R]``: two ``presence serve``
processes on a Sentinel-managed Redis (1 primary, 1 replica, 3 sentinels,
``down-after-milliseconds`` 1000), N SSE clients spread over them. Each round
kills the primary and times, from the kill: the sentinels naming the replica
(the promotion), and ``GET /clients`` on both servers listing exactly the N
clients again. Counted beside: the ``OFFLINE`` events and reset snapshots the
clients received (an ``OFFLINE`` would be a false one: nobody left).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.topology import DOWN_AFTER_MS, Sentinels

from .procs import presence_server
from .stats import header, write_results

INTERVAL = 1.0


async def listed(session: aiohttp.ClientSession, port: int) -> set[str] | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/clients") as response:
            if response.status != 200:
                return None
            return {c["client"] for c in (await response.json())["clients"]}
    except aiohttp.ClientError:
        return None


async def hold_stream(
    session: aiohttp.ClientSession, port: int, client: str, seen: dict[str, int]
) -> None:
    """Hold ``client``'s stream, reconnecting as a browser does; count what matters."""
    url = f"http://127.0.0.1:{port}/clients/{client}/events"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    while True:
        try:
            async with session.get(url, timeout=timeout) as response:
                async for line in response.content:
                    if line.startswith(b"data: ") and b'"OFFLINE"' in line:
                        seen["offline"] += 1
                    elif line.startswith(b"data: ") and b'"reset":true' in line:
                        seen["resets"] += 1
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.5)


async def _round(ports: list[int], sentinels: Sentinels, clients: int) -> dict[str, Any]:
    names = [f"c{i}" for i in range(clients)]
    seen = {"offline": 0, "resets": 0}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [
            asyncio.create_task(hold_stream(session, ports[i % len(ports)], name, seen))
            for i, name in enumerate(names)
        ]
        want = set(names)
        deadline = time.monotonic() + 60
        while not all([await listed(session, p) == want for p in ports]):
            if time.monotonic() > deadline:
                raise RuntimeError("the clients did not come online within 60 s")
            await asyncio.sleep(0.05)
        seen.update(offline=0, resets=0)
        old = sentinels.primary_port()
        killed = time.monotonic()
        sentinels.primary().stop()
        promoted = true_again = None
        while true_again is None or promoted is None:
            now = time.monotonic() - killed
            if promoted is None and sentinels.primary_port() != old:
                promoted = now
            if promoted is not None and all([await listed(session, p) == want for p in ports]):
                true_again = time.monotonic() - killed
            if now > 60:
                raise RuntimeError("presence did not converge within 60 s")
            await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "promoted_s": round(promoted, 3),
        "true_again_s": round(true_again, 3),
        "after_promotion_s": round(true_again - promoted, 3),
        "false_offline_events": seen["offline"],
        "reset_snapshots": seen["resets"],
    }


def bench_failover(clients: int, rounds: int) -> dict[str, Any]:
    results = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            sentinels = Sentinels(Path(tmp))
            try:
                sentinels.start()
                flags = ("--heartbeat-interval", str(INTERVAL))
                with (
                    presence_server(sentinels.url, "--server-id", "node-1", *flags) as (one, _),
                    presence_server(sentinels.url, "--server-id", "node-2", *flags) as (two, _),
                ):
                    results.append(asyncio.run(_round([one, two], sentinels, clients)))
            finally:
                sentinels.stop()
    return {
        "sentinel": {
            "clients": clients,
            "heartbeat_interval_s": INTERVAL,
            "down_after_ms": DOWN_AFTER_MS,
            "rounds": results,
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.time()
    results = header("failover", "python -m bench.failover", started)
    results.update(bench_failover(args.clients, args.rounds))
    print(json.dumps(results, indent=2))
    print(f"written to {write_results(results)}")


if __name__ == "__main__":
    main()
