"""The nginx recipe (``deploy/nginx/``) in front of two ``presence serve``
processes and a real Redis: events pass unbuffered, ``Last-Event-ID`` resumes,
ten streams share one HTTP/2 connection, a stopped server's clients move to
the other without a flap, and the client's token and address get through;
and compose.yaml wires the same files.

nginx runs ``deploy/nginx/presence.conf`` itself, the file compose.yaml
mounts, with the test's loopback addresses, certificate and log put in for
compose's names and paths; ``locations.conf`` is included unchanged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from presence import Settings
from presence.web.auth import mint

from .servers import Spawn
from .support import (
    Redis,
    RedisServer,
    ServerProcess,
    exists,
    free_port,
    poll,
    redis_past,
    truthy,
)

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "deploy" / "nginx"
NGINX = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
#: The servers' heartbeat interval, and their keys' TTL: 4 intervals, so that
#: a stopped server's clients have 1.5 s at least to be heartbeated by the other.
INTERVAL = 0.5
TTL_MS = 2000
SECRET = "a proxy test secret of 32 bytes!"
#: Streams are read without a deadline; the tests poll for what they expect.
TIMEOUT = httpx.Timeout(5, read=None)

TOP_LEVEL = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
{user}
events {{ worker_connections 1024; }}
http {{
client_body_temp_path {tmp}/body;
proxy_temp_path {tmp}/proxy;
fastcgi_temp_path {tmp}/fastcgi;
uwsgi_temp_path {tmp}/uwsgi;
scgi_temp_path {tmp}/scgi;
{recipe}
}}
"""


def nginx_version() -> tuple[int, ...]:
    assert NGINX is not None
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=True).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    return tuple(int(n) for n in found.groups())


def recipe(servers: tuple[ServerProcess, ServerProcess], port: int, tmp: Path) -> str:
    """presence.conf with this test's addresses and paths for compose's."""
    lines = (RECIPE / "presence.conf").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    # Debian bookworm's nginx (1.22) has no http2 directive: its listen line says it.
    old = nginx_version() < (1, 25, 1)
    swaps = {
        "server presence-1:8080;": f"server 127.0.0.1:{servers[0].port};",
        "server presence-2:8080;": f"server 127.0.0.1:{servers[1].port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl{' http2' if old else ''};",
        "http2 on;": "" if old else "http2 on;",
        "/etc/nginx/certs/": f"{tmp}/",
        "/etc/nginx/presence/": f"{RECIPE}/",
        "/var/log/nginx/access.log": f"{tmp}/access.log",
    }
    for before, after in swaps.items():
        assert before in text, f"deploy/nginx/presence.conf no longer has {before!r}"
        text = text.replace(before, after)
    return text


