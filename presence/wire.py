"""Wire formats: stream entries as Redis sends them in, SSE frames out.

Every byte presence reads from a stream or writes to a client goes through
here. Entries are read unparsed (``[name, value, ...]``), in the field order
the publishers write them, with a lookup by name only as the fallback: on
the paths a burst goes through, building dicts would cost more than
everything done with them. Frames end every line with ``\\n``, keep-alive
pings included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .contract import ID_PATTERN, OFFLINE, ONLINE, Status, is_valid_raw_id
from .events import OnlineClient, PresenceEvent

#: The line separator of every frame; aiohttp-sse is given it for its pings
#: (``: ping`` then an empty line).
SEPARATOR = "\n"

#: An entry id and its fields as Redis sends them, ``[name, value, ...]``;
#: None for an entry deleted while pending.
StreamEntry = tuple[bytes, list[bytes] | None]


def text(value: bytes | str) -> str:
    """A reply value as text (replies are bytes unless decoded by the client)."""
    return value.decode() if isinstance(value, bytes) else value


def stream_entries(reply: Any) -> list[StreamEntry]:
    """Entries of an unparsed XREAD/XREADGROUP reply."""
    if not reply:
        return []
    # RESP2 gives [[stream, entries], ...], RESP3 {stream: entries}.
    streams = reply.values() if isinstance(reply, dict) else [s[1] for s in reply]
    return [entry for entries in streams for entry in entries]


def field_map(fields: list[bytes] | None) -> dict[bytes, bytes]:
    """The fields of an unparsed entry by name (a repeated name: its last value)."""
    return dict(zip(fields[::2], fields[1::2], strict=False)) if fields else {}


def stream_position(entry_id: str) -> tuple[int, int]:
    """Order of a stream entry id (``"<ms>-<seq>"``) as a comparable tuple."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# Heartbeats in ---------------------------------------------------------------

# A batch of script lines, matched at once: ids of valid characters only,
# so no field can have added a line or a separator of its own.
_LINE = rb"%s %s \d+-\d+" % (ID_PATTERN, ID_PATTERN)
_LINES = re.compile(rb"%s(?:\n%s)*" % (_LINE, _LINE))


def heartbeat_lines(
    entries: Sequence[StreamEntry],
) -> tuple[list[bytes], list[tuple[bytes, str]]]:
    """The script lines (``b"<client> <server> <entry id>"``) of the well-formed
    heartbeat entries, and the id of each malformed one with why.

    The entry id is when the heartbeat was sent (its ms part): the script
    ignores one that is older than the TTL.
    """
    # Entries as every publisher writes them, client then server: one pass
    # builds the lines and one regex checks them all.
    lines = [
        b"%b %b %b" % (fields[1], fields[3], entry_id)
        for entry_id, fields in entries
        if fields and len(fields) == 4 and fields[0] == b"client" and fields[2] == b"server"
    ]
    if len(lines) == len(entries) and lines:
        joined = b"\n".join(lines)
        if joined.count(b"\n") == len(lines) - 1 and _LINES.fullmatch(joined):
            return lines, []
    lines, bad = [], []
    for entry_id, fields in entries:
        parsed = parse_heartbeat(fields)
        if isinstance(parsed, str):
            bad.append((entry_id, parsed))
        else:
            lines.append(b"%b %b %b" % (*parsed, entry_id))
    return lines, bad


def parse_heartbeat(fields: list[bytes] | None) -> tuple[bytes, bytes] | str:
    """``(client, server)`` of an unparsed heartbeat entry, or why it is malformed."""
    found = field_map(fields)
    values = []
    for name in (b"client", b"server"):
        raw = found.get(name)
        if raw is None:
            return f"missing {name.decode()}"
        if not is_valid_raw_id(raw):
            return f"invalid {name.decode()} {raw[:40].decode(errors='replace')!r}"
        values.append(raw)
    return values[0], values[1]


# Presence out ----------------------------------------------------------------

