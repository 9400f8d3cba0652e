"""A cheap EventSource: many presence clients on raw asyncio sockets in one process,
each reading its stream as a browser's ``EventSource`` does.

HTTP/1.1 with chunked transfer decoding (or a body delimited by Content-Length or
by the close). The event stream is parsed per the HTML specification (lines end
with ``\\n``, ``\\r\\n`` or ``\\r``; ``event``, ``data``, ``id`` and ``retry``
fields; comments; an incomplete event at the end of a stream is dropped). When
the stream ends, the client reconnects after the reconnection time (0.5 s unless
the server sent ``retry:``) with ``Last-Event-ID``.

Each client keeps its view of who is online: a ``snapshot`` replaces it, a
``presence`` event adds or removes one client. It has converged when its view
holds every other client of the storm.

Parsing every event of N x N deliveries line by line would make the load, not
the server, what is measured. So a run of events that has exactly the form
presence writes (``id``, ``event: presence``, ``data`` with its JSON in presence's
field order and no escapes, or ``: comment`` lines, each ending with a blank
line) is recognised by one regular expression and its client ids pulled out by
another; the specification gives those runs the meaning applied here. Anything
else goes through the general parser, event by event.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

RECONNECT_S = 0.5

_STR = rb'[^"\\\x00-\x1f]*'
#: One presence event exactly as presence writes it, or a comment, then a blank line.
_FAST_RUN = re.compile(
    rb"(?:id: [^\n\x00\"]*\nevent: presence\ndata: \{\"client\":\"" + _STR
    + rb'","status":"(?:ONLINE|OFFLINE)","server":"' + _STR + rb'"\}\n\n'
    + rb"|:[^\n]*\n\n)+"
)  # fmt: skip
#: In a run matched by _FAST_RUN: each event's client and status, and its id.
_RUN_EVENT = re.compile(
    rb'^id: ([^\n]*)\nevent: presence\ndata: \{"client":"([^"]*)","status":"(ONLINE|OFFLINE)"',
    re.M,
)
#: Only at the start of a data line in such a run: no field there can hold a quote.
_RUN_CLIENT = re.compile(rb'data: \{"client":"([^"]*)"')
_PRESENCE_DATA = re.compile(
    rb'\{"client":"(' + _STR + rb')","status":"(ONLINE|OFFLINE)","server":"' + _STR + rb'"\}'
)
_SNAPSHOT_DATA = re.compile(
    rb'\{"clients":\[(?:\{"client":"' + _STR + rb'","server":"' + _STR + rb'"\}(?:,(?=\{)|(?=\])))*'
    rb'\](?:,"reset":true)?\}'
)  # fmt: skip
_SNAPSHOT_CLIENT = re.compile(rb'\{"client":"([^"]*)"')
_BOM = b"\xef\xbb\xbf"


@dataclass
class Counters:
    """What happened to a process's clients; summed over the load processes."""

    connects: int = 0  #: connections that got a 200 event stream
    ended: int = 0  #: streams the server ended (end of body, close or reset)
    connect_failures: int = 0  #: TCP connects that failed
    http_errors: int = 0  #: answers other than a 200 event stream
    closed_early: int = 0  #: connections closed before an answer
    snapshots: int = 0
    reset_snapshots: int = 0
    online_events: int = 0
    offline_events: int = 0
    bytes: int = 0

    def add(self, other: Counters) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Client:
    """One EventSource: the view and the last event id outlive its connections."""

    index: int
    name: bytes
    view: bytearray
    known: int = 1  #: clients in the view, itself included
    last_id: bytes = b""
    reconnect_s: float = RECONNECT_S
    converged_at: float | None = None  #: first time the view was complete
    streams: int = 0  #: 200 event streams it got
    transport: asyncio.Transport | None = None


@dataclass
class Storm:
    """The clients of one load process, and what they saw."""

    port: int
    total: int  #: clients in the whole storm
    clients: list[Client]
    index: dict[bytes, int] = field(init=False)
    counters: Counters = field(default_factory=Counters)
    converged: int = 0  #: clients whose view is complete now
    all_converged_at: float | None = None
    stopping: bool = False

    def __post_init__(self) -> None:
        self.index = {name(i): i for i in range(self.total)}

    def connect(self, client: Client) -> None:
        if not self.stopping:
            asyncio.get_running_loop().create_task(self._connect(client))

    async def _connect(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Stream(self, client), "127.0.0.1", self.port)
        except OSError:
            self.counters.connect_failures += 1
            self.retry(client)

    def retry(self, client: Client) -> None:
        if not self.stopping:
            asyncio.get_running_loop().call_later(client.reconnect_s, self.connect, client)

    def update(self, client: Client, was_complete: bool) -> None:
        """Counts a client whose view became complete or incomplete."""
        complete = client.known == self.total
        if complete == was_complete:
            return
        if complete:
            self.converged += 1
            now = time.time()
            if client.converged_at is None:
                client.converged_at = now
            if self.converged == len(self.clients):
                self.all_converged_at = now
        else:
            self.converged -= 1
            self.all_converged_at = None

    def stop(self) -> None:
        self.stopping = True
        for client in self.clients:
            if client.transport is not None:
                client.transport.close()


