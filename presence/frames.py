"""SSE frames out: every byte presence writes to a client is encoded here.

A frame is encoded once for every stream it goes to: an event's when its
entry is parsed, a member list's once per snapshot, each stream's copy
leaving out its own client by slicing. Frames end every line with ``\\n``,
keep-alive pings included. Valid ids are ASCII and need no JSON escaping:
formatting them beats ``json.dumps`` on the busiest paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from .contract import is_valid_raw_id
from .events import Member, OnlineClient
from .positions import later, valid_entry_id

#: The line separator of every frame; aiohttp-sse is given it for its pings
#: (``: ping`` then an empty line).
SEPARATOR = "\n"

_PRESENCE = b'id: %b\nevent: presence\ndata: {"client":"%b","status":"%b","server":"%b"}\n\n'
_LEFT = (
    b'id: %b\nevent: presence\ndata: {"client":"%b","status":"OFFLINE","server":"%b","at":%b}\n\n'
)


def presence_frame(
    event_id: bytes, client: bytes, status: bytes, server: bytes, entry_id: bytes = b""
) -> bytes:
    """The ``presence`` frame of a global stream's event (ids valid). An
    OFFLINE's carries ``at``, the Unix ms of its entry ``entry_id`` (default
    ``event_id``): when the client was last seen."""
    if status == b"OFFLINE":
        at = (entry_id or event_id).partition(b"-")[0]
        return _LEFT % (event_id, client, server, at)
    return _PRESENCE % (event_id, client, status, server)


def room_event_data(
    room: bytes, client: bytes, status: bytes, server: bytes, data: str | None
) -> bytes:
    """The ``data`` of a room's ``presence`` event (ids valid, ``data`` canonical)."""
    body = b'{"room":"%b","client":"%b","status":"%b","server":"%b"' % (
        room,
        client,
        status,
        server,
    )
    if data is not None:
        body += b',"data":' + data.encode()
    return body + b"}"


class MemberList:
    """A JSON array of members encoded once; each connection's copy leaves out
    its own client by slicing around it."""

    __slots__ = ("_body", "_spans", "count")

    def __init__(self, members: Iterable[Member | OnlineClient]) -> None:
        parts: list[bytes] = []
        self._spans: dict[str, tuple[int, int]] = {}
        offset = 0
        for m in members:
            client, server = m.client.encode(), m.server.encode()
            data = m.data if isinstance(m, Member) else None
            if is_valid_raw_id(client) and (not server or is_valid_raw_id(server)):
                # ASCII without escapes: formatting beats json.dumps per member.
                encoded = b'{"client":"%b","server":"%b"' % (client, server)
            else:
                part = json.dumps({"client": m.client, "server": m.server}, separators=(",", ":"))
                encoded = part[:-1].encode()
            if data is not None:
                encoded += b',"data":' + data.encode()
            encoded += b"},"
            self._spans[m.client] = (offset, offset + len(encoded))
            parts.append(encoded)
            offset += len(encoded)
        self._body = b"".join(parts)
        self.count = len(parts)

    def array(self, exclude: str | None = None) -> bytes:
        """``[...]``, leaving out ``exclude``."""
        body = self._body
        if exclude is not None and (span := self._spans.get(exclude)) is not None:
            body = body[: span[0]] + body[span[1] :]
        return b"[%b]" % body[:-1]  # the last member's comma


def scope_id(tag: str, positions: Iterable[str]) -> bytes:
    """The SSE id of a scoped stream: its scope's tag, then a stream position per
    part (``.`` is in neither)."""
    return ".".join((tag, *positions)).encode()


def parse_scope_id(value: str, tag: str, parts: int) -> list[str] | None:
    """The positions of a scoped stream's SSE id; None unless it is one of this
    scope (the replays check each part further)."""
    found = value.split(".")
    if len(found) != parts + 1 or found[0] != tag:
        return None
    # The watch list's part has one id per shard (``positions``) on a cluster.
    if not all(valid_entry_id(i) for p in found[1:] for i in p.split(",")):
        return None
    return found[1:]


