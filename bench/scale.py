"""How much each benchmark does: the short run (``make bench``) and the full matrix."""

from __future__ import annotations

from dataclasses import dataclass

#: presence's default: key TTL = factor x heartbeat interval.
TTL_FACTOR = 1.5


@dataclass(frozen=True)
class Scale:
    ingest: list[int]
    ingest_rounds: int
    steady_clients: int
    steady_interval: float
    steady_seconds: float
    fanout: list[tuple[int, int]]
    offline_clients: int
    offline_interval: float
    offline_sample: int
    #: Seconds after the deadlines to wait for Redis's own expired events.
    expired_wait: float
    #: Connect storms: N clients connecting to one server at once, alone and
    #: (for ``storm_busy``) beside a process burning one core.
    storm: list[int]
    storm_busy: list[int]
    #: Rooms (bench/rooms.py): a storm of N clients in rooms of S, beside the
    #: global storm of N.
    rooms_storm: int
    rooms_storm_room_size: int
    #: Steady memberships: clients in K rooms each of the given size, heartbeated
    #: at the interval; measured for so many seconds (a whole number of intervals).
    rooms_steady_clients: int
    rooms_per_client: int
    rooms_steady_room_size: int
    rooms_steady_interval: float
    rooms_steady_seconds: float
    #: Fan-out scaling: bursts of this many UPDATEs to a room of 10, alone and
    #: beside so many idle connections in other rooms.
    rooms_idle_connections: int
    rooms_updates: int


SHORT = Scale(
    ingest=[20_000],
    ingest_rounds=3,
    steady_clients=20_000,
    steady_interval=1.0,
    steady_seconds=8,
    fanout=[(1000, 500)],
    offline_clients=10_000,
    offline_interval=2.0,
    offline_sample=300,
    expired_wait=30,
    storm=[2_000],
    storm_busy=[],
    rooms_storm=2_000,
    rooms_storm_room_size=50,
    rooms_steady_clients=2_000,
    rooms_per_client=5,
    rooms_steady_room_size=50,
    rooms_steady_interval=1.0,
    rooms_steady_seconds=6,
    rooms_idle_connections=1_000,
    rooms_updates=500,
)
FULL = Scale(
    ingest=[1_000, 10_000, 100_000],
    ingest_rounds=5,
    steady_clients=100_000,
    steady_interval=5.0,
    steady_seconds=20,
    fanout=[(1000, 1000), (4000, 250), (8000, 125)],
    offline_clients=100_000,
    offline_interval=5.0,
    offline_sample=1000,
    expired_wait=60,
    storm=[5_000, 10_000],
    storm_busy=[5_000, 10_000],
    rooms_storm=10_000,
    rooms_storm_room_size=50,
    rooms_steady_clients=20_000,
    rooms_per_client=5,
    rooms_steady_room_size=50,
    rooms_steady_interval=5.0,
    rooms_steady_seconds=20,
    rooms_idle_connections=5_000,
    rooms_updates=2_000,
)
