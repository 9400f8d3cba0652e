"""OFFLINE latency at scale: a sample of tracked clients stops; when their OFFLINE
reaches an SSE client, minus their deadline; and, in the same run, when Redis's own
``expired`` event arrives (what a keyspace-only design gets)."""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from .procs import applied, poll, presence_server, redis_server
from .redis_load import publisher
from .scale import TTL_FACTOR, Scale
from .sse_load import Load
from .stats import censored_percentile, curve, fmt_ms, percentile


def bench_offline(scale: Scale) -> dict[str, Any]:
    clients, interval, sample = scale.offline_clients, scale.offline_interval, scale.offline_sample
    ttl_ms = int(interval * TTL_FACTOR * 1000)
    pattern = rb'"client":"b(\d+)x\d+","status":"OFFLINE"'
    with (
        redis_server() as (url, _, _),
        presence_server(url, "--heartbeat-interval", str(interval)) as (port, _pid),
    ):
        r = redis.Redis.from_url(url)
        seconds = 3 * interval + ttl_ms / 1000 + 5
        pub = publisher(url, clients - sample, interval, seconds)
        poll(applied(port, clients - sample), timeout=120, what="everyone tracked")
        watcher = Load(port, ["/clients/watcher/events"], processes=1, pattern=pattern)
        watcher.ready()
        # The sample: one heartbeat each, never another. Their id carries their deadline.
        pipe = r.pipeline(transaction=False)
        for n in range(sample):
            deadline = int(time.time() * 1000) + ttl_ms
            pipe.xadd("heartbeat", {"client": f"b{deadline}x{n}", "server": "ext"})
        pipe.execute()
        poll(
            lambda: len(watcher.stats().latencies_ms) >= sample,
            timeout=ttl_ms / 1000 + 30,
            what="every OFFLINE",
        )
        sweeper = watcher.stats().latencies_ms
        watcher.close()
        pub.terminate()
        pub.join()
    expired = expired_events(scale)
    result: dict[str, Any] = {
        "tracked_clients": clients,
        "interval_s": interval,
        "sample": sample,
        "sweeper_p50_ms": round(percentile(sweeper, 50), 1),
        "sweeper_p99_ms": round(percentile(sweeper, 99), 1),
        "sweeper_max_ms": round(max(sweeper), 1),
        "sweeper_percentiles_ms": curve(sweeper),
        "expired_wait_s": scale.expired_wait,
        "expired_events_received": len(expired),
        # Over the sample, those still missing counting as later than any that came.
        "expired_p50_ms": censored_percentile(expired, sample, 50),
        "expired_p99_ms": censored_percentile(expired, sample, 99),
        "expired_max_ms": round(max(expired), 1) if expired else None,
        "expired_percentiles_ms": curve(expired),
    }
    print(
        f"  OFFLINE after deadline, {clients} tracked: sweeper p99 {result['sweeper_p99_ms']} ms; "
        f"expired events alone: p50 {fmt_ms(result['expired_p50_ms'], scale.expired_wait)}, "
        f"p99 {fmt_ms(result['expired_p99_ms'], scale.expired_wait)} "
        f"({len(expired)}/{sample} within {scale.expired_wait:g} s)"
    )
    return result


def expired_events(scale: Scale) -> list[float]:
    """What a design relying on Redis's ``expired`` events alone gets, as the seed design
    did: the same keys, written as the heartbeat script writes them (SET PX, the
    tracked ones refreshed every interval), nothing else reading them, and how
    long after its deadline each sample key's event arrives. Waits at most
    ``scale.expired_wait`` seconds after the deadlines."""
    clients, interval, sample = scale.offline_clients, scale.offline_interval, scale.offline_sample
    ttl_ms = int(interval * TTL_FACTOR * 1000)
    with redis_server() as (url, _, _):
        r = redis.Redis.from_url(url)
        r.config_set("notify-keyspace-events", "Ex")
        wait = ttl_ms / 1000 + scale.expired_wait
        pub = publisher(
            url, clients - sample, interval, wait + 2 * interval + 10, key_ttl_ms=ttl_ms
        )
        poll(lambda: r.dbsize() >= clients - sample, timeout=120, what="every key written")
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe()
        listener = context.Process(target=_expired_listener, args=(url, sample, wait, sender))
        listener.start()
        receiver.recv()  # subscribed
        pipe = r.pipeline(transaction=False)
        for n in range(sample):
            deadline = int(time.time() * 1000) + ttl_ms
            pipe.set(f"online.clients.b{deadline}x{n}", "ext", px=ttl_ms)
        pipe.execute()
        expired: list[float] = receiver.recv()
        listener.join(5)
        pub.terminate()
        pub.join()
    return expired


def _expired_listener(url: str, sample: int, timeout: float, pipe: Any) -> None:
    async def listen() -> list[float]:
        r = aioredis.from_url(url)
        pubsub = r.pubsub()
        await pubsub.psubscribe("__keyevent@0__:expired")
        pipe.send("subscribed")
        found: list[float] = []
        key = re.compile(rb"online\.clients\.b(\d+)x")
        end = time.monotonic() + timeout
        while len(found) < sample and time.monotonic() < end:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message and (match := key.match(message["data"])):
                found.append(time.time() * 1000 - int(match[1]))
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()
        return found

    pipe.send(asyncio.run(listen()))
