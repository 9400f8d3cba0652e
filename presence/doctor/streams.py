"""Checks of presence's streams on every shard: their lengths against their
caps, and the heartbeat consumer group's pending entries and consumers.

Room streams are found through each shard's ``rooms.due`` (the rooms with
members), at most ``ROOMS_CHECKED`` of them per shard: a doctor's look must
cost little on a Redis holding a million rooms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from ..contract import CONSUMER_GROUP
from ..entries import text
from ..settings import Settings
from .report import OK, PROBLEM, WARN, Check, count
from .target import Target

#: Rooms whose stream is measured, per shard.
ROOMS_CHECKED = 1000
#: The heartbeat stream's share of its cap that is reported: it is a
#: ceiling against a runaway producer, trimmed by age long before it.
HEARTBEAT_WARN = 0.5
HEARTBEAT_PROBLEM = 0.9
#: ``XADD MAXLEN ~`` trims whole stream nodes (100 entries by default), so a
#: stream may run this far past its cap before a longer one is reported.
SLACK_ENTRIES = 100
SLACK_SHARE = 0.1
#: Late pending entries counted per shard; more are shown as ``100+``.
PENDING_LISTED = 100


@dataclass(frozen=True, slots=True)
class Thresholds:
    #: Seconds a heartbeat entry may stay pending before it is a problem.
    pending_after: float = 30.0
    #: Seconds a consumer may be idle before it is reported as a stopped server.
    idle_after: float = 120.0


@dataclass(frozen=True, slots=True)
class _Length:
    key: str
    length: int
    cap: int

    @property
    def share(self) -> float:
        return self.length / self.cap

    @property
    def over(self) -> bool:
        return self.length > self.cap + max(SLACK_ENTRIES, self.cap * SLACK_SHARE)

    def __str__(self) -> str:
        return f"{self.key} {self.length} of {self.cap}"


async def streams(target: Target) -> Check:
    beats: list[_Length] = []
    transitions: list[_Length] = []
    rooms: list[_Length] = []
    wrong: list[str] = []
    for shard in target.shards:
        keys = shard.keys
        for key, cap, into in (
            (keys.heartbeat, shard.heartbeat_maxlen, beats),
            (keys.presence, shard.presence_maxlen, transitions),
        ):
            kind = text(await target.redis.type(key))
            if kind not in ("stream", "none"):
                wrong.append(f"{key} is a {kind}")
            else:
                into.append(_Length(key, await target.redis.xlen(key), cap))
        rooms += await _rooms(target, shard)
    if wrong:
        return Check(
            "streams",
            PROBLEM,
            f"{', '.join(wrong)}, not a stream: presence cannot start on it",
            f"DEL {wrong[0].split()[0]} (or give presence another --namespace)",
        )
    beat = max(beats, key=lambda s: s.share)
    said = [str(beat), str(max(transitions, key=lambda s: s.share))]
    if len(target.shards) > 1:
        said[0] = f"the fullest of {len(target.shards)} shards: {said[0]}"
    if rooms:
        longest = max(rooms, key=lambda s: s.share)
        said.append(f"{count(len(rooms), 'room stream')}, the longest {longest}")
    detail = "; ".join(said)
    if beat.share >= HEARTBEAT_WARN:
        return Check(
            "streams",
            PROBLEM if beat.share >= HEARTBEAT_PROBLEM else WARN,
            f"{detail}: the heartbeat stream is trimmed by age, its cap is a ceiling; "
            "at the cap, entries go by count, maybe before they are applied",
            "find the producer adding so many heartbeats (an external one should trim by "
            "age: XADD heartbeat MINID ~ <ms two TTLs ago> * ...), or raise "
            "--heartbeat-maxlen on every server",
        )
    over = [s for s in transitions + rooms if s.over]
    if over:
        return Check(
            "streams",
            WARN,
            f"{detail}; longer than its cap: {over[0]}: a server with a larger cap, or "
            "none, writes it",
            "give every server (and the doctor) the same --presence-maxlen and --room-maxlen",
        )
    return Check("streams", OK, detail)


async def _rooms(target: Target, shard: Settings) -> list[_Length]:
    keys = shard.keys
    if text(await target.redis.type(keys.rooms_due)) != "zset":
        return []
    found: list[Any] = await target.redis.zrange(keys.rooms_due, 0, ROOMS_CHECKED - 1)
    rooms = [r for r in map(text, found) if not r.startswith("#")]  # the webhooks' marks
    pipe = target.redis.pipeline(transaction=False)
    for room in rooms:
        pipe.xlen(keys.room(room).presence)
    lengths = await pipe.execute(raise_on_error=False)
    return [
        _Length(keys.room(room).presence, n, shard.room_maxlen)
        for room, n in zip(rooms, lengths, strict=True)
        if isinstance(n, int)
    ]


async def pending(target: Target, thresholds: Thresholds) -> Check:
    """Heartbeat entries read by a consumer and not acknowledged for long:
    their server stopped with nobody to claim them, or Redis fails them."""
    idle_ms = round(thresholds.pending_after * 1000)
    total = late = 0
    capped = False
    oldest = 0
    holders: set[str] = set()
    stream = target.shards[0].keys.heartbeat
    for shard in target.shards:
        key = shard.keys.heartbeat
        try:
            summary: Any = await target.redis.xpending(key, CONSUMER_GROUP)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                continue  # no server started on this shard yet
            raise
        total += int(summary["pending"])
        if not summary["pending"]:
            continue
        found: Any = await target.redis.xpending_range(
            key, CONSUMER_GROUP, "-", "+", PENDING_LISTED, idle=idle_ms
        )
        if found:
            stream = key
        late += len(found)
        capped = capped or len(found) >= PENDING_LISTED
        oldest = max([oldest, *(int(e["time_since_delivered"]) for e in found)])
        holders |= {text(e["consumer"]) for e in found}
    limit = f"{thresholds.pending_after:g} s"
    if late:
        shown = f"{late}+" if capped else str(late)
        return Check(
            "pending",
            PROBLEM,
            f"{shown} heartbeat {'entry' if late == 1 else 'entries'} pending longer than "
            f"{limit} (the oldest "
            f"{oldest / 1000:.1f} s, held by {', '.join(sorted(holders))}): no running server "
            "claims them, or Redis fails them",
            "start a server, which claims and applies them (stale ones change nothing); if "
            "servers run, their logs name the failing heartbeats: "
            f"XPENDING {stream} {CONSUMER_GROUP} IDLE {idle_ms} - + 10 lists them",
        )
    entries = count(total, "heartbeat entry").replace("entrys", "entries")
    return Check("pending", OK, f"{entries} pending, none longer than {limit}")


async def consumers(target: Target, thresholds: Thresholds) -> Check:
    """Consumers idle for long: servers that stopped and were not forgotten."""
    idle_ms = thresholds.idle_after * 1000
    holding: list[str] = []
    quiet: list[tuple[str, str]] = []
    live = 0
    for shard in target.shards:
        key = shard.keys.heartbeat
        try:
            found: Any = await target.redis.xinfo_consumers(key, CONSUMER_GROUP)
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc).lower():
                continue
            raise
        for consumer in found:
            name = text(consumer["name"])
            if int(consumer["idle"]) <= idle_ms:
                live += 1
            elif int(consumer["pending"]):
                holding.append(f"{name} ({consumer['pending']} pending)")
            else:
                quiet.append((key, name))
    limit = f"{thresholds.idle_after:g} s"
    if holding:
        return Check(
            "consumers",
            PROBLEM,
            f"consumers idle longer than {limit} hold heartbeat entries: "
            f"{', '.join(sorted(set(holding)))} (stopped servers)",
            "start a server: it claims their entries, then forgets them after --forget-after",
        )
    if quiet:
        return Check(
            "consumers",
            WARN,
            f"{count(len(quiet), 'consumer')} idle longer than {limit}, nothing pending: "
            f"{', '.join(sorted({name for _, name in quiet}))} (stopped servers not "
            "forgotten yet: a running server removes them after --forget-after)",
            f"start a server, or XGROUP DELCONSUMER {quiet[0][0]} {CONSUMER_GROUP} {quiet[0][1]}",
        )
    return Check("consumers", OK, f"{count(live, 'consumer')}, none idle longer than {limit}")
