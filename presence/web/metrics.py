"""Prometheus metrics, read at scrape time from the counters the workers keep.

A collector per service (and a registry per app) rather than module-level
metrics: several services in one process, as in tests or when embedding, stay
apart, and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..stats import stats_of

if TYPE_CHECKING:
    from ..service import Service
    from .guard import Guard


class PresenceCollector(Collector):
    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        p = self._service
        yield GaugeMetricFamily(
            "presence_sse_connections", "Open SSE connections", value=p.connections.open
        )
        # The settings the lag gauges are judged against, for alerting rules:
        # a tick later than TTL - interval lets connected clients' keys expire.
        settings = p.settings
        yield GaugeMetricFamily(
            "presence_heartbeat_interval_seconds",
            "Seconds between two heartbeats of a connected client (--heartbeat-interval)",
            value=settings.heartbeat_interval,
        )
        yield GaugeMetricFamily(
            "presence_heartbeat_ttl_seconds",
            "TTL of a connected client's online key (--ttl-factor x --heartbeat-interval)",
            value=settings.ttl_ms / 1000,
        )
        if not p.started:
            return
        s = stats_of(p)
        # The supervised loops /healthz reports on; the service keeps its
        # list private, and reading it costs nothing at scrape time.
        workers = p._workers
        yield GaugeMetricFamily(
            "presence_workers", "Supervised background loops of this process", value=len(workers)
        )
        yield GaugeMetricFamily(
            "presence_workers_failing",
            "Supervised loops failing now (retried with backoff) or not running, as /healthz "
            "lists them",
            value=sum(1 for w in workers if w.problem is not None),
        )
        yield GaugeMetricFamily(
            "presence_redis_unreachable",
            "1 while some worker of this process cannot reach Redis (an outage under way), else 0",
            value=1 if p.outage.active else 0,
        )
        yield _counter(
            "heartbeats_published", "Heartbeats XADDed for local clients", s.heartbeats_published
        )
        yield _counter(
            "leaves", "Clients announced gone from this server after the leave grace", s.leaves
        )
        yield _counter("heartbeats_applied", "Heartbeat entries applied", s.heartbeats_applied)
        yield _counter(
            "heartbeats_malformed", "Heartbeat entries skipped as malformed", s.heartbeats_malformed
        )
        yield _counter(
            "heartbeats_stale",
            "Heartbeat entries that changed nothing: older than the TTL, or sent before a leave",
            s.heartbeats_stale,
        )
        yield _counter(
            "heartbeats_claimed",
            "Heartbeat entries another server read but left pending for over the claim "
            "delay in two checks (it stopped, froze or lost Redis), applied here",
            s.heartbeats_claimed,
        )
        yield _counter(
            "heartbeats_retried",
            "This server's heartbeat entries applied again after staying pending (Redis "
            "failed them, or this server was stalled)",
            s.heartbeats_retried,
        )
        yield GaugeMetricFamily(
            "presence_heartbeats_pending_overdue",
            "Heartbeat entries found pending over the claim delay at the last check, "
            "claimed at the next (at most 1000 a shard)",
            # The claimer's last sighting: what it claims next if still pending.
            value=sum(len(c._found) for c in p.claimers),
        )
        transitions = CounterMetricFamily(
            "presence_transitions_published",
            "Transitions this process published to the presence stream",
            labels=["status"],
        )
        transitions.add_metric(["ONLINE"], s.online_published)
        transitions.add_metric(["OFFLINE"], s.offline_published)
        yield transitions
        yield GaugeMetricFamily(
            "presence_sweeper_lag_seconds",
            "Now minus the oldest overdue deadline at the last sweep",
            value=s.sweeper_lag,
        )
        yield _counter(
            "sweeper_held_back",
            "Sweeps that read what was due too late to act on it (Redis held the call "
            "over half the TTL slack) and waited a heartbeat interval instead",
            sum(w.held_back for w in p.sweepers),
        )
        yield GaugeMetricFamily(
            "presence_heartbeat_tick_lag_seconds",
            "How late the last heartbeat tick ran (a tick later than TTL - interval "
            "lets keys of connected clients expire)",
            value=s.tick_lag,
        )
        yield GaugeMetricFamily(
            "presence_heartbeat_tick_lag_max_seconds",
            "The latest any heartbeat tick ran since start",
            value=s.max_tick_lag,
        )
        yield GaugeMetricFamily(
            "presence_fanout_lag_seconds",
            "Delivery time minus entry time of the newest presence entry of the last batch",
            value=s.fanout_lag,
        )
        yield _counter(
            "queue_overflows",
            "Connections dropped: they fell behind and stopped reading",
            s.overflows,
        )
        yield _counter(
            "fanout_resets",
            "Fresh snapshots sent to subscribers that fell behind, instead of what they missed",
            s.resets,
        )
        yield _counter("redis_reconnects", "Worker recoveries after Redis failures", s.reconnects)
        yield _counter("redis_outages", "Times Redis became reachable again", s.outages)
        yield GaugeMetricFamily(
            "presence_rooms", "Rooms with a member's stream here", value=s.rooms
        )
        yield GaugeMetricFamily(
            "presence_rooms_followed",
            "Distinct rooms streams here follow (room and occupancy), capped by --max-rooms",
            value=p.scopes.followed,
        )
        yield GaugeMetricFamily(
            "presence_room_memberships",
            "Room memberships this server holds (heartbeats, or in their leave grace)",
            value=s.room_memberships,
        )
        yield GaugeMetricFamily(
            "presence_scoped_connections",
            "Open SSE connections scoped to rooms, a watch list or occupancy",
            value=s.scoped_connections,
        )
        yield _counter(
            "room_transitions_delivered",
            "Room transitions read and routed to this server's room streams",
            s.room_transitions_delivered,
        )
        yield _counter(
            "room_offline_published",
            "Room OFFLINEs this process's sweeper published (memberships past their deadline)",
            s.room_offline_published,
        )
        yield GaugeMetricFamily(
            "presence_keyspace_events",
            "1 when Redis publishes the keyspace events of online keys, else 0",
            value=1 if s.keyspace_events else 0,
        )
        if (hooks := p.webhooks) is not None:
            deliveries = CounterMetricFamily(
                "presence_webhook_deliveries",
                "Transitions posted to the webhook (ok), in attempts that failed and are "
                "retried (retry), trimmed from their stream before they were posted "
                "(dropped), in requests the receiver refused for good, given up (rejected)",
                labels=["result"],
            )
            deliveries.add_metric(["ok"], hooks.ok)
            deliveries.add_metric(["retry"], hooks.retried)
            deliveries.add_metric(["dropped"], hooks.dropped)
            deliveries.add_metric(["rejected"], hooks.rejected)
            yield deliveries
            yield GaugeMetricFamily(
                "presence_webhook_lag_seconds",
                "Age of the oldest transition not acknowledged yet that this server's last "
                "look at each stream found; 0 when every one was caught up",
                value=hooks.lag,
            )


class GuardCollector(Collector):
    """The connections of ``serve``'s listener (``guard``)."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        g = self._guard
        yield GaugeMetricFamily(
            "presence_http_connections",
            "Open HTTP connections of every kind: streams, requests, and those still "
            "sending theirs",
            value=g.connections,
        )
        yield GaugeMetricFamily(
            "presence_http_connections_max",
            "HTTP connections this process holds at most (--max-connections and an eighth)",
            value=g.cap,
        )
        refused = CounterMetricFamily(
            "presence_connections_refused",
            "Connections closed as soon as accepted: the process held all it may (cap), "
            "or their address did (address)",
            labels=["reason"],
        )
        refused.add_metric(["cap"], g.refused_full)
        refused.add_metric(["address"], g.refused_address)
        yield refused
        yield _counter(
            "connections_evicted",
            "Connections closed at the cap to make room: they were waiting for a request "
            "(half-sent, or idle between two)",
            g.evicted,
        )
        yield _counter(
            "requests_timed_out",
            "Requests whose line and headers, or body, did not arrive within --request-timeout, "
            "and responses left unread for --stall-timeout",
            g.timed_out,
        )
        yield _counter(
            "requests_malformed", "Requests refused by the HTTP parser with a 400", g.malformed
        )
        yield _counter(
            "accept_errors",
            "Connections the kernel could not hand over: accept() out of descriptors",
            g.accept_errors,
        )


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(f"presence_{name}", documentation, value=value)


def registry_for(service: Service) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PresenceCollector(service))
    return registry