def snapshot_frame(
    event_id: bytes,
    clients: bytes | None = None,
    rooms: Sequence[tuple[str, bytes]] = (),
    *,
    reset: bool = False,
) -> bytes:
    """A ``snapshot`` frame: ``clients`` (a JSON array), each room's members (a
    JSON array per room name), and ``reset`` when it replaces what the client knew."""
    parts: list[bytes] = []
    if clients is not None:
        parts.append(b'"clients":' + clients)
    if rooms:
        listed = b",".join(b"%b:%b" % (json.dumps(room).encode(), array) for room, array in rooms)
        parts.append(b'"rooms":{%b}' % listed)
    if reset:
        parts.append(b'"reset":true')
    return b"id: %b\nevent: snapshot\ndata: {%b}\n\n" % (event_id, b",".join(parts))


def event_frame(event_id: bytes, data: bytes) -> bytes:
    """A ``presence`` frame of ``data`` (a JSON object)."""
    return b"id: %b\nevent: presence\ndata: %b\n\n" % (event_id, data)


def event_data(frame: bytes) -> bytes:
    """The ``data`` of a ``presence`` frame: one frame per event stays encoded once."""
    return frame[frame.index(b"data: ") + 6 : -2]


def occupancy_frame(room: str, count: int) -> bytes:
    """An ``occupancy`` frame; it has no id (a resumed stream gets the count again)."""
    return b'event: occupancy\ndata: {"room":%b,"count":%d}\n\n' % (
        json.dumps(room).encode(),
        count,
    )


class ScopedFrames:
    """The frames of one scoped stream, whose ids carry its scope's tag and one
    stream position per part (the watch list's, then each room's): each id
    says where every part stood after that event."""

    __slots__ = ("_part", "_positions", "_tag")

    def __init__(self, tag: str, rooms: Sequence[str], *, watch: bool) -> None:
        self._tag = tag
        self._part = {room: watch + i for i, room in enumerate(rooms)}
        self._positions = ["0-0"] * (watch + len(rooms))

    def start(self, positions: Sequence[str]) -> None:
        """The stream starts (or starts again) exact at ``positions``."""
        self._positions = list(positions)

    def snapshot(
        self,
        positions: Sequence[str],
        clients: bytes | None,
        rooms: Sequence[tuple[str, bytes]],
        *,
        reset: bool,
    ) -> bytes:
        """The ``snapshot`` frame exact at ``positions``; none for a stream of
        occupancy alone (its counts are its snapshot)."""
        self.start(positions)
        if not self._positions:
            return b""
        return snapshot_frame(self._id(), clients, rooms, reset=reset)

    def event(self, room: str | None, entry_id: str, data: bytes) -> bytes:
        """The ``presence`` frame of entry ``entry_id`` of ``room``'s stream (None:
        the presence stream, for the watch list)."""
        if room is None:
            # Sharded, never behind the start in any shard (see ``positions``).
            self._positions[0] = later(self._positions[0], entry_id)
        else:
            self._positions[self._part[room]] = entry_id
        return event_frame(self._id(), data)

    def _id(self) -> bytes:
        return scope_id(self._tag, self._positions)


class SnapshotFrames:
    """The ``snapshot`` frame of one snapshot, for any number of connections.

    The member list is encoded once; each connection's frame leaves out its
    own client, so a connect storm costs one copy per connection, not one
    encoding.
    """

    __slots__ = ("_members", "_position")

    def __init__(self, position: str, clients: Iterable[OnlineClient]) -> None:
        self._position = position.encode()
        self._members = MemberList(clients)

    def array(self, exclude: str | None = None) -> bytes:
        return self._members.array(exclude)

    def frame(self, exclude: str | None = None, *, reset: bool = False) -> bytes:
        """The frame, leaving out ``exclude``; ``reset`` marks a resync."""
        return snapshot_frame(self._position, self._members.array(exclude), reset=reset)
