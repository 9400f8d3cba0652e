"""Who may be whom: tokens on client streams and reads, limits and CORS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from presence import PRESENCE, ConfigError, Settings, create_app

from .support import Redis, RedisServer, Serve, ServerProcess, exists, open_events, poll

# 64 bytes and more: PyJWT warns (an error here) below that for HS512.
SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 3


def token(sub: str = "alice", *, ttl: float = 60, key: object = SECRET, alg: str = "HS256") -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + ttl}, key, alg)  # type: ignore[arg-type]


async def status_of(
    session: aiohttp.ClientSession, url: object, **kwargs: object
) -> tuple[int, dict[str, object]]:
    async with session.get(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.json()


def unsigned(sub: str) -> str:
    """A token with ``alg: none``: no signature at all."""
    return hs256_by_hand({"sub": sub, "exp": int(time.time()) + 60}, b"", alg="none")


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda: None, 401),
        (lambda: "not-a-jwt", 401),
        (lambda: token(key=SECRET.upper()), 401),
        (lambda: token(alg="HS512"), 401),
        (lambda: unsigned("alice"), 401),
        (lambda: token(ttl=-60), 401),  # expired beyond the 5 s leeway
        (lambda: jwt.encode({"sub": "alice"}, SECRET, "HS256"), 401),  # no exp
        (lambda: token(sub="bob"), 403),
    ],
    ids=["none", "malformed", "wrong-signature", "wrong-alg", "alg-none", "expired", "no-exp",
         "other-sub"],
)  # fmt: skip
async def test_bad_tokens_are_refused_and_write_nothing(
    make: Callable[[], str | None],
    status: int,
    serve: Serve,
    settings: Settings,
    session: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    server = await serve(create_app(settings.replace(auth_secret=SECRET)))
    value = make()
    headers = {"Authorization": f"Bearer {value}"} if value else {}
    url = server.make_url("/clients/alice/events")
    code, body = await status_of(session, url, headers=headers)
    assert code == status
    assert isinstance(body["error"], str)
    if value:
        assert value not in str(body)
    # A good client afterwards: it is the only one Redis ever heard of.
    good = await open_events(
        session,
        str(server.make_url("/clients/carol/events")),
        {"Authorization": f"Bearer {token('carol')}"},
    )
    await good.next()
    await poll(lambda: _xlen(redis, "heartbeat", 1), what="carol's heartbeat")
    assert {f[b"client"] for _, f in await redis.xrange("heartbeat")} == {b"carol"}
    await poll(lambda: exists(redis, "online.clients.carol"), what="carol's heartbeat applied")
    assert await redis.keys("online.clients.*") == [b"online.clients.carol"]
    good.close()


async def _xlen(redis: Redis, key: str, n: int) -> bool:
    return bool(await redis.xlen(key) >= n)


async def test_a_token_is_accepted_as_header_cookie_or_query_parameter(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(auth_secret=SECRET)))
    url = str(server.make_url("/clients/alice/events"))
    ways = [
        (url, {"Authorization": f"Bearer {token()}"}),
        (url, {"Cookie": f"presence_token={token()}"}),
        (f"{url}?token={token()}", {}),
    ]
    for where, headers in ways:
        stream = await open_events(session, where, headers)
        assert (await stream.next()).event == "snapshot"
        stream.close()


async def test_a_stream_ends_when_its_token_expires(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(auth_secret=SECRET, auth_leeway=0)))
    stream = await open_events(
        session,
        str(server.make_url("/clients/alice/events")),
        {"Authorization": f"Bearer {token(ttl=2)}"},
    )
    await stream.next()
    opened = time.monotonic()
    with pytest.raises(EOFError):
        await stream.until(lambda _: False, timeout=5)  # keep-alives only, then the end
    assert time.monotonic() - opened < 4


async def test_reads_can_require_a_token(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(auth_secret=SECRET, auth_reads=True)))
    for path in ("/clients", "/clients/alice", "/metrics"):
        code, _ = await status_of(session, server.make_url(path))
        assert code == 401, path
        async with session.get(
            server.make_url(path), headers={"Authorization": f"Bearer {token('reader')}"}
        ) as response:
            assert response.status == 200, path
    async with session.get(server.make_url("/healthz")) as response:
        assert response.status == 200  # for load balancers, always


async def test_reads_are_public_unless_asked(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(auth_secret=SECRET)))
    async with session.get(server.make_url("/clients")) as response:
        assert response.status == 200


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_public_keys_verify_their_tokens_and_refuse_a_secret_made_of_them(
    kind: str, serve: Serve, settings: Settings, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    server = await serve(create_app(settings.replace(auth_public_key=str(tmp_path / "key.pem"))))
    url = str(server.make_url("/clients/alice/events"))
    good = await open_events(
        session, url, {"Authorization": f"Bearer {token(key=private, alg=kind)}"}
    )
    assert (await good.next()).event == "snapshot"
    good.close()
    # The classic confusion: an HS256 token whose secret is the public key itself.
    forged = hs256_by_hand({"sub": "alice", "exp": int(time.time()) + 60}, pem)
    code, _ = await status_of(session, url, headers={"Authorization": f"Bearer {forged}"})
    assert code == 401


def hs256_by_hand(claims: dict[str, object], secret: bytes, alg: str = "HS256") -> str:
    """A token built without PyJWT, which rightly refuses to build these two: HS256
    keyed with a PEM public key, and ``alg: none`` (empty signature)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    if alg == "none":
        return f"{header}.{payload}."
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def test_a_public_key_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        create_app(Settings(auth_public_key=str(tmp_path / "key.pem")))
    with pytest.raises(ConfigError, match="cannot read"):
        create_app(Settings(auth_public_key=str(tmp_path / "missing.pem")))