def name(index: int) -> bytes:
    return b"s%d" % index


class Stream(asyncio.Protocol):
    """One connection of a client: HTTP response, transfer decoding, event stream."""

    def __init__(self, storm: Storm, client: Client) -> None:
        self.storm = storm
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.streaming = False
        self.done = False
        # Body framing: "chunked", "length" or "close".
        self.framing = "close"
        self.remaining = 0  #: of the current chunk, or of a Content-Length body
        self.need_crlf = False
        self.raw = bytearray()
        # Event stream state.
        self.started = False
        self.pending_cr = False
        self.text = bytearray()
        self.scan = 0
        self.id_buffer = client.last_id
        self.event_type = b""
        self.data: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.client.transport = transport
        last = b"Last-Event-ID: %s\r\n" % self.client.last_id if self.client.last_id else b""
        transport.write(
            b"GET /clients/%s/events HTTP/1.1\r\nHost: bench\r\n"
            b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n%s\r\n"
            % (self.client.name, last)
        )

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.storm.counters.bytes += len(data)
        if not self.streaming:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._response(self.head[:end]):
                self.storm.counters.http_errors += 1
                self._finish()
                return
            self.storm.counters.connects += 1
            self.client.streams += 1
            self.streaming = True
            data, self.head = self.head[end + 4 :], b""
        try:
            body, ended = self._decode(data)
        except ValueError:  # a malformed chunk: the connection is unusable
            body, ended = b"", True
        if body:
            self._feed(body)
        if ended:
            self._finish()

    def _response(self, head: bytes) -> bool:
        """Whether the response is a 200 event stream; notes its body framing."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"200":
            return False
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip().lower()
        if not headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            return False
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self.framing = "chunked"
        elif b"content-length" in headers:
            self.framing, self.remaining = "length", int(headers[b"content-length"])
        return True

    def _decode(self, data: bytes) -> tuple[bytes, bool]:
        """(body bytes, whether the body ended) of ``data`` per the framing."""
        if self.framing == "close":
            return data, False
        if self.framing == "chunked" and not (self.raw or self.remaining or self.need_crlf):
            # The usual read: exactly one whole chunk.
            eol = data.find(b"\r\n", 0, 12)
            if eol > 0:
                try:
                    length = int(data[:eol], 16)
                except ValueError:
                    length = 0
                end = eol + 2 + length
                if length and len(data) == end + 2 and data.endswith(b"\r\n"):
                    return data[eol + 2 : end], False
        if self.framing == "length":
            body = data[: self.remaining]
            self.remaining -= len(body)
            return body, self.remaining == 0
        raw = self.raw
        raw += data
        out: list[bytes] = []
        pos, size = 0, len(raw)
        ended = False
        while pos < size:
            if self.remaining:
                take = min(self.remaining, size - pos)
                out.append(bytes(raw[pos : pos + take]))
                pos += take
                self.remaining -= take
                self.need_crlf = self.remaining == 0
            elif self.need_crlf:
                if size - pos < 2:
                    break
                if raw[pos : pos + 2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                pos += 2
                self.need_crlf = False
            else:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                length = int(bytes(raw[pos:eol]).split(b";", 1)[0], 16)
                pos = eol + 2
                if length == 0:  # the last chunk (trailers ignored)
                    ended = True
                    break
                self.remaining = length
        del raw[:pos]
        return b"".join(out), ended

    # --- the event stream -------------------------------------------------------------

    def _feed(self, body: bytes) -> None:
        if not self.started:
            self.started = True
            if body.startswith(_BOM):
                body = body[len(_BOM) :]
        text = self.text
        if not (text or self.pending_cr) and body.endswith(b"\n\n") and b"\r" not in body:
            # The usual read: whole events, nothing left over.
            client = self.client
            was_complete = client.known == self.storm.total
            if _FAST_RUN.fullmatch(body):
                self._run(body)
            else:
                self._events(body)
            self.storm.update(client, was_complete)
            return
        if self.pending_cr and body.startswith(b"\n"):
            body = body[1:]  # the \n of a \r\n split between reads
        self.pending_cr = False
        if b"\r" in body:
            self.pending_cr = body.endswith(b"\r")
            body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        text += body
        end = text.rfind(b"\n\n", max(self.scan - 1, 0))
        if end < 0:
            self.scan = len(text)
            return
        block = bytes(text[: end + 2])
        del text[: end + 2]
        self.scan = len(text)
        client = self.client
        was_complete = client.known == self.storm.total
        self._events(block)
        self.storm.update(client, was_complete)

    def _events(self, block: bytes) -> None:
        """Every event of ``block``, which ends with a blank line."""
        pos, size = 0, len(block)
        while pos < size:
            run = _FAST_RUN.match(block, pos)
            if run:
                self._run(block[pos : run.end()])
                pos = run.end()
            else:
                end = block.find(b"\n\n", pos)
                end = size if end < 0 else end + 2  # a last lone blank line
                self._parse(block[pos:end])
                pos = end

    def _run(self, run: bytes) -> None:
        """Events in exactly presence's form, or comments (see the module docstring)."""
        client, index, counters = self.client, self.storm.index, self.storm.counters
        view = client.view
        at = run.rfind(b"\nid: ") + 1
        if at or run.startswith(b"id: "):
            last = run[at + 4 : run.index(b"\n", at)]
            self.id_buffer = client.last_id = last
        if b'"status":"OFFLINE"' not in run:
            added = 0
            events = 0
            for i in map(index.get, _RUN_CLIENT.findall(run)):
                events += 1
                if i is not None and not view[i]:
                    view[i] = 1
                    added += 1
            client.known += added
            counters.online_events += events
            return
        for found in _RUN_EVENT.finditer(run):
            self._presence(found[2], found[3] == b"ONLINE")

    def _parse(self, text: bytes) -> None:
        """The general parser: ``text`` is whole lines, the last one blank."""
        for line in text.split(b"\n")[:-1]:
            if not line:
                self._dispatch()
                continue
            if line[0] == 0x3A:  # ":" a comment
                continue
            key, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if key == b"event":
                self.event_type = value
            elif key == b"data":
                self.data.append(value)
            elif key == b"id":
                if b"\x00" not in value:
                    self.id_buffer = value
            elif key == b"retry" and value.isdigit():
                self.client.reconnect_s = int(value) / 1000

    def _dispatch(self) -> None:
        self.client.last_id = self.id_buffer
        data, kind = b"\n".join(self.data), self.event_type or b"message"
        empty = not self.data
        self.data, self.event_type = [], b""
        if empty:
            return
        if kind == b"snapshot":
            self._snapshot(data)
        elif kind == b"presence":
            found = _PRESENCE_DATA.fullmatch(data)
            if found:
                self._presence(found[1], found[2] == b"ONLINE")
            else:
                event = _json(data)
                status = event.get("status")
                if isinstance(event.get("client"), str) and status in ("ONLINE", "OFFLINE"):
                    self._presence(event["client"].encode(), status == "ONLINE")

    def _snapshot(self, data: bytes) -> None:
        counters = self.storm.counters
        counters.snapshots += 1
        if _SNAPSHOT_DATA.fullmatch(data):
            names = _SNAPSHOT_CLIENT.findall(data)
            reset = data.endswith(b',"reset":true}')
        else:
            snapshot = _json(data)
            entries = snapshot.get("clients")
            if not isinstance(entries, list):
                return
            names = [
                e["client"].encode()
                for e in entries
                if isinstance(e, dict) and isinstance(e.get("client"), str)
            ]
            reset = snapshot.get("reset") is True
        counters.reset_snapshots += reset
        client, index = self.client, self.storm.index
        view = client.view = bytearray(self.storm.total)
        view[client.index] = 1
        known = 1
        for i in map(index.get, names):
            if i is not None and not view[i]:
                view[i] = 1
                known += 1
        client.known = known

    def _presence(self, who: bytes, online: bool) -> None:
        client, counters = self.client, self.storm.counters
        i = self.storm.index.get(who)
        if online:
            counters.online_events += 1
            if i is not None and not client.view[i]:
                client.view[i] = 1
                client.known += 1
        else:
            counters.offline_events += 1
            if i is not None and i != client.index and client.view[i]:
                client.view[i] = 0
                client.known -= 1

    # --- the end of a connection --------------------------------------------------------

    def _finish(self) -> None:
        """The server ended the stream, or answered otherwise: close, reconnect later."""
        if self.done:
            return
        self.done = True
        if self.transport is not None:
            self.transport.close()
        if self.storm.stopping:
            return
        if self.streaming:
            self.storm.counters.ended += 1
        self.storm.retry(self.client)

    def eof_received(self) -> bool:
        if not self.streaming and not self.done and not self.storm.stopping:
            self.storm.counters.closed_early += 1
            self.done = True
            self.storm.retry(self.client)
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.streaming and not self.done and not self.storm.stopping:
            self.storm.counters.closed_early += 1
            self.done = True
            self.storm.retry(self.client)
        self._finish()
        if self.client.transport is self.transport:
            self.client.transport = None


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
