"""The counters of one process's workers, read at once for ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .updates.scoped import ScopedSubscriber

if TYPE_CHECKING:
    from .service import Service


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters since start, and gauges at the moment they were read."""

    connections: int
    heartbeats_published: int
    leaves: int
    heartbeats_applied: int
    heartbeats_malformed: int
    heartbeats_stale: int
    heartbeats_claimed: int
    heartbeats_retried: int
    online_published: int
    offline_published: int
    sweeper_lag: float
    tick_lag: float
    max_tick_lag: float
    fanout_lag: float
    overflows: int
    resets: int
    reconnects: int
    outages: int
    keyspace_events: bool
    #: Rooms with a stream here, room memberships held here, scoped streams.
    rooms: int
    room_memberships: int
    scoped_connections: int
    room_transitions_delivered: int
    room_offline_published: int


def stats_of(service: Service) -> Stats:
    """The counters of a started ``service``."""
    s = service
    consumers, claimers, sweepers = s.consumers, s.claimers, s.sweepers
    return Stats(
        connections=s.connections.open,
        heartbeats_published=s.publisher.published,
        leaves=s.publisher.leaves,
        heartbeats_applied=sum(c.applied for c in consumers),
        heartbeats_malformed=sum(c.malformed for c in consumers),
        heartbeats_stale=sum(c.stale for c in consumers),
        heartbeats_claimed=sum(c.claimed for c in claimers),
        heartbeats_retried=sum(c.retried for c in claimers),
        online_published=sum(c.online for c in consumers),
        offline_published=sum(w.published for w in sweepers)
        + s.listener.published
        + s.publisher.left,
        sweeper_lag=max(w.lag for w in sweepers),
        tick_lag=s.publisher.tick_lag,
        max_tick_lag=s.publisher.max_tick_lag,
        fanout_lag=max(r.lag for r in s.readers),
        overflows=s.connections.overflows,
        resets=s.deliveries.resets + s.scopes.resets,
        reconnects=s.recoveries,
        outages=s.outage.count,
        keyspace_events=bool(s.listener.events),
        rooms=len(s.scopes.rooms),
        room_memberships=s.held.rooms,
        # Connections: in-process listeners have no client.
        scoped_connections=sum(
            1
            for sub in s.connections.subscribers
            if isinstance(sub, ScopedSubscriber) and sub.client is not None
        ),
        room_transitions_delivered=sum(r.delivered for r in s.room_readers.items),
        room_offline_published=sum(w.room_published for w in sweepers),
    )
