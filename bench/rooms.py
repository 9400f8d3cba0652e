"""Rooms: scoped presence under load, each figure beside a reference from the same run.

1. Room storm: N clients in rooms of S connect at once to one process, each
   streaming its own room (``?room=``), until every client has seen its whole
   room online; beside the global storm of the same N (bench/storm.py, the same
   C load). Also counted: the ``ONLINE`` entries of every room's stream (one per
   member) and any ``OFFLINE``, which nobody caused.
2. Steady memberships: one process holding N clients in K rooms each (bench/held.py:
   its own publisher heartbeats every membership each interval), against the
   same process holding N x K clients in no room, the same number of heartbeats
   a second: the process's CPU, and Redis's CPU per heartbeat applied (``INFO``'s
   ``used_cpu_sys`` + ``used_cpu_user``).
3. UPDATE latency under that load: a few SSE clients in one more room; one of
   them has its data PUT again and again, and the time runs from the PUT to the
   ``UPDATE`` at the others' streams. Also measured on an idle process and under
   the global load.
4. Fan-out scaling: UPDATEs of a room of 10 members, alone on a process and then
   beside M idle connections in other rooms (rooms of 50, the C load), and beside
   as many in rooms of 5: a burst, and one at a time. The entries are added to
   the room's stream as a PUT on another server adds them, so what is timed is
   this process's delivery: it should cost the room's members, not every
   connection or room.

``python -m bench.rooms [--full]``; ``python -m bench --only rooms`` runs it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from functools import partial
from typing import Any, TypeVar

import aiohttp
import redis

from .cload import CLoad
from .held import memberships, rooms_of
from .procs import applied, metric, poll, presence_server, redis_server
from .scale import FULL, SHORT, Scale
from .stats import cpu_precise, cpu_seconds, curve, header, percentile, write_results
from .storm import LOAD_NICENESS, storm

T = TypeVar("T")

#: Members of the room whose data is PUT (the first) and watched (the others).
PROBE_MEMBERS = 4
PROBE_ROOM = "probe"
#: Seconds between two PUTs.
PROBE_EVERY = 0.05
#: Members of the room whose UPDATEs are fanned out, and the idle rooms' size.
FAN_MEMBERS = 10
FAN_ROOM = "fan"
IDLE_ROOM_SIZE = 50
#: The same idle connections in ten times the rooms: what grows with rooms.
SMALL_ROOM_SIZE = 5
#: UPDATEs sent one at a time, each once the previous one reached every member.
ONE_AT_A_TIME = 500
BURSTS = 3
#: Seconds of idle CPU measured before a burst, to take out of its CPU.
BACKGROUND_S = 1.0
#: "Near 1" for a ratio that should be 1.
NEAR_ONE = 1.25


def bench_rooms(scale: Scale) -> dict[str, Any]:
    results: dict[str, Any] = {
        "storm": room_storm(scale.rooms_storm, scale.rooms_storm_room_size),
        "steady": steady(
            scale.rooms_steady_clients,
            scale.rooms_per_client,
            scale.rooms_steady_room_size,
            scale.rooms_steady_interval,
            scale.rooms_steady_seconds,
        ),
        "fanout": fanout(scale.rooms_idle_connections, scale.rooms_updates),
    }
    results["targets"] = targets(results)
    for name, row in results["targets"].items():
        print(f"  {name}: {row['value']} (target {row['target']}: {_met(row['met'])})")
    return results


def _met(met: bool | None) -> str:
    return "met" if met else "not measured" if met is None else "missed"


# --- 1. the room storm -----------------------------------------------------------------


def room_storm(clients: int, room_size: int) -> dict[str, Any]:
    """The storm in rooms, then the global one of as many clients."""
    rooms = storm(clients, room_size=room_size, fanout=False)
    everyone = storm(clients, fanout=False)
    took, reference = rooms["converged_s"], everyone["converged_s"]
    ratio = round(took / reference, 3) if took is not None and reference else None
    print(f"  room storm / global storm: {took} s / {reference} s = {ratio}", flush=True)
    return {"rooms": rooms, "global": everyone, "ratio_to_global": ratio}


# --- SSE clients in one room ------------------------------------------------------------


class RoomStreams:
    """SSE streams of some members of one room, read by an event loop in a thread
    of its own: who each sees online, and when each ``UPDATE`` reached each one
    (by the number ``n`` in the member data).

    Times are ``time.monotonic()``, the clock senders in other threads use too;
    each UPDATE's wall-clock arrival is kept as well, beside the time its entry
    was written in Redis (the stream position in its event id, in ms).
    """

    def __init__(self, port: int, room: str, members: list[str]) -> None:
        self._port = port
        self._room = room
        self.members = members
        #: n -> arrival times of its UPDATE, one per member that received it.
        self.arrivals: dict[int, list[float]] = defaultdict(list)
        self.arrivals_wall: dict[int, list[float]] = defaultdict(list)
        #: n -> when Redis wrote its entry (Unix ms).
        self.written_ms: dict[int, int] = {}
        #: Member -> the others it knows are online.
        self.online: dict[str, set[str]] = {m: set() for m in members}
        self.other_events = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._readers: list[asyncio.Task[None]] = []
        self.call(self._open())

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run ``coroutine`` on the streams' loop; its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(
            f"http://127.0.0.1:{self._port}", timeout=aiohttp.ClientTimeout(total=None)
        )
        for member in self.members:
            response = await self._session.get(
                f"/clients/{member}/events", params={"room": self._room}
            )
            if response.status != 200:
                raise RuntimeError(f"{member}'s stream: HTTP {response.status}")
            self._readers.append(asyncio.create_task(self._read(member, response)))

    async def _read(self, member: str, response: aiohttp.ClientResponse) -> None:
        event, data, event_id = b"", b"", b""
        async for raw in response.content:
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
            elif line.startswith(b"id:"):
                event_id = line[3:].strip()
            elif not line and data:
                self._dispatch(member, event, data, event_id)
                event, data = b"", b""

    def _dispatch(self, member: str, event: bytes, data: bytes, event_id: bytes) -> None:
        now, wall = time.monotonic(), time.time()
        found = json.loads(data)
        if event == b"snapshot":
            self.online[member] = {m["client"] for m in found["rooms"][self._room]}
        elif event == b"presence" and found["status"] == "UPDATE" and "n" in found.get("data", {}):
            n = found["data"]["n"]
            self.arrivals[n].append(now)
            self.arrivals_wall[n].append(wall)
            # A stream of one room: "<scope tag>.<ms>-<seq>".
            self.written_ms[n] = int(event_id.rsplit(b".", 1)[-1].split(b"-")[0])
        elif event == b"presence" and found["status"] in ("ONLINE", "OFFLINE"):
            seen = self.online[member]
            (seen.add if found["status"] == "ONLINE" else seen.discard)(found["client"])
        else:
            self.other_events += 1

    def wait_joined(self, timeout: float = 60) -> None:
        """Until every member knows every other is online."""
        others = len(self.members) - 1
        poll(lambda: all(len(s) >= others for s in self.online.values()), timeout, "the joins")

    def reached(self, n: int) -> bool:
        """Whether UPDATE ``n`` reached every member but the one it is about."""
        return len(self.arrivals.get(n, ())) >= len(self.members) - 1

    async def put_data(self, member: str, data: dict[str, Any]) -> None:
        assert self._session is not None
        path = f"/rooms/{self._room}/clients/{member}/data"
        async with self._session.put(path, json=data) as response:
            if response.status != 200:
                raise RuntimeError(f"PUT {path}: HTTP {response.status}")

    def close(self) -> None:
        async def close() -> None:
            for task in self._readers:
                task.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            if self._session is not None:
                await self._session.close()

        self.call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# --- 2 and 3. steady memberships, and UPDATE latency under them --------------------------


def steady(
    clients: int, rooms_per_client: int, room_size: int, interval: float, seconds: float
) -> dict[str, Any]:
    """UPDATE latency on an idle process, then the global load and the load in rooms
    of as many heartbeats a second, each on a process and Redis of its own."""
    beats = memberships(clients, rooms_per_client)
    idle = _steady(0, 0, room_size, interval, seconds)
    everyone = _steady(beats, 0, room_size, interval, seconds)
    rooms = _steady(clients, rooms_per_client, room_size, interval, seconds)
    redis_ratio = _ratio(
        rooms["redis_cpu_us_per_heartbeat"], everyone["redis_cpu_us_per_heartbeat"]
    )
    row = {
        "idle": idle,
        "global": everyone,
        "rooms": rooms,
        "ratio_redis_cpu_per_heartbeat": redis_ratio,
        "ratio_server_core_fraction": _ratio(
            rooms["server_core_fraction"], everyone["server_core_fraction"]
        ),
        "ratio_update_p99_to_idle": _ratio(rooms["update_p99_ms"], idle["update_p99_ms"]),
    }
    print(
        f"  steady {clients:,} clients x {rooms_per_client} rooms / {interval:g} s: "
        f"{rooms['server_core_fraction']:.0%} of a core "
        f"(global {beats:,} clients: {everyone['server_core_fraction']:.0%}); "
        f"Redis {rooms['redis_cpu_us_per_heartbeat']} µs per heartbeat "
        f"(global {everyone['redis_cpu_us_per_heartbeat']} µs, ratio {redis_ratio}); "
        f"UPDATE p50 {rooms['update_p50_ms']} ms p99 {rooms['update_p99_ms']} ms "
        f"(idle p99 {idle['update_p99_ms']} ms, global load p99 {everyone['update_p99_ms']} ms)",
        flush=True,
    )
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _steady(
    clients: int, rooms_per_client: int, room_size: int, interval: float, seconds: float
) -> dict[str, Any]:
    beats = memberships(clients, rooms_per_client) if clients else 0
    program = ("-m", "bench.held", "--clients", str(clients), "--rooms-per-client",
               str(rooms_per_client), "--room-size", str(room_size))  # fmt: skip
    flags = ("--heartbeat-interval", str(interval))
    with (
        redis_server() as (url, _rport, _rpid),
        presence_server(url, *flags, program=program) as (port, pid),
    ):
        r = redis.Redis.from_url(url)
        if beats:
            # The first round makes everyone ONLINE; the next tick is the first
            # of the steady state.
            poll(applied(port, beats), timeout=120, what="the first round", every=0.5)
            time.sleep(interval + 1)
        members = [f"p{i}" for i in range(PROBE_MEMBERS)]
        streams = RoomStreams(port, PROBE_ROOM, members)
        try:
            streams.wait_joined()
            before = _counters(r, port, pid)
            latencies = streams.call(_probe(streams, seconds), timeout=seconds + 60)
            after = _counters(r, port, pid)
        finally:
            streams.close()
        row = _window(before, after) | {
            "clients": clients,
            "rooms_per_client": rooms_per_client,
            "rooms": clients * rooms_per_client // room_size,
            "interval_s": interval,
            "heartbeats_per_interval": beats,
            "update_puts": len(latencies.sent),
            "update_received": len(latencies.ms),
            "update_p50_ms": _round(percentile(latencies.ms, 50)),
            "update_p99_ms": _round(percentile(latencies.ms, 99)),
            "update_max_ms": _round(max(latencies.ms, default=float("nan"))),
            "update_percentiles_ms": curve(latencies.ms),
            # Where it went: the PUT's round trip, the PUT to its entry in
            # Redis, and that entry to the UPDATE at a member (1 ms resolution).
            "put_p50_ms": _round(percentile(latencies.put_ms, 50)),
            "put_p99_ms": _round(percentile(latencies.put_ms, 99)),
            "to_redis_p50_ms": _round(percentile(latencies.to_redis_ms, 50)),
            "to_redis_p99_ms": _round(percentile(latencies.to_redis_ms, 99)),
            "from_redis_p50_ms": _round(percentile(latencies.from_redis_ms, 50)),
            "from_redis_p99_ms": _round(percentile(latencies.from_redis_ms, 99)),
            "other_events": streams.other_events,
        }
        if beats:
            row |= _health(r, port, clients, rooms_per_client, room_size)
    return row


def _round(value: float) -> float | None:
    return None if value != value else round(value, 1)  # NaN: nothing measured


class Latencies:
    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.sent_wall: dict[int, float] = {}
        #: PUT to UPDATE at a member, each member.
        self.ms: list[float] = []
        #: The PUT's round trip; from the PUT to its entry in Redis; from that
        #: entry to its UPDATE at a member (ms, the clock of the machine).
        self.put_ms: list[float] = []
        self.to_redis_ms: list[float] = []
        self.from_redis_ms: list[float] = []


async def _probe(streams: RoomStreams, seconds: float) -> Latencies:
    """PUT the first member's data every ``PROBE_EVERY`` for ``seconds``; the
    latency of each UPDATE to each other member."""
    found = Latencies()
    first = streams.members[0]
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while loop.time() - start < seconds:
        found.sent[n], found.sent_wall[n] = time.monotonic(), time.time()
        await streams.put_data(first, {"n": n})
        found.put_ms.append((time.monotonic() - found.sent[n]) * 1000)
        n += 1
        await asyncio.sleep(max(0.0, start + n * PROBE_EVERY - loop.time()))
    for _ in range(100):  # the last ones: 5 s at most
        if all(streams.reached(k) for k in found.sent):
            break
        await asyncio.sleep(0.05)
    found.ms = [
        (at - sent) * 1000 for k, sent in found.sent.items() for at in streams.arrivals.get(k, ())
    ]
    for k, sent in found.sent_wall.items():
        if (written := streams.written_ms.get(k)) is not None:
            found.to_redis_ms.append(written - sent * 1000)
            found.from_redis_ms += [at * 1000 - written for at in streams.arrivals_wall[k]]
    return found


def _counters(r: redis.Redis, port: int, pid: int) -> dict[str, float]:
    info: dict[str, Any] = r.info("cpu")
    return {
        "time": time.monotonic(),
        "server_cpu": cpu_seconds(pid),
        "redis_cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "applied": metric(port, "presence_heartbeats_applied_total"),
        "published": metric(port, "presence_heartbeats_published_total"),
    }


def _window(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {key: after[key] - before[key] for key in before}
    applied = d["applied"]
    return {
        "seconds": round(d["time"], 2),
        "server_core_fraction": round(d["server_cpu"] / d["time"], 3),
        "redis_core_fraction": round(d["redis_cpu"] / d["time"], 3),
        "heartbeats_applied": int(applied),
        "heartbeats_published": int(d["published"]),
        "applied_per_s": round(applied / d["time"]),
        "redis_cpu_us_per_heartbeat": round(d["redis_cpu"] / applied * 1e6, 2) if applied else None,
        "server_cpu_us_per_heartbeat": round(d["server_cpu"] / applied * 1e6, 2)
        if applied
        else None,
    }


def _health(
    r: redis.Redis, port: int, clients: int, rooms_per_client: int, room_size: int
) -> dict[str, Any]:
    """Whether the load was held: no OFFLINE (nobody left), no stale heartbeat,
    the consumers caught up, and how late the publisher's ticks ran."""
    group = next(g for g in r.xinfo_groups("heartbeat") if g["name"] == b"presence")
    rooms = sorted(
        {room for i in range(clients) for room in rooms_of(i, clients, rooms_per_client, room_size)}
    )
    return {
        "presence_offline": _statuses(r, ["presence"])["OFFLINE"],
        "room_statuses": _statuses(r, [f"room.{{{room}}}.presence" for room in rooms]),
        "heartbeats_stale": int(metric(port, "presence_heartbeats_stale_total")),
        "heartbeat_tick_lag_max_s": round(
            metric(port, "presence_heartbeat_tick_lag_max_seconds"), 3
        ),
        # Heartbeat entries not read yet by the consumer group at the end.
        "heartbeat_group_lag": group.get("lag"),
        "heartbeat_group_pending": group["pending"],
    }