async def test_connection_limits_answer_503_and_429_in_json(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(
        create_app(settings.replace(max_connections=3, max_connections_per_client=2))
    )
    streams = [
        await open_events(session, str(server.make_url(f"/clients/{c}/events")))
        for c in ("alice", "alice", "bob")
    ]
    code, body = await status_of(session, server.make_url("/clients/carol/events"))
    assert (code, body) == (503, {"error": "this server holds all the connections it may"})
    streams.pop().close()  # bob leaves: room for one more, but not a third alice
    await poll(lambda: _connections(server, 2), what="bob's stream closed")
    code, body = await status_of(session, server.make_url("/clients/alice/events"))
    assert (code, body) == (429, {"error": "too many connections for this client id"})
    for stream in streams:
        stream.close()


async def _connections(server: TestServer, n: int) -> bool:
    return bool(server.app[PRESENCE]._service.connections.open == n)


async def test_cors_allows_only_the_listed_origins(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    closed = await serve(create_app(settings))
    async with session.get(
        closed.make_url("/clients"), headers={"Origin": "https://app.example.com"}
    ) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    allowed = settings.replace(server_id="test-2", cors_origins="https://app.example.com")
    server = await serve(create_app(allowed))
    async with session.get(
        server.make_url("/clients"), headers={"Origin": "https://app.example.com"}
    ) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    async with session.get(
        server.make_url("/clients"), headers={"Origin": "https://evil.example.com"}
    ) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Last-Event-ID",
    }
    async with session.options(
        server.make_url("/clients/alice/events"), headers=preflight
    ) as response:
        assert response.status == 200
        assert "LAST-EVENT-ID" in response.headers["Access-Control-Allow-Headers"].upper()


def test_the_token_command_mints_a_token_for_a_client() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "presence", "token", "alice", "--ttl", "60"],
        capture_output=True, text=True, check=False, timeout=30,
        env={"PRESENCE_AUTH_SECRET": SECRET, "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert 55 <= claims["exp"] - time.time() <= 61
    refused = subprocess.run(
        [sys.executable, "-m", "presence", "token", "alice"],
        capture_output=True, text=True, check=False, timeout=30, env={"PATH": ""},
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr == "presence: error: pass --auth-secret or set PRESENCE_AUTH_SECRET\n"


async def test_secrets_and_tokens_never_reach_the_logs(
    spawn: Callable[..., ServerProcess], redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """At DEBUG, with access logs: the secret, and a token sent as ?token=, appear nowhere."""
    server = spawn(
        "--redis-url", redis_server.url.replace("redis://", "redis://:hunter2@"),
        "--log-level", "DEBUG",
        "--max-line-size", "1024",
        env={"PRESENCE_AUTH_SECRET": SECRET},
    )  # fmt: skip
    await server.wait_healthy()
    url = f"{server.url}/clients/alice/events"
    secret_token = token()
    stream = await open_events(session, f"{url}?token={secret_token}")
    await stream.next()
    stream.close()
    for bad in (token(sub="bob"), "garbage." + secret_token[-20:]):
        async with session.get(f"{url}?token={bad}") as response:
            assert response.status in (401, 403)
            assert bad not in await response.text()
    # Too long to parse: aiohttp logs the line's start, which the log filter blanks.
    async with session.get(f"{url}?token={secret_token}&pad={'x' * 1100}") as response:
        assert response.status == 400
    assert server.terminate() == 0
    output = server.output()
    assert "/clients/alice/events" in output  # the access log is there
    for leaked in (SECRET, secret_token, secret_token[-20:], "hunter2"):
        assert leaked not in output
    assert set(re.findall(r"token=([^&\s'\"]+)", output)) <= {"***"}


async def test_oversized_request_lines_and_headers_are_refused(
    spawn: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    server = spawn("--max-line-size", "2048", "--max-field-size", "2048")
    await server.wait_healthy()
    async with session.get(f"{server.url}/clients?x={'a' * 3000}") as response:
        assert response.status == 400
    async with session.get(f"{server.url}/clients", headers={"X-Big": "b" * 3000}) as response:
        assert response.status == 400
    async with session.get(f"{server.url}/clients?x={'a' * 1000}") as response:
        assert response.status == 200  # under the cap
    async with session.get(f"{server.url}/healthz") as response:
        assert response.status == 200


def room_token(sub: str, rooms: object) -> str:
    claims = {"sub": sub, "exp": int(time.time()) + 60, "rooms": rooms}
    return jwt.encode(claims, SECRET, "HS256")


async def test_the_rooms_claim_decides_which_rooms_a_client_may_join(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(auth_secret=SECRET)))

    def events(room: str, tok: str, kind: str = "room") -> tuple[object, dict[str, str]]:
        url = server.make_url(f"/clients/alice/events?{kind}={room}")
        return url, {"Authorization": f"Bearer {tok}"}

    allowed = room_token("alice", ["lobby", "team-*"])
    for room in ("lobby", "team-", "team-red"):
        url, headers = events(room, allowed)
        stream = await open_events(session, str(url), headers)
        assert (await stream.next()).event == "snapshot", room
        stream.close()
    for room, tok, kind in [
        ("lobbyist", allowed, "room"),
        ("team", allowed, "room"),
        ("other", allowed, "occupancy"),
        ("lobby", token("alice"), "room"),  # no claim: no room
        ("lobby", room_token("alice", "lobby"), "room"),  # not a list: no room
    ]:
        url, headers = events(room, tok, kind)
        code, body = await status_of(session, url, headers=headers)
        assert code == 403, (room, kind)
        assert "room" in str(body["error"])
    # Data is the client's own: another client's token may not set it.
    put = server.make_url("/rooms/lobby/clients/alice/data")
    for tok, code in [(room_token("bob", ["lobby"]), 403), (room_token("alice", ["x"]), 403)]:
        async with session.put(put, json={}, headers={"Authorization": f"Bearer {tok}"}) as r:
            assert r.status == code
    async with session.put(put, json={"a": 1}) as response:
        assert response.status == 401
    async with session.put(
        server.make_url("/rooms/team-x/clients/alice/data"),
        json={"a": 1},
        headers={"Authorization": f"Bearer {allowed}"},
    ) as response:
        assert response.status == 404  # allowed, but alice is not in team-x
