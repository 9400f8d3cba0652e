"""Webhook bodies: a batch of transitions as JSON, one object per entry.

An event's ``id`` is its stream key and entry id: stream keys carry the
namespace and the shard's tag, so it is unique across a deployment, and a
receiver deduplicates on it (delivery is at least once).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..entries import field_map, text

Kind = Literal["global", "room"]

#: A body's bytes around its events, ``time_ms`` at its longest included.
ENVELOPE: Final = len(b'{"time_ms":%d,"events":[]}' % 2**63)


@dataclass(frozen=True, slots=True)
class Source:
    """A transition stream the webhook follows: ``room`` is empty for the
    global ``presence`` stream."""

    stream: str
    room: str = ""

    @property
    def kind(self) -> Kind:
        return "room" if self.room else "global"


def event(source: Source, entry_id: bytes | str, fields: list[bytes]) -> dict[str, Any]:
    """One entry as the webhook sends it."""
    entry = text(entry_id)
    found = field_map(fields)
    out: dict[str, Any] = {
        "id": f"{source.stream}/{entry}",
        "stream": source.stream,
        "entry": entry,
        "time_ms": int(entry.partition("-")[0]),
        "kind": source.kind,
        "client": text(found.get(b"client", b"")),
        "status": text(found.get(b"status", b"")),
        "server": text(found.get(b"server", b"")),
    }
    if source.room:
        out["room"] = source.room
        if (data := found.get(b"data")) is not None:
            out["data"] = json.loads(data)
    return out


def encode(event: dict[str, Any]) -> bytes:
    """One event as compact JSON, encoded once however often it is sent."""
    return json.dumps(event, separators=(",", ":")).encode()


def body(events: Sequence[bytes], time_ms: int) -> bytes:
    """A request's body: the encoded events, in stream order, and ``time_ms``,
    when it is sent (a retry gets its own)."""
    return b'{"time_ms":%d,"events":[%s]}' % (time_ms, b",".join(events))


def split(events: Sequence[bytes], limit: int) -> list[range]:
    """Where to cut ``events`` so that each request's body stays within
    ``limit`` bytes (an event bigger than that alone goes by itself)."""
    cuts: list[range] = []
    start, size = 0, ENVELOPE
    for i, encoded in enumerate(events):
        grown = size + len(encoded) + (i > start)
        if grown > limit and i > start:
            cuts.append(range(start, i))
            start, grown = i, ENVELOPE + len(encoded)
        size = grown
    if start < len(events):
        cuts.append(range(start, len(events)))
    return cuts
