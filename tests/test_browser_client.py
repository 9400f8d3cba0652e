"""presence-client.js in a real headless Chromium (Debian's; no test
downloads a browser), shared with ``test_demo_page``
(``tests/browser/harness.py``).

The tests record every event a ``PresenceClient`` emits (``HARNESS``) and
check that they add up: from the first ``sync``'s members, each ``online``,
``update`` and ``offline`` applied in turn gives every later ``sync``'s
members and ``members()`` now, which equals the server's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser

from presence import Settings, setup

from .browser.harness import (
    MARKS,
    WAIT,
    Spawn,
    added_up,
    emptied,
    lists,
    log_of,
    members,
    online_ids,
    serve,
    start,
    state_is,
)
from .browser.link import Link
from .support import RedisServer, poll, truthy

pytest_plugins = ["tests.browser.chromium"]
pytestmark = MARKS

SECRET = "browser-test-secret-" + "0123456789abcdef" * 3


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
            await page.goto(f"{base}/healthz")
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


async def test_a_trimmed_stream_gives_a_reset_with_exactly_the_differences(
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """Cut off while others come and go and the ``presence`` stream is
    trimmed: the resume cannot be exact, and the reset snapshot's differences
    come as synthetic events. Back online, the client reconnects at once."""
    app = web.Application()
    setup(app, settings.replace(heartbeat_interval=10, leave_grace=30))
    async with emptied(redis_server) as redis, aiohttp.ClientSession() as session:
        server = TestServer(app)
        await server.start_server()
        assert server.port is not None
        for client in ("stays", "leaves"):
            await redis.xadd("heartbeat", {"client": client, "server": "ext"})

        async def online(expected: set[str]) -> bool:
            return await online_ids(session, str(server.make_url("/presence"))) == expected

        # Online before alice connects: her snapshot lists them, no event does.
        await poll(lambda: online({"stays", "leaves"}), what="the first two online")
        context = await browser.new_context()
        try:
            async with Link(server.port) as link:
                base = f"{link.url}/presence"
                page = await context.new_page()
                await page.goto(f"{base}/healthz")
                # A backoff far longer than the test: only `online` ends it.
                await start(page, base, "alice", minDelay=60_000, maxDelay=60_000)
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
            await server.close()


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
            await page.goto(f"{server.url}/healthz")
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
            assert await online_ids(session, server.url) == {"alice", "bob", "ext", "late"}
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
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """An expired token is renewed through getToken, with no flap; a refused
    one whose getToken gives null closes the client."""
    app = web.Application()
    setup(app, settings.replace(heartbeat_interval=5, auth_secret=SECRET, auth_leeway=0))
    async with emptied(redis_server) as redis:
        server = TestServer(app)
        await server.start_server()
        base = str(server.make_url("/presence"))
        await redis.xadd("heartbeat", {"client": "bob", "server": "ext"})
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(f"{base}/healthz")
            await start(page, base, "mallory", tokens=["not-a-token"])
            await start(page, base, "alice", tokens=[token("alice", 2), token("alice", 60)])
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
            await server.close()


async def blank(request: web.Request) -> web.Response:
    return web.Response(text="", content_type="text/html")


async def test_sse_parsing_and_ids_follow_the_server(
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """Frames as the specification reads them, split anywhere, and a
    duplicated event dropped: a fake server writes them byte by byte, then
    ends the stream. The client reconnects with the last id, and a stream
    that then sends nothing is dropped after ``idleTimeout``."""
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
            module = f"{base}/p/static/presence-client.js"
            await start(page, base, "c", module=module, idleTimeout=500)
            await page.wait_for_function(
                "() => window.presence.c.p.members().has('w')", timeout=WAIT
            )
            await poll(lambda: truthy(len(seen) >= 4), what="three reconnects")
            ids = [last for last, _ in seen]
            assert ids[:3] == [None, "6-0", "6-0"]
            assert set(ids[3:]) == {"other.1-0"}
            # The silent stream was given up after idleTimeout (0.5 s), and only then.
            assert 0.45 <= seen[2][1] - seen[1][1] <= 3
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


# Each call's outcome: what setData resolved to, or the error it rejected with.
SET_DATA = """async ([name, calls]) => {
  const { p } = window.presence[name];
  const outcomes = [];
  for (const [room, data] of calls) {
    try {
      outcomes.push(await p.setData(room, data));
    } catch (error) {
      outcomes.push(`${error.name} ${error.status}`);
    }
  }
  return outcomes;
}"""


async def test_set_data_refused_or_for_another_room_is_not_joined_with(
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """Data the server refused (not an object, over 1 KB), and data set in a
    room of the client's other stream, never become what a reconnect joins
    with: the reconnect keeps the join's ``?data=``, and is accepted."""
    app = web.Application()
    presence = setup(app, settings.replace(heartbeat_interval=30))
    async with emptied(redis_server) as redis:
        server = TestServer(app)
        await server.start_server()
        base = str(server.make_url("/presence"))
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(f"{base}/healthz")
            await start(page, base, "alice", rooms=["lobby"], data={"status": "here"})
            # The same client in another room, from another stream (another tab).
            await start(page, base, "alice-hall", client="alice", rooms=["hall"])
            await state_is(page, "alice", "open")
            await state_is(page, "alice-hall", "open")
            rounds = [
                ([("lobby", ["not", "an", "object"]), ("lobby", {"big": "x" * 2000})], [
                    "PresenceError 400",
                    "PresenceError 400",
                ]),
                ([("hall", {"status": "busy"}), ("nowhere", {"status": "lost"})], [
                    True,
                    "PresenceError 404",
                ]),
            ]  # fmt: skip
            for opened, (calls, outcomes) in enumerate(rounds, start=2):
                assert await page.evaluate(SET_DATA, ["alice", calls]) == outcomes
                async with page.expect_request(
                    lambda r: "/events?" in r.url and "room=lobby" in r.url, timeout=WAIT
                ) as reconnect:
                    presence._service.connections.close_all("closed")
                request = await reconnect.value
                assert "data=%7B%22status%22%3A%22here%22%7D" in request.url
                # Open again, not closed for good by a 400.
                await page.wait_for_function(
                    """(n) => {
                      const { p, log } = window.presence.alice;
                      const opened = log.filter((e) => e.to === "open").length;
                      return p.state === "closed" || opened === n;
                    }""",
                    arg=opened,
                    timeout=WAIT,
                )
                assert await page.evaluate("() => window.presence.alice.p.state") == "open"
            assert await redis.hget("room.{lobby}.data", "alice") == b'{"status":"here"}'
            assert await redis.hget("room.{hall}.data", "alice") == b'{"status":"busy"}'
        finally:
            await context.close()
            await server.close()


