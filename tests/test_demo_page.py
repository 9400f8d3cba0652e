"""The demo page and the minimal browser client example in a real headless
Chromium (Debian's; no test downloads a browser), shared with
``test_browser_client`` (``tests/browser/harness.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser

from presence import Settings, setup

from .browser.harness import MARKS, WAIT, Spawn, emptied, serve, users
from .support import RedisServer

pytest_plugins = ["tests.browser.chromium"]
pytestmark = MARKS

BROWSER_CLIENT = Path(__file__).resolve().parent.parent / "examples" / "browser_client.html"
CLIENT_MODULES = ("presence-client.js", "sse-parser.js", "event-ids.js", "members.js", "backoff.js")


async def test_two_pages_see_each_other_come_and_go(
    browser: Browser, spawn: Spawn, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with emptied(redis_server):
        server = serve(redis_server, spawn, "--leave-grace", "0.2")
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
    which serves the client's modules under its prefix, and its types as text."""
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
                types = dict.fromkeys(CLIENT_MODULES, "text/javascript")
                types["presence-client.d.ts"] = "text/plain"
                for name, content_type in types.items():
                    url = server.make_url(f"/presence/static/{name}")
                    async with session.get(url) as response:
                        assert response.status == 200, name
                        assert response.content_type == content_type, name
                        assert response.charset == "utf-8", name
            alice = await context.new_page()
            await alice.goto(str(server.make_url("/?name=alice")))
            await redis.xadd("heartbeat", {"client": "bob", "server": "ext"})
            # From its snapshot or from an event, depending on timing.
            await alice.wait_for_selector("#online li:text('bob')", timeout=WAIT)
            await redis.delete("online.clients.bob")  # OFFLINE: surely an event
            await alice.wait_for_selector("#online li:text('bob')", state="detached", timeout=WAIT)
            assert "bob OFFLINE" in (await alice.text_content("#log") or "")
            # Types as text: never run as a module (which needs a JavaScript type).
            imported = await alice.evaluate(
                "import('./presence/static/presence-client.d.ts').then(() => 'run', (e) => e.name)"
            )
            assert imported == "TypeError"
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