def certificates(tmp: Path) -> Path:
    """A CA, and presence.crt and presence.key for 127.0.0.1 signed by it; returns the CA's file."""
    now = datetime.now(UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def signed(builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey) -> bytes:
        certificate = (
            builder.serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .sign(key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("presence proxy test CA")
    (tmp / "ca.pem").write_bytes(
        signed(
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True),
            ca_key,
        )
    )
    key = ec.generate_private_key(ec.SECP256R1())
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    (tmp / "presence.crt").write_bytes(
        signed(
            x509.CertificateBuilder()
            .subject_name(name("127.0.0.1"))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .add_extension(x509.SubjectAlternativeName([loopback]), critical=False),
            ca_key,
        )
    )
    (tmp / "presence.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tmp / "ca.pem"


@dataclass
class Nginx:
    """nginx in the foreground on a free loopback port, owned by the test."""

    tmp: Path
    servers: tuple[ServerProcess, ServerProcess]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.tmp / "access.log"

    def start(self) -> None:
        assert NGINX is not None
        # As root, workers would run as nobody, who cannot reach pytest's tmp dirs.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.geteuid() == 0 else ""
        conf = self.tmp / "nginx.conf"
        text = recipe(self.servers, self.port, self.tmp)
        conf.write_text(TOP_LEVEL.format(tmp=self.tmp, user=user, recipe=text))
        with (self.tmp / "nginx.out").open("ab") as out:
            self.process = subprocess.Popen(
                [NGINX, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "error.log")],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers share its group: see stop()
            )

    async def wait_ready(self, timeout: float = 10) -> None:
        async def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.output()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await poll(listening, timeout=timeout, what="nginx listening")

    def output(self) -> str:
        logs = (self.tmp / "nginx.out", self.tmp / "error.log")
        return "".join(path.read_text(errors="replace") for path in logs if path.exists())

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # fast shutdown: the master stops its workers
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Received:
    event: str
    data: Any
    id: str | None
    #: time.monotonic() when its last line was read.
    at: float


class Stream:
    """An SSE response read in the background, as ``support.EventStream``
    parses one, each event timed as it arrives."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: list[Received] = []
        self.last_id: str | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        kind, data = "", list[str]()
        with suppress(httpx.HTTPError):  # a stream the server or the proxy reset
            async for line in self.response.aiter_lines():
                if not line:
                    if data:
                        parsed = json.loads("\n".join(data))
                        now = time.monotonic()
                        self.events.append(Received(kind or "message", parsed, self.last_id, now))
                    kind, data = "", []
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "event":
                    kind = value
                elif name == "id":
                    self.last_id = value

    def arrival(self, client: str, status: str) -> float | None:
        """When the ``status`` event about ``client`` arrived."""
        for e in self.events:
            if e.event == "presence" and (e.data["client"], e.data["status"]) == (client, status):
                return e.at
        return None

    def about(self, client: str) -> list[str]:
        return [
            e.data["status"]
            for e in self.events
            if e.event == "presence" and e.data["client"] == client
        ]

    async def close(self) -> None:
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task
        await self.response.aclose()


async def send(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.send(client.build_request("GET", url, headers=headers), stream=True)


class Tab:
    """A browser tab's stream: reconnected at once when it ends, with
    ``Last-Event-ID``, as ``EventSource`` does."""

    def __init__(self, client: httpx.AsyncClient, name: str) -> None:
        self.name = name
        self.statuses: list[int] = []
        self.streams: list[Stream] = []
        self._client = client
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        url = f"/clients/{self.name}/events"
        while True:
            last = self.streams[-1].last_id if self.streams else None
            try:
                response = await send(self._client, url, {"Last-Event-ID": last} if last else None)
            except httpx.HTTPError:
                self.statuses.append(0)
                await asyncio.sleep(0.05)
                continue
            self.statuses.append(response.status_code)
            if response.status_code != 200:
                await response.aclose()
                await asyncio.sleep(0.05)
                continue
            self.streams.append(Stream(response))
            await self.streams[-1].task
            await response.aclose()

    async def close(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        for stream in self.streams:
            await stream.close()


@dataclass
class Proxy:
    """Two servers behind nginx, and the test's clients and streams, which
    are closed (before nginx stops) when the test ends."""

    nginx: Nginx
    servers: tuple[ServerProcess, ServerProcess]
    tls: ssl.SSLContext
    exits: AsyncExitStack

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.nginx.port}"

    async def client(
        self, local_address: str | None = None, *, http2: bool = True
    ) -> httpx.AsyncClient:
        """An HTTP/2 client of the proxy that opens one connection at most,
        as a browser holds one per origin; or an HTTP/1.1 one."""
        transport = httpx.AsyncHTTPTransport(
            verify=self.tls,
            http1=not http2,
            http2=http2,
            limits=httpx.Limits(max_connections=1 if http2 else 100),
            local_address=local_address,
            trust_env=False,
        )
        client = httpx.AsyncClient(
            transport=transport, base_url=self.url, timeout=TIMEOUT, trust_env=False
        )
        return await self.exits.enter_async_context(client)

    async def direct(self) -> httpx.AsyncClient:
        """An HTTP/1.1 client of the servers themselves."""
        client = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)
        return await self.exits.enter_async_context(client)

    async def open(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
    ) -> Stream:
        async with asyncio.timeout(5):  # for the headers: a buffering proxy holds them too
            response = await send(client, url, headers)
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            raise AssertionError(f"{url}: {response.status_code} {body!r}")
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = Stream(response)
        self.exits.push_async_callback(stream.close)
        return stream

    def tab(self, client: httpx.AsyncClient, name: str) -> Tab:
        tab = Tab(client, name)
        self.exits.push_async_callback(tab.close)
        return tab


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def proxied(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> AsyncIterator[StartProxy]:
    """Start two servers on an emptied Redis and nginx in front of them (extra
    arguments go to both servers); nginx is stopped after the test."""
    if NGINX is None:
        pytest.skip("needs Debian's nginx-light (apt-get install nginx-light; .ci/run does)")
    started: list[Nginx] = []
    exits = AsyncExitStack()

    async def start(*extra: str) -> Proxy:
        ca = certificates(tmp_path)
        servers = (
            spawn(*_server_args(redis_server, "proxy-1"), *extra),
            spawn(*_server_args(redis_server, "proxy-2"), *extra),
        )
        await asyncio.gather(*(server.wait_healthy() for server in servers))
        nginx = Nginx(tmp_path, servers)
        started.append(nginx)  # before start(): a failed start is stopped too
        nginx.start()
        await nginx.wait_ready()
        return Proxy(nginx, servers, ssl.create_default_context(cafile=ca), exits)

    try:
        yield start
    finally:
        try:
            await exits.aclose()
        finally:
            for nginx in started:
                nginx.stop()


def _server_args(redis_server: RedisServer, server_id: str) -> list[str]:
    return [
        "--redis-url", redis_server.url,
        "--server-id", server_id,
        "--heartbeat-interval", str(INTERVAL),
        "--ttl-factor", str(TTL_MS / 1000 / INTERVAL),
        "--leave-grace", "0.2",
        "--trusted-proxies", "127.0.0.1",
        # nginx 1.22 sends an HTTP/2 response's headers with its first bytes
        # (see docs/proxy.md): a resumed stream with nothing to replay opens
        # at the next ping.
        "--keepalive-interval", "0.25",
    ]  # fmt: skip


async def refusal(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """The status and JSON body of a request answered without a stream."""
    response = await send(client, url, headers)
    try:
        return response.status_code, json.loads(await response.aread())
    finally:
        await response.aclose()


async def arrived(stream: Stream, client: str, status: str) -> float:
    async def check() -> float | None:
        return stream.arrival(client, status)

    at = await poll(check, what=f"{status} of {client}")
    assert at is not None
    return at


async def test_events_reach_a_client_through_the_proxy_as_fast_as_a_direct_one(
    proxied: StartProxy,
) -> None:
    proxy = await proxied()
    first, second = proxy.servers
    plain = await proxy.direct()
    near = await proxy.open(plain, f"{first.url}/clients/near/events")
    # nginx holds small writes to an HTTP/1.1 client when it buffers (not to
    # an HTTP/2 one): both are checked.
    far: dict[str, Stream] = {}
    for version in ("HTTP/1.1", "HTTP/2"):
        client = await proxy.client(http2=version == "HTTP/2")
        far[version] = await proxy.open(client, f"/clients/far-{len(far)}/events")
    assert {version: stream.response.http_version for version, stream in far.items()} == {
        "HTTP/1.1": "HTTP/1.1",
        "HTTP/2": "HTTP/2",
    }
    # The snapshot is the first write, and a small one: a buffering proxy holds it.
    streams = [near, *far.values()]
    await poll(lambda: truthy(all(stream.events for stream in streams)), what="the snapshots")
    assert {stream.events[0].event for stream in far.values()} == {"snapshot"}
    lags: dict[str, list[float]] = {version: [] for version in far}
    for i in range(5):
        await proxy.open(plain, f"{second.url}/clients/mover-{i}/events")
        direct_at = await arrived(near, f"mover-{i}", "ONLINE")
        for version, stream in far.items():
            lags[version].append(await arrived(stream, f"mover-{i}", "ONLINE") - direct_at)
    for version, each in lags.items():
        print(f"{version} through the proxy, later by (ms):", [round(s * 1000, 1) for s in each])
        assert statistics.median(each) < 0.1, (version, each)


async def _entries_after(redis: Redis, last: str, skip: str) -> list[tuple[str, str, str]]:
    """(id, client, status) of the ``presence`` entries after ``last``, but ``skip``'s."""
    return [
        (i.decode(), f[b"client"].decode(), f[b"status"].decode())
        for i, f in await redis.xrange("presence", f"({last}", "+")
        if f[b"client"].decode() != skip
    ]


async def test_last_event_id_resumes_through_the_proxy_without_a_gap(
    proxied: StartProxy, redis: Redis
) -> None:
    proxy = await proxied()
    first, second = proxy.servers
    h2, plain = await proxy.client(), await proxy.direct()
    tab = await proxy.open(h2, "/clients/resumer/events")
    await proxy.open(plain, f"{first.url}/clients/seen/events")
    await arrived(tab, "seen", "ONLINE")
    last = tab.last_id
    assert last is not None
    await tab.close()
    # Away: two come online, one after the other, and the first leaves.
    missed = []
    for name, server in (("missed-1", first), ("missed-2", second)):
        missed.append(await proxy.open(plain, f"{server.url}/clients/{name}/events"))
        await poll(partial(exists, redis, f"online.clients.{name}"), what=f"{name} online")
    await missed[0].close()

    async def left() -> list[tuple[str, str, str]]:
        entries = await _entries_after(redis, last, skip="resumer")
        return entries if ("missed-1", "OFFLINE") in {e[1:] for e in entries} else []

    expected = await poll(left, what="missed-1 OFFLINE")
    assert [e[1:] for e in expected] == [
        ("missed-1", "ONLINE"),
        ("missed-2", "ONLINE"),
        ("missed-1", "OFFLINE"),
    ]
    again = await proxy.open(h2, "/clients/resumer/events", {"Last-Event-ID": last})
    await poll(lambda: truthy(len(again.events) >= len(expected)), what="the replay")
    replayed = again.events[: len(expected)]
    assert {e.event for e in replayed} == {"presence"}
    assert [(e.id, e.data["client"], e.data["status"]) for e in replayed] == expected
    # Then live events follow.
    await proxy.open(plain, f"{second.url}/clients/live/events")
    await arrived(again, "live", "ONLINE")


_STREAM_LINE = re.compile(r'"GET /clients/tab-\d+/events HTTP/2\.0" 200 .* conn=(\d+) ')


async def test_ten_streams_share_one_http2_connection(proxied: StartProxy) -> None:
    proxy = await proxied()
    h2, plain = await proxy.client(), await proxy.direct()
    tabs = await asyncio.gather(*(proxy.open(h2, f"/clients/tab-{i}/events") for i in range(10)))
    assert {tab.response.http_version for tab in tabs} == {"HTTP/2"}
    await poll(lambda: truthy(all(tab.events for tab in tabs)), what="ten snapshots")
    assert {tab.events[0].event for tab in tabs} == {"snapshot"}
    await proxy.open(plain, f"{proxy.servers[0].url}/clients/trigger/events")
    for tab in tabs:
        await arrived(tab, "trigger", "ONLINE")
    await proxy.exits.aclose()  # closes the connection, ending its streams

    # nginx logs a request when it ends, with the serial number of its connection.
    async def logged() -> list[str]:
        lines = _STREAM_LINE.findall(proxy.nginx.access_log.read_text())
        return lines if len(lines) == 10 else []

    connections = await poll(logged, what="ten streams in nginx's access log")
    assert len(set(connections)) == 1, connections


async def _served_by(client: httpx.AsyncClient, server: ServerProcess, name: str) -> str | None:
    response = await client.get(f"{server.url}/clients/{name}")
    server_id: str | None = response.json()["server"]
    return server_id


async def test_a_stopped_servers_clients_reconnect_to_the_other_without_a_flap(
    proxied: StartProxy, redis: Redis
) -> None:
    proxy = await proxied()
    doomed, survivor = proxy.servers
    plain = await proxy.direct()
    observer = await proxy.open(plain, f"{survivor.url}/clients/observer/events")
    names = [f"tab-{i}" for i in range(4)]
    # A client each, as four browsers: one HTTP/2 connection's streams are
    # read by whichever of them holds httpcore's read lock, which could hold
    # back the news that another ended.
    tabs = [proxy.tab(await proxy.client(), name) for name in names]
    for name in names:
        await arrived(observer, name, "ONLINE")
    # Round robin: two on each server.
    where = {name: await _served_by(plain, survivor, name) for name in names}
    moving = [name for name, server in where.items() if server == "proxy-1"]
    assert len(moving) == 2, where
    assert await asyncio.to_thread(doomed.terminate) == 0
    stopped_ms = int(time.time() * 1000)  # it heartbeats no more

    async def moved() -> bool:
        held = [await _served_by(plain, survivor, name) for name in moving]
        return held == ["proxy-2"] * len(moving)

    await poll(moved, what="the stopped server's tabs heartbeated by the other")
    # Past the TTL of the stopped server's last heartbeats: an OFFLINE would be out.
    await poll(partial(redis_past, redis, stopped_ms + TTL_MS + 250), what="a TTL")
    for tab in tabs:
        assert observer.about(tab.name) == ["ONLINE"], tab.name
        # Each reconnect found the surviving server at once, and resumed.
        assert tab.statuses == [200] * (2 if tab.name in moving else 1), (tab.name, tab.statuses)
        resumed = [event.event for stream in tab.streams[1:] for event in stream.events]
        assert "snapshot" not in resumed, tab.name
    assert [f for _, f in await redis.xrange("presence") if f[b"status"] == b"OFFLINE"] == []
    await proxy.exits.aclose()
    # With no server left, the proxy's own error is JSON too.
    assert await asyncio.to_thread(survivor.terminate) == 0
    answer = await refusal(await proxy.client(), "/clients")
    assert answer == (502, {"error": "no presence server answered"})


async def test_the_proxy_forwards_the_token_and_the_clients_address(proxied: StartProxy) -> None:
    # One stream per client address on each server: counted by the client's
    # address (from X-Forwarded-For), not by the proxy's 127.0.0.1.
    proxy = await proxied("--auth-secret", SECRET, "--max-connections-per-address", "1")

    def bearer(client: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(SECRET, client, 60)}"}

    two, three = await proxy.client("127.0.0.2"), await proxy.client("127.0.0.3")
    status, body = await refusal(two, "/clients/c1/events")
    assert status == 401
    assert "error" in body
    # Round robin: one on each server.
    held = [await proxy.open(two, f"/clients/{c}/events", bearer(c)) for c in ("c1", "c2")]
    # A forged X-Forwarded-For stays on the left: the address nginx saw is counted.
    forged = {**bearer("c3"), "X-Forwarded-For": "10.1.2.3"}
    status, body = await refusal(two, "/clients/c3/events", forged)
    assert status == 429, body
    token = mint(SECRET, "c4", 60)
    held.append(await proxy.open(three, f"/clients/c4/events?token={token}"))
    await poll(lambda: truthy(all(stream.events for stream in held)), what="three snapshots")
    await proxy.exits.aclose()

    async def logged() -> str:
        text = proxy.nginx.access_log.read_text()
        return text if "GET /clients/c4/events HTTP/2.0" in text else ""

    assert token not in await poll(logged, what="c4's stream in nginx's access log")


def test_compose_runs_the_tested_recipe() -> None:
    services: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    conf = (RECIPE / "presence.conf").read_text()
    upstreams = re.findall(r"^\s*server ([\w.-]+):(\d+);", conf, re.MULTILINE)
    nginx = services["nginx"]
    proxy_address = nginx["networks"]["presence"]["ipv4_address"]
    ids = set()
    for host, port in upstreams:
        settings = Settings.from_env(services[host]["environment"])
        assert (settings.host, settings.port) == ("0.0.0.0", int(port))
        assert settings.redis_url.startswith("redis://redis:"), settings.redis_url
        assert settings.trusted_proxies == proxy_address
        ids.add(settings.server_id)
    assert len(upstreams) == len(ids) == 2
    command = " ".join(services["redis"]["command"])
    assert "--notify-keyspace-events Eg" in command
    assert "--maxmemory-policy noeviction" in command
    mounts = dict(volume.split(":")[:2] for volume in nginx["volumes"])
    assert mounts == {
        "./deploy/nginx/presence.conf": "/etc/nginx/conf.d/default.conf",
        "./deploy/nginx/locations.conf": "/etc/nginx/presence/locations.conf",
        "./deploy/nginx/certs": "/etc/nginx/certs",
    }
    assert all((REPO / path).exists() for path in mounts)
    assert "include /etc/nginx/presence/locations.conf;" in conf
