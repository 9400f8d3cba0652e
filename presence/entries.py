"""Stream entries in: what presence parses from Redis, and member data.

Entries are read unparsed (``[name, value, ...]``), in the field order the
publishers write them, with a lookup by name only as the fallback: on the
paths a burst goes through, building dicts would cost more than everything
done with them. A presence or room entry is parsed once for every stream,
its frame encoded (by ``frames``) at the same time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .contract import (
    ID_PATTERN,
    MAX_DATA_BYTES,
    OFFLINE,
    ONLINE,
    UPDATE,
    RoomStatus,
    Status,
    is_valid_raw_id,
)
from .events import PresenceEvent, RoomEvent
from .frames import presence_frame, room_event_data
from .positions import stream_position

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


# Heartbeats in ---------------------------------------------------------------

# A batch of script lines, matched at once: ids of valid characters only,
# so no field can have added a line or a separator of its own.
_LINE = rb"%s %s \d+-\d+(?: %s)?" % (ID_PATTERN, ID_PATTERN, ID_PATTERN)
_LINES = re.compile(rb"%s(?:\n%s)*" % (_LINE, _LINE))


def heartbeat_lines(
    entries: Sequence[StreamEntry],
) -> tuple[list[bytes], list[tuple[bytes, str]]]:
    """The script lines (``b"<client> <server> <entry id>[ <room>[ <data>]]"``,
    initial data after a ``?``) of the well-formed heartbeat entries, and the
    id of each malformed one with why.

    The entry id is when the heartbeat was sent (its ms part): the script
    ignores one that is older than the TTL.
    """
    # Entries as every publisher writes them, client then server (then room):
    # one pass builds the lines and one regex checks them all.
    lines = [
        b"%b %b %b" % (fields[1], fields[3], entry_id)
        if len(fields) == 4
        else b"%b %b %b %b" % (fields[1], fields[3], entry_id, fields[5])
        for entry_id, fields in entries
        if fields
        and (len(fields) == 4 or (len(fields) == 6 and fields[4] == b"room"))
        and fields[0] == b"client"
        and fields[2] == b"server"
    ]
    if len(lines) == len(entries) and lines:
        joined = b"\n".join(lines)
        # As many separators as the lines have fields: no value brought its own.
        spaces = 2 * len(lines) + sum(len(f) == 6 for _, f in entries if f)
        if (
            joined.count(b"\n") == len(lines) - 1
            and joined.count(b" ") == spaces
            and _LINES.fullmatch(joined)
        ):
            return lines, []
    lines, bad = [], []
    for entry_id, fields in entries:
        parsed = parse_heartbeat(fields)
        if isinstance(parsed, str):
            bad.append((entry_id, parsed))
            continue
        client, server, room, data = parsed
        line = b"%b %b %b" % (client, server, entry_id)
        if room is not None:
            line += b" " + room
            if data is not None:
                line += b" " + data.encode()
        lines.append(line)
    return lines, bad


def parse_heartbeat(
    fields: list[bytes] | None,
) -> tuple[bytes, bytes, bytes | None, str | None] | str:
    """``(client, server, room, data)`` of an unparsed heartbeat entry (room and
    data None when absent, data canonical), or why it is malformed.

    Data without a room is ignored: the entry is a plain heartbeat. The field
    ``initial`` is data that only fills in a member that has none; it comes
    back after a ``?``, as the script takes it. With ``data`` too, ``data`` counts.
    """
    found = field_map(fields)
    values = []
    for name in (b"client", b"server"):
        raw = found.get(name)
        if raw is None:
            return f"missing {name.decode()}"
        if not is_valid_raw_id(raw):
            return f"invalid {name.decode()} {raw[:40].decode(errors='replace')!r}"
        values.append(raw)
    room = found.get(b"room")
    if room is None:
        return values[0], values[1], None, None
    if not is_valid_raw_id(room):
        return f"invalid room {room[:40].decode(errors='replace')!r}"
    raw_data, mark = found.get(b"data"), ""
    if raw_data is None:
        raw_data, mark = found.get(b"initial"), "?"
    if raw_data is None:
        return values[0], values[1], room, None
    try:
        return values[0], values[1], room, mark + member_data(raw_data)
    except ValueError as exc:
        return f"invalid {'initial' if mark else 'data'}: {exc}"


def member_data(raw: str | bytes) -> str:
    """Member data in its one canonical form (compact, keys sorted), so that an
    unchanged value compares equal; raises ``ValueError`` saying why it is not
    a JSON object of at most ``MAX_DATA_BYTES`` encoded."""
    if len(raw) > 16 * MAX_DATA_BYTES:
        raise ValueError(f"data must be at most {MAX_DATA_BYTES} bytes")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ValueError("data must be valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError("data must be a JSON object")
    try:
        # A number beyond a float would come out as Infinity: not JSON.
        encoded = json.dumps(
            value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
        )
        size = len(encoded.encode())
    except UnicodeEncodeError:
        raise ValueError("data must be valid Unicode") from None
    except ValueError:
        raise ValueError("data must be valid JSON: a number is out of range") from None
    if size > MAX_DATA_BYTES:
        raise ValueError(f"data must be at most {MAX_DATA_BYTES} bytes")
    return encoded


def encode_data(data: dict[str, Any]) -> str:
    """``member_data`` of data given as a dict."""
    try:
        return member_data(json.dumps(data))
    except TypeError:
        raise ValueError("data must be a JSON object") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# Presence entries ------------------------------------------------------------

_STATUSES: dict[bytes, Status] = {b"ONLINE": ONLINE, b"OFFLINE": OFFLINE}


@dataclass(slots=True)
class Delivery:
    """One presence event, with its SSE frame encoded once for every subscriber.

    Never changed once made. It holds the event's fields rather than a
    ``PresenceEvent``: a burst makes one per entry, and SSE subscribers only
    need the frame.
    """

    #: The entry's id in its shard's presence stream.
    id: str
    client: str
    status: Status
    server: str
    frame: bytes
    shard: int = 0
    #: Its SSE id: the global position after it (``positions``); ``id`` on a
    #: standalone Redis.
    event_id: str = ""

    def __post_init__(self) -> None:
        self.event_id = self.event_id or self.id

    @property
    def event(self) -> PresenceEvent:
        return PresenceEvent(self.event_id, self.client, self.status, self.server)


def parse_delivery(
    entry_id: str, fields: list[bytes] | None, shard: int = 0, event_id: str | None = None
) -> Delivery | None:
    """The event of an unparsed presence entry of shard ``shard`` with its SSE
    frame, whose id is ``event_id`` (default: the entry id); None unless it is
    well formed (ids valid)."""
    if (valid := _valid_presence(fields)) is None:
        return None
    client, status, server = valid
    event_id = event_id or entry_id
    frame = presence_frame(event_id.encode(), client, status, server, entry_id.encode())
    return Delivery(
        entry_id, client.decode(), _STATUSES[status], server.decode(), frame, shard, event_id
    )


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


# Room entries ----------------------------------------------------------------

_ROOM_STATUSES: dict[bytes, RoomStatus] = {
    b"ONLINE": ONLINE,
    b"UPDATE": UPDATE,
    b"OFFLINE": OFFLINE,
}


@dataclass(slots=True)
class RoomDelivery:
    """One transition of a room, with its SSE ``data`` encoded once."""

    id: str
    room: str
    client: str
    status: RoomStatus
    server: str
    #: The member's data (JSON object text), with ONLINE and UPDATE.
    data: str | None
    body: bytes
    #: ``stream_position(id)``, once for every stream it goes to.
    position: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.position = stream_position(self.id)

    @property
    def event(self) -> RoomEvent:
        return RoomEvent(self.id, self.room, self.client, self.status, self.server, self.data)


def parse_room_delivery(entry_id: str, fields: list[bytes] | None) -> RoomDelivery | None:
    """The transition of an unparsed room stream entry; None unless well formed."""
    found = field_map(fields)
    room, client, server = found.get(b"room"), found.get(b"client"), found.get(b"server")
    status = _ROOM_STATUSES.get(found.get(b"status") or b"")
    if room is None or client is None or server is None or status is None:
        return None
    if not (is_valid_raw_id(room) and is_valid_raw_id(client)):
        return None
    if server and not is_valid_raw_id(server):
        return None
    data: str | None = None
    if (raw := found.get(b"data")) is not None and status != OFFLINE:
        try:
            data = member_data(raw)  # written by a script: checked all the same
        except ValueError:
            return None
    body = room_event_data(room, client, status.encode(), server, data)
    return RoomDelivery(
        entry_id, room.decode(), client.decode(), status, server.decode(), data, body
    )
