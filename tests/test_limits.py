"""The limits of ``presence serve``'s connections: the request deadline, the
caps and their addresses, the open-file limit, malformed requests, and
connections counted out the moment they close."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import struct
from collections.abc import Callable

import aiohttp
import pytest

from presence import ConfigError, Settings, create_app
from presence.web.addresses import client_address, is_trusted
from presence.web.guard import FULL, TOO_MANY, Guard
from presence.web.open_files import connection_cap, largest, needed

from .support import EventStream, Redis, RedisServer, Serve, ServerProcess, open_events, poll

Spawn = Callable[..., ServerProcess]


async def raw(port: int | None, data: bytes, *, source: str = "127.0.0.1") -> bytes:
    """Send ``data`` on a new connection; everything the server answers until it closes."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(data)
    try:
        return await reader.read()
    finally:
        writer.close()


def body_of(answer: bytes) -> object:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


async def test_a_request_that_does_not_arrive_in_time_is_closed_but_streams_are_not(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    server = spawn("--request-timeout", "0.5", "--keepalive-interval", "0.2")
    await server.wait_healthy()
    stream = await open_events(session, f"{server.url}/clients/alice/events")
    assert (await stream.next()).event == "snapshot"
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert body_of(answer) == {"error": "the request did not arrive in time"}
    assert 0.4 < loop.time() - started < 3
    # Nothing sent at all: the same.
    assert (await raw(server.port, b"")).startswith(b"HTTP/1.1 408 ")
    # A keep-alive connection's next request, half-sent, too.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
    await reader.readuntil(b"}")
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 408 ")
    writer.close()
    # The stream, open for longer than the deadline, still gets its keep-alives.
    comments = stream.comments
    await poll(lambda: _more_comments(stream, comments), what="keep-alives on the stream")
    stream.close()


async def test_body_bytes_after_the_response_are_no_request_to_time_out(
    spawn: Spawn,
) -> None:
    server = spawn("--request-timeout", "0.5")
    await server.wait_healthy()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 18\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
    await reader.readuntil(b"}")
    writer.write(b'{"ignored": true}\n')  # the body, late
    await writer.drain()
    # Nothing can be polled for here: the check is that no 408 comes, past
    # the deadline. (aiohttp reads an unread body for 1 s after its response;
    # a test stalled longer sees the connection closed, without a 408.)
    await asyncio.sleep(1)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert b" 408 " not in answer, answer
    assert not answer or answer.startswith(b"HTTP/1.1 200 "), answer


async def test_a_client_that_stops_reading_a_response_is_dropped(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    """Not a stream: past --stall-timeout without progress, it no longer holds a connection."""
    server = spawn("--stall-timeout", "1", "--max-connections", "1")
    await server.wait_healthy()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", server.port))
    # The static script, over and over (more than the kernel buffers), never read.
    sock.settimeout(10)
    sock.sendall(b"GET /static/demo.js HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
    try:
        await poll(lambda: _dropped(session, server.url), timeout=15, what="the reader dropped")
    finally:
        sock.close()


async def _dropped(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    found = re.search(r"^presence_requests_timed_out_total (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found[1]) >= 1


async def _more_comments(stream: EventStream, before: int) -> bool:
    with contextlib.suppress(TimeoutError):
        await stream.next(timeout=0.05)
    return stream.comments > before


async def test_a_body_that_does_not_arrive_in_time_gets_a_408(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(request_timeout=0.3)))
    head = (
        b"PUT /rooms/lobby/clients/alice/data HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await raw(server.port, head + b'{"status":')
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert body_of(answer) == {"error": "the request body did not arrive in time"}
    # Closed with the 408, not after reading the rest of the body for seconds.
    assert loop.time() - started < 2


async def test_a_body_sent_in_pieces_is_read_whole(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings))
    stream = await open_events(session, str(server.make_url("/clients/alice/events?room=lobby")))
    assert (await stream.next()).event == "snapshot"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = b'{"status": "away"}'
    writer.write(
        b"PUT /rooms/lobby/clients/alice/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body[:5])
    )
    await writer.drain()
    await asyncio.sleep(0.1)  # the rest comes later, as over a slow network
    writer.write(body[5:])
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert body_of(answer) == {
        "room": "lobby",
        "client": "alice",
        "data": {"status": "away"},
        "changed": True,
    }
    stream.close()


async def test_malformed_requests_are_client_errors_counted_and_logged_rarely(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    server = spawn("--max-line-size", "2048")
    await server.wait_healthy()
    before = len(server.output())
    answers = await asyncio.gather(
        *(raw(server.port, b"GET /?x=" + b"a" * 4000 + b" HTTP/1.1\r\n\r\n") for _ in range(200))
    )
    for answer in answers:
        assert b" 400 " in answer.split(b"\r\n")[0], answer
        assert body_of(answer) == {"error": "request line or header too long"}
    assert body_of(await raw(server.port, b"\x16\x03\x01 not http\r\n\r\n")) == {
        "error": "malformed request"
    }
    async with session.get(f"{server.url}/metrics") as response:
        assert "presence_requests_malformed_total 201.0" in await response.text()
    log = server.output()[before:]
    assert "Traceback" not in log, log
    assert "ERROR" not in log, log
    assert log.count("malformed request") <= 2, log


async def test_a_connection_past_the_per_address_cap_is_refused_at_once(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    # A long request deadline: the held connections send nothing.
    server = spawn("--max-connections-per-address", "3", "--request-timeout", "60")
    await server.wait_healthy()
    held = [
        await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.2", 0))
        for _ in range(3)
    ]
    answer = await raw(server.port, b"", source="127.0.0.2")
    assert answer == TOO_MANY
    # Another address is not affected.
    async with session.get(f"{server.url}/healthz") as response:
        assert response.status == 200
    for _, writer in held:
        writer.close()
    # Counted out as they close.
    await poll(lambda: _healthz_from(server.port, "127.0.0.2"), what="a slot for 127.0.0.2")
    async with session.get(f"{server.url}/metrics") as response:
        text = await response.text()
    refused = re.search(r'presence_connections_refused_total\{reason="address"\} (\S+)', text)
    assert refused is not None
    assert float(refused[1]) >= 1


async def _healthz_from(port: int, source: str) -> bool:
    try:
        answer = await raw(
            port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", source=source
        )
    except ConnectionResetError:  # refused with its request unread
        return False
    return answer.startswith(b"HTTP/1.1 200 ")


class _Handler:
    """What the guard calls of a connection."""

    def __init__(self) -> None:
        self.closed = False

    def evict(self) -> None:
        self.closed = True


def test_the_guard_makes_room_from_waiting_connections_and_refuses_past_them() -> None:
    guard = Guard(Settings(max_connections_per_address=2, trusted_proxies="10.0.0.1"), cap=4)
    admit: Callable[[_Handler, str], bytes | None] = guard.admit  # type: ignore[assignment]
    proxy, first, second, third, fourth, fifth = (_Handler() for _ in range(6))
    for handler in (proxy, proxy, proxy):  # a trusted proxy is not counted per address
        assert admit(handler, "10.0.0.1") is None
    assert guard.connections == 1
    assert admit(first, "192.0.2.1") is None
    assert admit(second, "192.0.2.1") is None
    assert admit(third, "192.0.2.1") == TOO_MANY
    for handler in (proxy, second):
        guard.serving(handler)  # type: ignore[arg-type]
    # At the cap, the connection waiting longest is closed to make room.
    assert admit(fourth, "198.51.100.7") is None
    assert guard.connections == 4
    assert admit(fifth, "198.51.100.8") is None
    assert first.closed
    assert not fourth.closed
    assert guard.evicted == 1
    assert guard.connections == 4
    for handler in (fourth, fifth):
        guard.serving(handler)  # type: ignore[arg-type]
    # Nothing waiting: refused.
    assert admit(_Handler(), "198.51.100.9") == FULL
    assert guard.refused_full == 1
    assert guard.refused_address == 1
    # Counted out once, however often released.
    guard.release(second)  # type: ignore[arg-type]
    guard.release(second)  # type: ignore[arg-type]
    assert guard.connections == 3


def test_forwarded_addresses_are_believed_only_from_trusted_proxies() -> None:
    from aiohttp.test_utils import make_mocked_request

    proxies = Settings(trusted_proxies="10.0.0.0/8").networks

    def address(peer: str, forwarded: str) -> str:
        request = make_mocked_request("GET", "/", headers={"X-Forwarded-For": forwarded})
        request = request.clone(remote=peer)
        return client_address(request, proxies)

    assert address("10.1.2.3", "203.0.113.9") == "203.0.113.9"
    # The client wrote the left part itself: read from the right, past the proxies.
    assert address("10.1.2.3", "1.2.3.4, 203.0.113.9, 10.0.0.5") == "203.0.113.9"
    assert address("198.51.100.1", "203.0.113.9") == "198.51.100.1"
    assert is_trusted("::ffff:10.0.0.1", proxies)
    assert not is_trusted("not an address", proxies)
    with pytest.raises(ConfigError, match="trusted proxies"):
        Settings(trusted_proxies="10.0.0.0/8, nonsense")


async def test_streams_are_capped_per_forwarded_address_behind_a_trusted_proxy(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(
        create_app(settings.replace(max_connections_per_address=2, trusted_proxies="127.0.0.1"))
    )

    def url(client: str) -> str:
        return str(server.make_url(f"/clients/{client}/events"))

    one = {"X-Forwarded-For": "203.0.113.9"}
    streams = [await open_events(session, url(f"u{i}"), one) for i in range(2)]
    async with session.get(url("u3"), headers=one) as response:
        assert response.status == 429
        assert await response.json() == {"error": "too many connections from this address"}
    other = await open_events(session, url("u4"), {"X-Forwarded-For": "198.51.100.4"})
    streams[0].close()
    await poll(lambda: _opens(session, url("u5"), one), what="the address counted out")
    for stream in [*streams, other]:
        stream.close()


async def _opens(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bool:
    async with session.get(url, headers=headers) as response:
        return response.status == 200


def test_max_connections_is_checked_against_the_open_file_limit(spawn: Spawn) -> None:
    server = spawn("--max-connections", "5000", open_files=1024)
    assert server.process is not None
    assert server.process.wait(15) == 2
    line = server.output().strip().splitlines()[-1]
    assert line == (
        f"presence: error: --max-connections 5000 needs {needed(5000)} open files, but this "
        "process may open 1024 (ulimit -n): raise the limit or lower --max-connections"
    )


async def test_the_default_cap_is_lowered_to_fit_the_open_file_limit(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    server = spawn(open_files=1024)
    await server.wait_healthy()
    fitting = largest(1024)
    assert needed(fitting) <= 1024 < needed(fitting + 1)
    assert f"max connections lowered to {fitting}" in server.output()
    async with session.get(f"{server.url}/metrics") as response:
        assert f"presence_http_connections_max {connection_cap(fitting)}.0" in await response.text()


async def test_a_reconnect_is_not_refused_for_connections_that_are_gone(
    spawn: Spawn, redis: Redis, redis_server: RedisServer
) -> None:
    """Streams reset by the network are counted out at once: their clients'
    reconnects are not refused at the cap, and nobody goes OFFLINE."""
    clients = 40
    server = spawn(
        *("--redis-url", redis_server.url, "--max-connections", str(clients)),
        *("--heartbeat-interval", "0.5", "--leave-grace", "1"),
    )
    await server.wait_healthy()
    streams = [await _raw_stream(server.port, f"c{i}") for i in range(clients)]
    await poll(lambda: _all_online(redis, clients), what="every client online")
    for i in range(0, clients, 2):
        _reset(streams[i][1])
        streams[i] = await _raw_stream(server.port, f"c{i}", last_id="0-0")
    await asyncio.sleep(0)
    # Past the leave grace and a TTL: still online, never OFFLINE.
    deadline = await redis.time()
    await poll(
        lambda: _redis_after(redis, deadline[0] + 2), timeout=10, what="grace and TTL passed"
    )
    entries = await redis.xrange("presence")
    assert [f for _, f in entries if f[b"status"] == b"OFFLINE"] == []
    assert await _all_online(redis, clients)
    for _, writer in streams:
        writer.close()


async def _raw_stream(
    port: int, client: str, last_id: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An SSE stream over HTTP/1.0 (no chunking), once its answer's head is in."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    resume = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
    writer.write(f"GET /clients/{client}/events HTTP/1.0\r\n{resume}\r\n".encode())
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.0 200 "), (client, status, await reader.read(500))
    return reader, writer


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST, as a network that dropped the connection would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _all_online(redis: Redis, clients: int) -> bool:
    return bool(await redis.hlen("online.servers") == clients)


async def _redis_after(redis: Redis, second: int) -> bool:
    return bool((await redis.time())[0] >= second)


def test_failed_accepts_are_counted_and_logged_once_in_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = Guard(Settings(), cap=10)
    loop = asyncio.new_event_loop()
    try:
        failure = {"message": "socket.accept() out of system resource", "exception": OSError(24)}
        with caplog.at_level(logging.WARNING, logger="presence.web.guard"):
            for _ in range(1000):
                guard.loop_exception(loop, failure)
        assert guard.accept_errors == 1000
        assert len(caplog.records) == 1
        assert caplog.records[0].exc_info is None
        # Anything else still reaches asyncio's own handler.
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            guard.loop_exception(loop, {"message": "something else"})
        assert any(r.name == "asyncio" for r in caplog.records)
    finally:
        loop.close()