def _statuses(r: redis.Redis, keys: list[str]) -> dict[str, int]:
    """ONLINE, UPDATE and OFFLINE entries in the transition streams ``keys``."""
    counts = {"ONLINE": 0, "UPDATE": 0, "OFFLINE": 0}
    for start in range(0, len(keys), 500):
        pipe = r.pipeline(transaction=False)
        for key in keys[start : start + 500]:
            pipe.xrange(key)
        for entries in pipe.execute():
            for _id, fields in entries:
                status = fields.get(b"status", b"").decode()
                counts[status] = counts.get(status, 0) + 1
    return counts


# --- 4. fan-out scaling -----------------------------------------------------------------


def fanout(idle_connections: int, updates: int) -> dict[str, Any]:
    """A room of ``FAN_MEMBERS``, its UPDATEs alone on the process, then beside
    ``idle_connections`` in other rooms of ``IDLE_ROOM_SIZE`` (the target's
    comparison), then beside as many in rooms of ``SMALL_ROOM_SIZE`` (as many
    connections, ten times the rooms), then alone again once they are gone:
    "alone" is the mean of the first and the last, so that a drift of the
    machine's speed over the run weighs on both sides."""
    with (
        redis_server() as (url, _rport, _rpid),
        presence_server(
            url, max_connections=idle_connections + 1_000, max_connections_per_client=None
        ) as (port, pid),
    ):
        r = redis.Redis.from_url(url)
        members = [f"f{i}" for i in range(FAN_MEMBERS)]
        streams = RoomStreams(port, FAN_ROOM, members)
        try:
            streams.wait_joined()
            before = _updates(streams, r, pid, updates, base=0)
            beside = [
                _beside(streams, r, port, pid, idle_connections, size, updates, base=n * 1_000_000)
                for n, size in enumerate((IDLE_ROOM_SIZE, SMALL_ROOM_SIZE), start=1)
            ]
            after = _updates(streams, r, pid, updates, base=9_000_000)
        finally:
            streams.close()
    keys = ("burst_ms_per_update", "burst_server_us_per_update", "one_p50_ms", "one_p99_ms")
    alone = {key: round((before[key] + after[key]) / 2, 4) for key in keys}
    row: dict[str, Any] = {
        "members": FAN_MEMBERS,
        "idle_connections": idle_connections,
        "idle_rooms": beside[0]["idle_rooms"],
        "alone": alone,
        "alone_before": before,
        "beside": beside[0],
        "beside_small_rooms": beside[1],
        "alone_after": after,
    }
    for key in keys:
        row[f"ratio_{key}"] = _ratio(beside[0][key], alone[key])
        row[f"small_rooms_ratio_{key}"] = _ratio(beside[1][key], alone[key])
    print(
        f"  fan-out, room of {FAN_MEMBERS}, {updates:,} UPDATEs: alone "
        f"{alone['burst_server_us_per_update']} µs of server CPU each, "
        f"one at a time p50 {alone['one_p50_ms']} ms; beside {idle_connections:,} idle "
        f"connections in {beside[0]['idle_rooms']:,} rooms "
        f"{beside[0]['burst_server_us_per_update']} µs, {beside[0]['one_p50_ms']} ms "
        f"(ratios {row['ratio_burst_server_us_per_update']}, {row['ratio_one_p50_ms']}); "
        f"in {beside[1]['idle_rooms']:,} rooms {beside[1]['burst_server_us_per_update']} µs, "
        f"{beside[1]['one_p50_ms']} ms "
        f"(ratios {row['small_rooms_ratio_burst_server_us_per_update']}, "
        f"{row['small_rooms_ratio_one_p50_ms']})",
        flush=True,
    )
    return row


