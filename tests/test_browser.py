"""The demo page, the browser client example and presence-client.js in a real
headless Chromium (Debian's; no test downloads a browser), launched once for
the module.

The client tests record every event a ``PresenceClient`` emits (``HARNESS``)
and check that they add up: from the first ``sync``'s members, each
``online``, ``update`` and ``offline`` applied in turn gives every later
``sync``'s members and ``members()`` now, which equals the server's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright

from presence import Settings, setup

from .support import Redis, RedisServer, ServerProcess, poll, truthy

Spawn = Callable[..., ServerProcess]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without these, Chromium dials Google's hosts at start, which this network refuses.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET = "browser-test-secret-" + "0123456789abcdef" * 3
BROWSER_CLIENT = Path(__file__).resolve().parent.parent / "examples" / "browser_client.html"
WAIT = 10_000  # ms, for every wait in the page

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"
    ),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        await launched.close()


@asynccontextmanager
async def emptied(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test Redis, emptied first (the ``redis`` fixture lives
    in another event loop than these tests)."""
    client: Redis = aioredis.from_url(redis_server.url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def users(browser: Browser, count: int) -> AsyncIterator[list[Page]]:
    """Pages of their own browser contexts: each in the foreground, as two
    users' would be (a background tab's timers are throttled)."""
    contexts = [await browser.new_context() for _ in range(count)]
    try:
        yield [await context.new_page() for context in contexts]
    finally:
        for context in contexts:
            await context.close()


def serve(redis_server: RedisServer, spawn: Spawn, *args: str) -> ServerProcess:
    return spawn(
        "--redis-url", redis_server.url,
        "--server-id", "demo-1",
        "--heartbeat-interval", "5",
        "--keepalive-interval", "1",
        *args,
    )  # fmt: skip


# Starts a PresenceClient in the page as window.presence[name], recording what it emits.
# `tokens`, if given, are what getToken returns in turn (then null); `reasons` what it was asked.
HARNESS = """async ({ base, name, options, tokens }) => {
  const { PresenceClient } = await import(`${base}/static/presence-client.js`);
  const log = [];
  const reasons = [];
  const rooms = options.rooms ?? [];
  const settings = { url: base, client: name, minDelay: 100, maxDelay: 1000, ...options };
  if (tokens) {
    settings.getToken = async ({ reason }) => {
      reasons.push(reason);
      return tokens.length ? tokens.shift() : null;
    };
  }
  const p = new PresenceClient(settings);
  const list = (room) => [...p.members(room).values()];
  for (const type of ["online", "update", "offline", "sync", "occupancy", "state"]) {
    p.on(type, (e) => {
      const entry = { ...e, type };
      if (e.error) entry.error = `${e.error.name}: ${e.error.message}`;
      if (type === "sync" || type === "state") {
        entry.members = { "": list(), ...Object.fromEntries(rooms.map((r) => [r, list(r)])) };
      }
      log.push(entry);
    });
  }
  (window.presence ??= {})[name] = { p, log, reasons };
  p.connect();
}"""


async def start(
    page: Page, base: str, name: str, tokens: list[str] | None = None, **options: Any
) -> None:
    await page.evaluate(HARNESS, {"base": base, "name": name, "options": options, "tokens": tokens})


async def members(page: Page, name: str, room: str = "") -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = await page.evaluate(
        "([n, r]) => Object.fromEntries(window.presence[n].p.members(r || undefined))",
        [name, room],
    )
    return found


async def log_of(page: Page, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await page.evaluate("(n) => window.presence[n].log", name)
    return found


async def state_is(page: Page, name: str, state: str) -> None:
    await page.wait_for_function(
        "([n, s]) => window.presence?.[n]?.p.state === s", arg=[name, state], timeout=WAIT
    )


async def lists(page: Page, name: str, expected: set[str], room: str = "") -> None:
    """Wait until the client's members (of ``room``) are exactly ``expected``."""
    await page.wait_for_function(
        """([n, r, want]) => {
          const got = [...(window.presence?.[n]?.p.members(r || undefined).keys() ?? [])];
          return got.sort().join() === want.sort().join();
        }""",
        arg=[name, room, sorted(expected)],
        timeout=WAIT,
    )


def added_up(log: list[dict[str, Any]], room: str = "") -> dict[str, dict[str, Any]]:
    """The members the events add up to, checked against each later ``sync``."""
    syncs = [e for e in log if e["type"] == "sync"]
    assert syncs, "no sync"
    assert not syncs[0]["reset"], "the first sync starts the list"
    start = log.index(syncs[0])
    view = {m["client"]: m for m in syncs[0]["members"][room]}
    for event in log[start + 1 :]:
        if event["type"] == "sync":
            assert view == {m["client"]: m for m in event["members"][room]}, event
        elif event["type"] in ("online", "update", "offline") and event.get("room", "") == room:
            member = {k: event[k] for k in ("client", "server", "data") if k in event}
            if event["type"] == "offline":
                del view[event["client"]]
            else:
                view[event["client"]] = member
    return view


async def online_ids(session: aiohttp.ClientSession, server: ServerProcess) -> set[str]:
    async with session.get(f"{server.url}/clients") as response:
        return {c["client"] for c in (await response.json())["clients"]}


async def test_two_pages_see_each_other_come_and_go(
    browser: Browser, spawn: Spawn, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with emptied(redis_server):
        server = serve(redis_server, spawn, "--leave-grace", "0.5")
        await server.wait_healthy()
        async with users(browser, 2) as (alice, bob):
            await alice.set_viewport_size({"width": 720, "height": 640})
            await alice.goto(f"{server.url}/")
            await alice.fill("#name", "alice")
            await alice.click("#connect")
            await bob.goto(f"{server.url}/?name=bob")
            await alice.wait_for_selector('#online li[data-client="bob"]', timeout=WAIT)
            await bob.wait_for_selector('#online li[data-client="alice"]', timeout=WAIT)
            assert await alice.text_content("#state") == "online as alice"
            assert await alice.text_content("#count") == "1"
            screenshot = os.environ.get("PRESENCE_DEMO_SCREENSHOT") or tmp_path / "demo.png"
            await alice.screenshot(path=screenshot)
            await bob.close()
            # Gone from alice's list within the leave grace (the TTL would take 7.5 s).
            await alice.wait_for_selector(
                '#online li[data-client="bob"]', state="detached", timeout=5_000
            )
            assert "bob left" in (await alice.text_content("#activity") or "")


async def test_the_minimal_browser_client_example_follows_presence(
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """examples/browser_client.html, served beside presence mounted with ``setup``,
    which serves the client under its prefix."""
    app = web.Application()
    setup(app, settings.replace(heartbeat_interval=30))

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(BROWSER_CLIENT)

    app.router.add_get("/", page)
    async with emptied(redis_server) as redis:
        server = TestServer(app)
        await server.start_server()
        context = await browser.new_context()
        try:
            async with aiohttp.ClientSession() as session:
                for name in ("presence-client.js", "presence-client.d.ts"):
                    url = server.make_url(f"/presence/static/{name}")
                    async with session.get(url) as response:
                        assert response.status == 200
                        assert response.content_type == "text/javascript"
            alice = await context.new_page()
            await alice.goto(str(server.make_url("/?name=alice")))
            await redis.xadd("heartbeat", {"client": "bob", "server": "ext"})
            # From its snapshot or from an event, depending on timing.
            await alice.wait_for_selector("#online li:text('bob')", timeout=WAIT)
            await redis.delete("online.clients.bob")  # OFFLINE: surely an event
            await alice.wait_for_selector("#online li:text('bob')", state="detached", timeout=WAIT)
            assert "bob OFFLINE" in (await alice.text_content("#log") or "")
        finally:
            await context.close()
            await server.close()


async def test_two_pages_in_a_room_see_each_others_status_under_a_prefix(
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """The demo page with ``?room=``, mounted with ``setup`` under ``/presence``."""
    app = web.Application()
    presence = setup(app, settings.replace(heartbeat_interval=30, leave_grace=0.3))
    async with emptied(redis_server) as redis:
        server = TestServer(app)
        await server.start_server()
        page_url = str(server.make_url("/presence/"))
        try:
            async with users(browser, 2) as (alice, bob):
                await alice.goto(f"{page_url}?room=lobby")
                # Set before connecting: it goes with the join (?data=).
                await alice.fill("#status", "typing")
                await alice.click("#set-status")
                await alice.fill("#name", "alice")
                await alice.click("#connect")
                await bob.goto(f"{page_url}?name=bob&room=lobby")
                await bob.wait_for_selector(
                    '#online li[data-client="alice"]:has-text("alice — typing")', timeout=WAIT
                )
                await alice.wait_for_selector('#online li[data-client="bob"]', timeout=WAIT)
                assert await alice.text_content("#state") == "online as alice in lobby"
                assert await alice.text_content("#list-title") == "In lobby"
                # Set while connected: PUT .../data, an UPDATE for the others.
                await alice.fill("#status", "away")
                await alice.click("#set-status")
                await bob.wait_for_selector(
                    '#online li[data-client="alice"]:has-text("alice — away")', timeout=WAIT
                )
                assert await redis.hget("room.{lobby}.data", "alice") == b'{"status":"away"}'
                assert "alice is away" in (await bob.text_content("#activity") or "")
                await bob.close()
                await alice.wait_for_selector(
                    '#online li[data-client="bob"]', state="detached", timeout=5_000
                )
                assert "bob left" in (await alice.text_content("#activity") or "")
                # Reconnecting with the first URL would set "typing" again.
                async with alice.expect_request(
                    lambda r: "/events?" in r.url, timeout=WAIT
                ) as reconnect:
                    presence._service.connections.close_all("closed")
                request = await reconnect.value
                assert "data=%7B%22status%22%3A%22away%22%7D" in request.url
                assert (await request.all_headers())["last-event-id"]
                await alice.wait_for_selector("#state.open", timeout=WAIT)
        finally:
            await server.close()


async def test_room_join_update_and_leave_and_occupancy(
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """Room events as the client emits them, and a watch list's, embedded
    under ``/presence``."""
    app = web.Application()
    setup(app, settings.replace(heartbeat_interval=30, leave_grace=0.3))
    async with emptied(redis_server):
        server = TestServer(app)
        await server.start_server()
        base = str(server.make_url("/presence"))
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(f"{base}/")
            await start(page, base, "alice", rooms=["lobby"], occupancy=["lobby"])
            await start(page, base, "carol", watch=["bob"])
            await state_is(page, "alice", "open")
            await state_is(page, "carol", "open")
            await start(page, base, "bob", rooms=["lobby"], data={"status": "here"})
            await lists(page, "alice", {"bob"}, "lobby")
            await lists(page, "carol", {"bob"})
            assert (await members(page, "alice", "lobby"))["bob"]["data"] == {"status": "here"}
            await page.wait_for_function(
                "() => window.presence.alice.p.count('lobby') === 2", timeout=WAIT
            )
            changed = await page.evaluate(
                "() => window.presence.bob.p.setData('lobby', {status: 'away'})"
            )
            assert changed is True
            await page.wait_for_function(
                "() => window.presence.alice.p.members('lobby').get('bob')?.data?.status == 'away'",
                timeout=WAIT,
            )
            await page.evaluate("() => window.presence.bob.p.close()")
            await lists(page, "alice", set(), "lobby")
            await lists(page, "carol", set())  # globally offline too, after the grace
            await page.wait_for_function(
                "() => window.presence.alice.p.count('lobby') === 1", timeout=WAIT
            )
            log = await log_of(page, "alice")
            about_bob = [(e["type"], e.get("data")) for e in log if e.get("client") == "bob"]
            assert about_bob == [
                ("online", {"status": "here"}),
                ("update", {"status": "away"}),
                ("offline", {"status": "away"}),
            ]
            assert all(e["room"] == "lobby" and not e["synthetic"] for e in log if "client" in e)
            assert added_up(log, "lobby") == {}
            watched = await log_of(page, "carol")
            assert [(e["type"], "room" in e) for e in watched if "client" in e] == [
                ("online", False),
                ("offline", False),
            ]
            assert added_up(watched) == {}
        finally:
            await context.close()
            await server.close()


class Link:
    """A TCP proxy to a server whose connections can be cut, as a network drop
    would: ``cut()`` resets every connection and refuses new ones until
    ``restore()``."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._open: set[asyncio.StreamWriter] = set()
        self._up = True
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Link:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    def cut(self) -> None:
        self._up = False
        for writer in self._open:
            writer.transport.abort()

    def restore(self) -> None:
        self._up = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self._target)
        self._open |= {writer, upstream_w}
        try:
            await asyncio.gather(self._pump(reader, upstream_w), self._pump(upstream_r, writer))
        finally:
            self._open -= {writer, upstream_w}
            writer.transport.abort()
            upstream_w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
        writer.transport.abort()


async def test_a_trimmed_stream_gives_a_reset_with_exactly_the_differences(
    browser: Browser, spawn: Spawn, redis_server: RedisServer
) -> None:
    """Cut off while others come and go and the ``presence`` stream is
    trimmed: the resume cannot be exact, and the reset snapshot's differences
    come as synthetic events. Back online, the client reconnects at once."""
    async with emptied(redis_server) as redis, aiohttp.ClientSession() as session:
        server = serve(redis_server, spawn, "--heartbeat-interval", "10", "--leave-grace", "30")
        await server.wait_healthy()
        for client in ("stays", "leaves"):
            await redis.xadd("heartbeat", {"client": client, "server": "ext"})

        async def online(expected: set[str]) -> bool:
            return await online_ids(session, server) == expected

        # Online before alice connects: her snapshot lists them, no event does.
        await poll(lambda: online({"stays", "leaves"}), what="the first two online")
        context = await browser.new_context()
        try:
            async with Link(server.port) as link:
                page = await context.new_page()
                await page.goto(f"{link.url}/")
                # A backoff far longer than the test: only `online` ends it.
                await start(page, link.url, "alice", minDelay=60_000, maxDelay=60_000)
                await lists(page, "alice", {"stays", "leaves"})
                await context.set_offline(True)
                link.cut()
                await state_is(page, "alice", "reconnecting")
                await redis.xadd("heartbeat", {"client": "comes", "server": "ext"})
                await redis.delete("online.clients.leaves")
                expected = {"alice", "stays", "comes"}
                await poll(lambda: online(expected), timeout=10, what="the view after the changes")
                await redis.xtrim("presence", maxlen=0)
                link.restore()
                await context.set_offline(False)
                await page.wait_for_function(
                    "() => window.presence.alice.log.some((e) => e.type === 'sync' && e.reset)",
                    timeout=WAIT,
                )
            log = await log_of(page, "alice")
            reset = next(i for i, e in enumerate(log) if e["type"] == "sync" and e["reset"])
            synthetic = [(e["type"], e["client"]) for e in log if e.get("synthetic")]
            assert sorted(synthetic) == [("offline", "leaves"), ("online", "comes")]
            assert all(log.index(e) < reset for e in log if e.get("synthetic"))
            assert not [e for e in log if "client" in e and not e["synthetic"]]
            assert set(await members(page, "alice")) == expected - {"alice"}
            assert set(added_up(log)) == expected - {"alice"}
        finally:
            await context.close()


async def test_a_server_killed_and_restarted_under_the_page_keeps_its_members(
    browser: Browser, spawn: Spawn, redis_server: RedisServer
) -> None:
    """SIGKILL: the members stay while the client reconnects, and right after it
    they equal the server's view, events included. The page becoming visible
    cuts the backoff short."""
    async with emptied(redis_server) as redis, aiohttp.ClientSession() as session:
        server = serve(redis_server, spawn)
        await server.wait_healthy()
        await redis.xadd("heartbeat", {"client": "ext", "server": "elsewhere"})
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(f"{server.url}/")
            # A backoff far longer than the test: the page becoming visible ends it.
            await start(page, server.url, "alice", minDelay=60_000, maxDelay=60_000)
            await start(page, server.url, "bob", minDelay=60_000, maxDelay=60_000)
            await lists(page, "alice", {"bob", "ext"})
            before = await members(page, "alice")
            server.kill()
            await state_is(page, "alice", "reconnecting")
            await state_is(page, "bob", "reconnecting")
            # While it is down: one more comes, whom the restarted server announces.
            await redis.xadd("heartbeat", {"client": "late", "server": "elsewhere"})
            server.start()
            await server.wait_healthy()
            await page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
            await lists(page, "alice", {"bob", "ext", "late"})
            assert await online_ids(session, server) == {"alice", "bob", "ext", "late"}
            log = await log_of(page, "alice")
            # Through the reconnect and on its return, before the replay: as before.
            states = [e for e in log if e["type"] == "state"]
            assert [e["to"] for e in states] == ["connecting", "open", "reconnecting", "open"]
            assert all(e["members"][""] == list(before.values()) for e in states[2:])
            assert added_up(log) == await members(page, "alice")
            # bob and ext never left: no flap, and no reset to make up for one.
            assert [e for e in log if e["type"] == "offline"] == []
            assert [e["type"] for e in log if e.get("client") == "late"] == ["online"]
        finally:
            await context.close()


def token(sub: str, ttl: float) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + ttl}, SECRET, "HS256")


async def test_tokens_expired_renewed_and_refused(
    browser: Browser, spawn: Spawn, redis_server: RedisServer
) -> None:
    """An expired token is renewed through getToken, with no flap; a refused
    one whose getToken gives null closes the client."""
    async with emptied(redis_server) as redis:
        server = serve(redis_server, spawn, "--auth-secret", SECRET, "--auth-leeway", "0")
        await server.wait_healthy()
        await redis.xadd("heartbeat", {"client": "bob", "server": "ext"})
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(f"{server.url}/")
            await start(page, server.url, "mallory", tokens=["not-a-token"])
            await start(page, server.url, "alice", tokens=[token("alice", 2), token("alice", 60)])
            await lists(page, "alice", {"bob"})
            await page.wait_for_function(
                "() => window.presence.alice.reasons.length === 2", timeout=WAIT
            )
            await state_is(page, "alice", "open")
            assert await page.evaluate("() => window.presence.alice.reasons") == [
                "initial",
                "expired",
            ]
            states = [e["to"] for e in await log_of(page, "alice") if e["type"] == "state"]
            assert states == ["connecting", "open", "reconnecting", "open"]
            assert set(await members(page, "alice")) == {"bob"}
            # No flap: alice never went OFFLINE, only bob and alice came.
            statuses = [f[b"status"] for _, f in await redis.xrange("presence")]
            assert statuses == [b"ONLINE", b"ONLINE"]
            await state_is(page, "mallory", "closed")
            assert await page.evaluate("() => window.presence.mallory.reasons") == [
                "initial",
                "unauthorized",
            ]
            closed = [e for e in await log_of(page, "mallory") if e["type"] == "state"][-1]
            assert closed["error"].startswith("UnauthorizedError")
        finally:
            await context.close()


async def blank(request: web.Request) -> web.Response:
    return web.Response(text="", content_type="text/html")


async def test_sse_parsing_and_ids_follow_the_server(
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """Frames as the specification reads them, split anywhere, and a
    duplicated event dropped: a fake server writes them byte by byte, then
    ends the stream. The client reconnects after ``retry:``, not its own
    minimum delay, and a stream that then sends nothing is dropped after
    ``idleTimeout``."""
    frames = (
        b"\xef\xbb\xbfretry: 150\r\n"
        b'id: 5-0\r\nevent: snapshot\r\ndata: {"clients":[{"client":"a","server":"s"}]}\r\n\r\n'
        b": ping\n\n"
        b'id: 6-0\revent: presence\rdata: {"client":"b","status":"ONLINE",\rdata: "server":"s"}\r\r'
        b'id: 6-0\nevent: presence\ndata: {"client":"b","status":"OFFLINE","server":"s"}\n\n'
        b'event: presence\ndata: {"client":"a","status":"OFFLINE","server":"s","at":7}\n\n'
    )
    # Then ids of a scoped stream on a cluster (a tag, the watch list's part
    # with one id per shard, a room's part), compared part by part, as numbers.
    scoped = b"".join(
        b'id: %b\nevent: presence\ndata: {"client":"%b","status":"ONLINE","server":"s"}\n\n' % pair
        for pair in (
            (b"ab12cd34.3-0,2-0.9-0", b"x"),
            (b"ab12cd34.3-0,1-0.9-0", b"y"),  # at or before: dropped
            (b"ab12cd34.3-0,2-0.10-0", b"z"),
            (b"ab12cd34.2-0,2-0.9-5", b"v"),  # before in every part: dropped
            (b"other.1-0", b"w"),  # not comparable: taken
        )
    )
    reset = b'id: ab12cd34.3-0,1-0.9-0\nevent: snapshot\ndata: {"clients":[],"rooms":{}}\n\n'
    seen: list[tuple[str | None, float]] = []
    done = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Last-Event-ID"), time.monotonic()))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if len(seen) == 1:
            for i in range(len(frames)):
                await response.write(frames[i : i + 1])
        elif len(seen) == 2:  # silent, until the client gives up on it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 10)
        elif len(seen) == 3:
            await response.write(reset + scoped)
        return response

    app = web.Application()
    app.router.add_get("/clients/{id}/events", events)
    app.router.add_get("/", blank)
    # The client module, from a presence app beside it on the same origin.
    setup(app, settings, prefix="/p")
    async with emptied(redis_server):
        server = TestServer(app)
        await server.start_server()
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(str(server.make_url("/")))
            base = str(server.make_url("/"))[:-1]
            await page.evaluate(
                HARNESS.replace("${base}/static/", "${base}/p/static/"),
                {
                    "base": base,
                    "name": "c",
                    "options": {"minDelay": 60_000, "idleTimeout": 1000},
                    "tokens": None,
                },
            )
            await page.wait_for_function(
                "() => window.presence.c.p.members().has('w')", timeout=WAIT
            )
            await poll(lambda: truthy(len(seen) >= 4), what="three reconnects")
            ids = [last for last, _ in seen]
            assert ids[:3] == [None, "6-0", "6-0"]
            assert set(ids[3:]) == {"other.1-0"}
            # The silent stream was given up after idleTimeout (1 s), and only then.
            assert 0.9 <= seen[2][1] - seen[1][1] <= 3
            log = await log_of(page, "c")
            changes = [
                (e["type"], e["client"], e.get("at"), e["synthetic"]) for e in log if "client" in e
            ]
            # The second 6-0 is dropped: b stays, until the reset.
            assert changes == [
                ("online", "b", None, False),
                ("offline", "a", 7, False),
                ("offline", "b", None, True),
                ("online", "x", None, False),
                ("online", "z", None, False),
                ("online", "w", None, False),
            ]
            assert set(await members(page, "c")) == {"x", "z", "w"}
        finally:
            done.set()
            await context.close()
            await server.close()