_STATUSES: dict[bytes, Status] = {b"ONLINE": ONLINE, b"OFFLINE": OFFLINE}
_FRAME = b'id: %b\nevent: presence\ndata: {"client":"%b","status":"%b","server":"%b"}\n\n'


@dataclass(slots=True)
class Delivery:
    """One presence event, with its SSE frame encoded once for every subscriber.

    Never changed once made. It holds the event's fields rather than a
    ``PresenceEvent``: a burst makes one per entry, and SSE subscribers only
    need the frame.
    """

    id: str
    client: str
    status: Status
    server: str
    frame: bytes

    @property
    def event(self) -> PresenceEvent:
        return PresenceEvent(self.id, self.client, self.status, self.server)


def parse_delivery(entry_id: str, fields: list[bytes] | None) -> Delivery | None:
    """The event of an unparsed presence entry with its SSE frame; None unless it
    is well formed (ids valid)."""
    if (valid := _valid_presence(fields)) is None:
        return None
    client, status, server = valid
    # Valid ids are ASCII and need no JSON escaping: formatting beats
    # json.dumps on the busiest path of a burst.
    frame = _FRAME % (entry_id.encode(), client, status, server)
    return Delivery(entry_id, client.decode(), _STATUSES[status], server.decode(), frame)


def parse_event(entry_id: str, fields: list[bytes] | None) -> PresenceEvent | None:
    """The event of an unparsed presence entry; None unless it is well formed."""
    if (valid := _valid_presence(fields)) is None:
        return None
    client, status, server = valid
    return PresenceEvent(entry_id, client.decode(), _STATUSES[status], server.decode())


def _valid_presence(fields: list[bytes] | None) -> tuple[bytes, bytes, bytes] | None:
    """``(client, status, server)`` of an unparsed presence entry, if valid."""
    client: bytes | None
    status: bytes | None
    server: bytes | None
    if (
        fields is not None
        and len(fields) == 6
        and fields[0] == b"client"
        and fields[2] == b"status"
        and fields[4] == b"server"
    ):  # in the order the scripts write them: no lookup by name
        client, status, server = fields[1], fields[3], fields[5]
    else:
        found = field_map(fields)
        client, status, server = found.get(b"client"), found.get(b"status"), found.get(b"server")
        if client is None or server is None:
            return None
    if status not in _STATUSES or not is_valid_raw_id(client):
        return None
    if server and not is_valid_raw_id(server):  # empty: OFFLINE of a client with no server
        return None
    return client, status, server


class SnapshotFrames:
    """The ``snapshot`` frame of one snapshot, for any number of connections.

    The member list is encoded once; each connection's frame leaves out its
    own client by slicing around it, so a connect storm costs one copy per
    connection, not one encoding.
    """

    __slots__ = ("_body", "_position", "_spans")

    def __init__(self, position: str, clients: Iterable[OnlineClient]) -> None:
        self._position = position.encode()
        parts: list[bytes] = []
        self._spans: dict[str, tuple[int, int]] = {}
        offset = 0
        for c in clients:
            client, server = c.client.encode(), c.server.encode()
            if is_valid_raw_id(client) and (not server or is_valid_raw_id(server)):
                # ASCII without escapes: formatting beats json.dumps per member.
                encoded = b'{"client":"%b","server":"%b"},' % (client, server)
            else:
                part = json.dumps({"client": c.client, "server": c.server}, separators=(",", ":"))
                encoded = (part + ",").encode()
            self._spans[c.client] = (offset, offset + len(encoded))
            parts.append(encoded)
            offset += len(encoded)
        self._body = b"".join(parts)

    def frame(self, exclude: str | None = None, *, reset: bool = False) -> bytes:
        """The frame, leaving out ``exclude``; ``reset`` marks a resync."""
        body = self._body
        if exclude is not None and (span := self._spans.get(exclude)) is not None:
            body = body[: span[0]] + body[span[1] :]
        extra = b',"reset":true' if reset else b""
        return b'id: %b\nevent: snapshot\ndata: {"clients":[%b]%b}\n\n' % (
            self._position,
            body[:-1],  # the last member's comma
            extra,
        )