def _beside(
    streams: RoomStreams,
    r: redis.Redis,
    port: int,
    pid: int,
    idle_connections: int,
    room_size: int,
    updates: int,
    base: int,
) -> dict[str, Any]:
    """:func:`_updates` beside ``idle_connections`` in rooms of ``room_size``; back
    to the room alone after."""
    load = CLoad(port, idle_connections, 1, niceness=LOAD_NICENESS, spread_ms=0.0,
                 room_size=room_size)  # fmt: skip
    try:
        load.go()
        poll(lambda: all(s["all_converged_at"] for s in load.ask()), 120, "the idle rooms")
        time.sleep(2)  # their joins delivered: idle from here
        connections = metric(port, "presence_sse_connections")
        found = _updates(streams, r, pid, updates, base=base)
    finally:
        load.stop()
    # Their leaves (after the leave grace) published and delivered.
    poll(lambda: metric(port, "presence_sse_connections") <= FAN_MEMBERS, 30, "closes")
    time.sleep(4)
    return found | {
        "idle_room_size": room_size,
        "idle_rooms": -(-idle_connections // room_size),
        "connections": int(connections),
    }


def _add_updates(r: redis.Redis, numbers: range) -> float:
    """Adds UPDATEs of ``f0`` to the room's stream, as SET_DATA adds them; returns
    when they were sent (monotonic)."""
    key = f"room.{{{FAN_ROOM}}}.presence"
    pipe = r.pipeline(transaction=False)
    for n in numbers:
        fields = {"room": FAN_ROOM, "client": "f0", "status": "UPDATE", "server": "other",
                  "data": f'{{"n":{n}}}'}  # fmt: skip
        pipe.xadd(key, fields, maxlen=10_000, approximate=True)  # type: ignore[arg-type]
    sent = time.monotonic()
    pipe.execute()
    return sent


def _median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _all_reached(streams: RoomStreams, numbers: range) -> bool:
    return all(streams.reached(n) for n in numbers)


def _updates(
    streams: RoomStreams, r: redis.Redis, pid: int, updates: int, base: int
) -> dict[str, Any]:
    """Bursts of ``updates`` UPDATEs (medians reported), then ``ONE_AT_A_TIME``
    sent one at a time. The server's CPU in a burst is net of its idle CPU
    (heartbeats, the pruner), measured just before. A burst's time includes the
    streams' reading in this process, which is slower than the server's sending:
    its CPU per UPDATE is the figure to compare."""
    bursts = []
    for b in range(BURSTS):
        cpu0 = cpu_precise(pid)
        time.sleep(BACKGROUND_S)
        background = (cpu_precise(pid) - cpu0) / BACKGROUND_S
        numbers = range(base + b * updates, base + (b + 1) * updates)
        cpu0 = cpu_precise(pid)
        sent = _add_updates(r, numbers)
        poll(partial(_all_reached, streams, numbers), 120, "a burst", every=0.01)
        cpu = cpu_precise(pid) - cpu0
        took = max(max(streams.arrivals[k]) for k in numbers) - sent
        net = max(0.0, cpu - background * took)
        bursts.append(
            {
                "seconds": round(took, 4),
                "server_cpu_s": round(cpu, 4),
                "background_core_fraction": round(background, 4),
                "ms_per_update": round(took / updates * 1000, 4),
                "server_us_per_update": round(net / updates * 1e6, 1),
            }
        )
    one: list[float] = []
    start = base + BURSTS * updates
    for n in range(start, start + ONE_AT_A_TIME):
        sent = _add_updates(r, range(n, n + 1))
        poll(partial(streams.reached, n), 30, "an UPDATE", every=0.0005)
        one.append((max(streams.arrivals[n]) - sent) * 1000)
    return {
        "updates_per_burst": updates,
        "bursts": bursts,
        "burst_ms_per_update": _median(b["ms_per_update"] for b in bursts),
        "burst_server_us_per_update": _median(b["server_us_per_update"] for b in bursts),
        "one_at_a_time": ONE_AT_A_TIME,
        "one_p50_ms": round(percentile(one, 50), 2),
        "one_p99_ms": round(percentile(one, 99), 2),
    }


# --- the targets ------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with the value measured and whether it was met: a report,
    not an assertion (the run never fails on one)."""
    st = results["storm"]
    rooms = st["rooms"]
    offline = (
        rooms["room_streams"]["offline"]
        + rooms["presence_stream"]["offline"]
        + rooms["offline_events_received"]
    )
    steady_rooms = results["steady"]["rooms"]
    false_offline = steady_rooms.get("presence_offline", 0) + steady_rooms.get(
        "room_statuses", {}
    ).get("OFFLINE", 0)
    fan = results["fanout"]
    took = rooms["converged_s"]
    return {
        "room storm: all converged": {
            "value": f"{took} s ({st['ratio_to_global']} of the global storm's "
            f"{st['global']['converged_s']} s)",
            "target": "≤ 3 s",
            "met": took is not None and took <= 3,
        },
        "room storm: false OFFLINE (streams and events)": {
            "value": offline,
            "target": "0",
            "met": offline == 0,
        },
        "room storm: ONLINE entries in the room streams": {
            "value": rooms["room_streams"]["online"],
            "target": f"exactly {rooms['clients']:,}",
            "met": rooms["room_streams"]["online"] == rooms["clients"],
        },
        "steady: presence CPU, memberships": {
            "value": f"{steady_rooms['server_core_fraction']:.0%} of a core",
            "target": "< 25%",
            "met": steady_rooms["server_core_fraction"] < 0.25,
        },
        "steady: false OFFLINE": {"value": false_offline, "target": "0", "met": false_offline == 0},
        "steady: UPDATE p99": {
            "value": f"{steady_rooms['update_p99_ms']} ms",
            "target": "≤ 50 ms",
            "met": steady_rooms["update_p99_ms"] is not None
            and steady_rooms["update_p99_ms"] <= 50,
        },
        "fan-out: per UPDATE beside idle connections / alone": {
            "value": f"server CPU {fan['ratio_burst_server_us_per_update']}, one at a time "
            f"p50 {fan['ratio_one_p50_ms']} (burst time {fan['ratio_burst_ms_per_update']})",
            "target": f"near 1 (≤ {NEAR_ONE})",
            "met": all(
                fan[key] is not None and fan[key] <= NEAR_ONE
                for key in ("ratio_burst_server_us_per_update", "ratio_one_p50_ms")
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rooms", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--full", action="store_true", help="the full sizes")
    args = parser.parse_args(argv)
    started = time.time()
    command = " ".join(["python -m bench.rooms", *(argv if argv is not None else sys.argv[1:])])
    results = header("rooms", command, started)
    print("rooms:")
    results["rooms"] = bench_rooms(FULL if args.full else SHORT)
    results["seconds"] = round(time.time() - started, 1)
    out = write_results(results)
    print(f"wrote {os.path.relpath(out)} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
