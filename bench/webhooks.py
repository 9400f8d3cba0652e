"""Webhooks: transitions per second one presence process posts to a local
receiver, and the latency a webhook adds, from the transition to the POST.

``python -m bench.webhooks [--burst N] [--rate R] [--seconds S]``

1. Throughput: N clients heartbeated at once (raw XADDs to ``heartbeat``), each
   one ONLINE; the receiver counts them in. Transitions per second from the
   first POST received to the last, and from the first heartbeat sent.
2. Latency under a steady load: R room heartbeats a second for S seconds, each
   a new member of one of ``ROOMS`` rooms, so a global and a room ONLINE (and
   their OFFLINEs a TTL later); for each event, its arrival at the receiver
   minus its stream entry's time (``time_ms``), p50/p99/max.

One presence server, signing its requests (``--webhook-secret``); the receiver
is an aiohttp server in this process, answering 200 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from .procs import free_port, presence_server, redis_server
from .stats import curve, header, percentile, write_results

ROOMS = 10
INTERVAL = 2.0


class Receiver:
    def __init__(self) -> None:
        #: (arrival Unix ms, event) of every event received.
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time() * 1000
        self.requests += 1
        self.events += ((now, e) for e in json.loads(await request.read())["events"])
        return web.Response(status=200)


async def _with_receiver(run: Any) -> dict[str, Any]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with redis_server() as (url, _, _):
            flags = ["--webhook-url", f"http://127.0.0.1:{port}/hook", "--webhook-secret", "s"]
            flags += ["--heartbeat-interval", str(INTERVAL)]
            with presence_server(url, *flags):
                r = aioredis.from_url(url)
                try:
                    result: dict[str, Any] = await run(r, found)
                finally:
                    await r.aclose()
    finally:
        await runner.cleanup()
    return result


async def _until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def throughput(burst: int) -> dict[str, Any]:
    async def run(r: Any, found: Receiver) -> dict[str, Any]:
        sent = time.time() * 1000
        pipe = r.pipeline(transaction=False)
        for i in range(burst):
            pipe.xadd("heartbeat", {"client": f"b{i}", "server": "ext"})
        await pipe.execute()
        await _until(lambda: len(found.events) >= burst, 120, "every ONLINE posted")
        first, last = found.events[0][0], found.events[burst - 1][0]
        return {
            "transitions": burst,
            "requests": found.requests,
            "per_second_posting": round(burst / max(last - first, 1) * 1000),
            "per_second_from_heartbeats": round(burst / max(last - sent, 1) * 1000),
        }

    return await _with_receiver(run)


async def latency(rate: int, seconds: float) -> dict[str, Any]:
    async def run(r: Any, found: Receiver) -> dict[str, Any]:
        started, sent = time.monotonic(), 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                pipe = r.pipeline(transaction=False)
                for i in range(sent, sent + due):
                    fields = {"client": f"m{i}", "server": "ext", "room": f"r{i % ROOMS}"}
                    pipe.xadd("heartbeat", fields)
                await pipe.execute()
                sent += due
            await asyncio.sleep(0.005)

        # Every ONLINE, global and room (the OFFLINEs due by then count too).
        def onlines() -> int:
            return sum(e["status"] == "ONLINE" for _, e in found.events)

        await _until(lambda: onlines() >= 2 * sent, 60, "every ONLINE posted")
        lags = [at - e["time_ms"] for at, e in found.events]
        return {
            "rate_per_second": rate,
            "seconds": seconds,
            "events": len(lags),
            "requests": found.requests,
            "p50_ms": round(percentile(lags, 50), 1),
            "p99_ms": round(percentile(lags, 99), 1),
            "max_ms": round(max(lags), 1),
            "percentiles_ms": curve(lags),
        }

    return await _with_receiver(run)


def bench_webhooks(burst: int, rate: int, seconds: float) -> dict[str, Any]:
    through = asyncio.run(throughput(burst))
    print(
        f"  webhook throughput: {through['transitions']} transitions, "
        f"{through['per_second_posting']}/s posted ({through['per_second_from_heartbeats']}/s "
        f"from the heartbeats), {through['requests']} requests"
    )
    lag = asyncio.run(latency(rate, seconds))
    print(
        f"  webhook latency at {rate} room heartbeats/s: p50 {lag['p50_ms']} ms, "
        f"p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms over {lag['events']} events"
    )
    return {"throughput": through, "latency": lag}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhooks", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--burst", type=int, default=20_000, metavar="N")
    parser.add_argument("--rate", type=int, default=250, metavar="R")
    parser.add_argument("--seconds", type=float, default=10.0, metavar="S")
    args = parser.parse_args(argv)
    started = time.time()
    command = "python -m bench.webhooks " + " ".join(argv if argv is not None else sys.argv[1:])
    results = header("webhooks", command.strip(), started) | {"interval_s": INTERVAL}
    results |= bench_webhooks(args.burst, args.rate, args.seconds)
    results["seconds"] = round(time.time() - started, 1)
    out = write_results(results)
    print(f"wrote {out} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
