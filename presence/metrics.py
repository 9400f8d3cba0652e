"""Prometheus metrics, read at scrape time from the counters the workers keep.

A collector per ``Presence`` (and a registry per app) rather than module-level
metrics: several services in one process, as in tests or when embedding, stay
apart, and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .service import Presence


class PresenceCollector(Collector):
    def __init__(self, presence: Presence) -> None:
        self._presence = presence

    def collect(self) -> Iterator[Metric]:
        p = self._presence
        yield GaugeMetricFamily(
            "presence_sse_connections", "Open SSE connections", value=p.local.connections
        )
        if not p.started:
            return
        c = p.consumer
        yield _counter(
            "heartbeats_published", "Heartbeats XADDed for local clients", p.publisher.published
        )
        yield _counter(
            "leaves",
            "Clients announced gone from this server after the leave grace",
            p.publisher.leaves,
        )
        yield _counter("heartbeats_applied", "Heartbeat entries applied", c.applied)
        yield _counter(
            "heartbeats_malformed", "Heartbeat entries skipped as malformed", c.malformed
        )
        yield _counter(
            "heartbeats_stale", "Heartbeat entries ignored as older than the TTL", c.stale
        )
        yield _counter(
            "heartbeats_claimed",
            "Heartbeat entries claimed after staying pending (a stopped server, a failure)",
            c.claimed,
        )
        transitions = CounterMetricFamily(
            "presence_transitions_published",
            "Transitions this process published to the presence stream",
            labels=["status"],
        )
        transitions.add_metric(["ONLINE"], c.online)
        offline = p.sweeper.published + p.listener.published + p.publisher.left
        transitions.add_metric(["OFFLINE"], offline)
        yield transitions
        yield GaugeMetricFamily(
            "presence_sweeper_lag_seconds",
            "Now minus the oldest overdue deadline at the last sweep",
            value=p.sweeper.lag,
        )
        yield GaugeMetricFamily(
            "presence_fanout_lag_seconds",
            "Delivery time minus entry time of the newest presence entry of the last batch",
            value=p.reader.lag,
        )
        yield _counter(
            "queue_overflows", "Connections closed for falling behind", p.local.overflows
        )
        yield _counter("redis_reconnects", "Worker recoveries after Redis failures", p.recoveries)
        yield _counter("redis_outages", "Times Redis became reachable again", p.outage.count)
        yield GaugeMetricFamily(
            "presence_keyspace_events",
            "1 when Redis publishes the keyspace events of online keys, else 0",
            value=1 if p.listener.events else 0,
        )


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(f"presence_{name}", documentation, value=value)


def registry_for(presence: Presence) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PresenceCollector(presence))
    return registry
