"""Webhook bodies: a batch of transitions as JSON, one object per entry.

An event's ``id`` is its stream key and entry id: stream keys carry the
namespace and the shard's tag, so it is unique across a deployment, and a
receiver deduplicates on it (delivery is at least once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ..entries import field_map, text

Kind = Literal["global", "room"]


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


def body(events: list[dict[str, Any]], time_ms: int) -> bytes:
    """A request's body: compact JSON, the events in stream order."""
    return json.dumps({"time_ms": time_ms, "events": events}, separators=(",", ":")).encode()