# reconnectDelay() for each case of [its arguments, random]; then what the
# constructor says of each delay option.
DELAYS = """async ([base, cases]) => {
  const { reconnectDelay } = await import(`${base}/static/backoff.js`);
  const { PresenceClient } = await import(`${base}/static/presence-client.js`);
  const delays = cases.map(([args, random]) => reconnectDelay({ ...args, random }));
  const refused = [];
  for (const options of [
    { minDelay: 0 }, { maxDelay: -1 }, { minDelay: NaN }, { minDelay: "100" },
    { idleTimeout: -1 }, { maxDelay: 2 ** 31 }, { idleTimeout: 0 }, { minDelay: undefined },
  ]) {
    try {
      new PresenceClient({ url: base, client: "a", ...options });
      refused.push(null);
    } catch (error) {
      refused.push(`${error.name}: ${error.message}`);
    }
  }
  return { delays, refused };
}"""
# Records the delay of every timer the page sets: with idleTimeout 0, the
# client's only timers are its reconnect delays.
TIMERS = """() => {
  const setTimeout = window.setTimeout;
  window.delays = [];
  window.setTimeout = (f, ms, ...rest) => {
    window.delays.push(ms);
    return setTimeout(f, ms, ...rest);
  };
}"""


async def test_reconnect_delays_stay_within_min_and_max_delay(
    browser: Browser, redis_server: RedisServer, settings: Settings
) -> None:
    """The delay is uniform in [c/2, c], c = min(maxDelay, base * 2^n) for the
    n-th reconnect in a row, and never below ``minDelay``: not even after
    ``retry: 0``, which would otherwise reconnect in a hot loop. A longer
    ``retry:`` becomes the base. Checked on ``reconnectDelay`` at both ends
    of its range, and on the delays a client waits for, against a fake
    server."""
    defaults = {"minDelay": 500, "maxDelay": 30_000}
    cases: list[tuple[dict[str, Any], float, float]] = [
        ({**defaults, "attempts": 0}, 500, 1000),
        ({**defaults, "attempts": 1}, 1000, 2000),
        ({**defaults, "attempts": 5}, 15_000, 30_000),
        ({**defaults, "attempts": 0, "retry": 0}, 500, 1000),
        ({**defaults, "attempts": 0, "retry": 2000}, 2000, 4000),
        ({**defaults, "attempts": 0, "retry": 10**9}, 15_000, 30_000),
        ({"minDelay": 60_000, "maxDelay": 1000, "attempts": 3}, 60_000, 60_000),
    ]
    seen: list[str | None] = []
    done = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        if len(seen) == 3:
            return web.json_response({"error": "busy"}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        retry = {1: b"0", 2: b"40"}.get(len(seen))
        if retry is not None:
            snapshot = b'event: snapshot\ndata: {"clients":[]}\n\n'
            await response.write(b"retry: %b\nid: %d-0\n%b" % (retry, len(seen), snapshot))
        else:  # the last: open until the test ends
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 10)
        return response

    app = web.Application()
    app.router.add_get("/f/clients/{id}/events", events)
    app.router.add_get("/", blank)
    setup(app, settings)
    async with emptied(redis_server):
        server = TestServer(app)
        await server.start_server()
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(str(server.make_url("/")))
            root = str(server.make_url("/"))[:-1]
            ends = [[args, random] for args, _, _ in cases for random in (0, 1)]
            found = await page.evaluate(DELAYS, [f"{root}/presence", ends])
            assert found["delays"] == [end for _, *both in cases for end in both]
            positive = "a number of ms, over 0 to 2147483647"
            assert found["refused"] == [
                f"TypeError: minDelay must be {positive}",
                f"TypeError: maxDelay must be {positive}",
                f"TypeError: minDelay must be {positive}",
                f"TypeError: minDelay must be {positive}",
                "TypeError: idleTimeout must be a number of ms, 0 to 2147483647",
                f"TypeError: maxDelay must be {positive}",
                None,
                None,
            ]
            await page.evaluate(TIMERS)
            options: dict[str, Any] = {"minDelay": 20, "maxDelay": 160, "idleTimeout": 0}
            module = f"{root}/presence/static/presence-client.js"
            await start(page, f"{root}/f", "c", module=module, **options)
            await poll(lambda: truthy(len(seen) == 4), what="three reconnects")
            assert seen == [None, "1-0", "2-0", "2-0"]
            delays: list[float] = await page.evaluate("() => window.delays")
            # After retry: 0, from minDelay; after retry: 40, from it; after the
            # 503, doubled and capped by maxDelay.
            assert len(delays) == 3, delays
            assert 20 <= delays[0] <= 40
            assert 40 <= delays[1] <= 80
            assert 80 <= delays[2] <= 160
        finally:
            done.set()
            await context.close()
            await server.close()
