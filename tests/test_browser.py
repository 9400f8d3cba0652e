"""The demo page in a real headless Chromium (Debian's; no test downloads a browser)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright

from presence import Settings, setup

from .support import Redis, RedisServer, ServerProcess

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

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"
)


async def test_two_pages_see_each_other_come_and_go(
    spawn: Spawn, redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    server = spawn(
        "--redis-url", redis_server.url,
        "--server-id", "demo-1",
        "--heartbeat-interval", "5",
        "--leave-grace", "0.5",
    )  # fmt: skip
    await server.wait_healthy()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            alice = await browser.new_page(viewport={"width": 720, "height": 640})
            bob = await browser.new_page()
            await alice.goto(f"{server.url}/")
            await alice.fill("#name", "alice")
            await alice.click("#connect")
            await bob.goto(f"{server.url}/?name=bob")
            await alice.wait_for_selector('#online li[data-client="bob"]', timeout=10_000)
            await bob.wait_for_selector('#online li[data-client="alice"]', timeout=10_000)
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
        finally:
            await browser.close()


BROWSER_CLIENT = Path(__file__).resolve().parent.parent / "examples" / "browser_client.html"


async def test_the_minimal_browser_client_example_follows_presence(
    redis: Redis, settings: Settings
) -> None:
    """examples/browser_client.html, served beside presence mounted with ``setup``."""
    app = web.Application()
    setup(app, settings.replace(heartbeat_interval=30))

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(BROWSER_CLIENT)

    app.router.add_get("/", page)
    server = TestServer(app)
    await server.start_server()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                alice = await browser.new_page()
                await alice.goto(str(server.make_url("/?name=alice")))
                await redis.xadd("heartbeat", {"client": "bob", "server": "ext"})
                # From its snapshot or from an event, depending on timing.
                await alice.wait_for_selector("#online li:text('bob')", timeout=10_000)
                await redis.delete("online.clients.bob")  # OFFLINE: surely an event
                await alice.wait_for_selector(
                    "#online li:text('bob')", state="detached", timeout=10_000
                )
                assert "bob OFFLINE" in (await alice.text_content("#log") or "")
            finally:
                await browser.close()
    finally:
        await server.close()


async def test_two_pages_in_a_room_see_each_others_status_under_a_prefix(
    redis: Redis, settings: Settings
) -> None:
    """The demo page with ``?room=``, mounted with ``setup`` under ``/presence``."""
    app = web.Application()
    presence = setup(app, settings.replace(heartbeat_interval=30, leave_grace=0.3))
    server = TestServer(app)
    await server.start_server()
    page_url = str(server.make_url("/presence/"))
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                alice = await browser.new_page()
                bob = await browser.new_page()
                await alice.goto(f"{page_url}?room=lobby")
                # Set before connecting: it goes with the join (?data=).
                await alice.fill("#status", "typing")
                await alice.click("#set-status")
                await alice.fill("#name", "alice")
                await alice.click("#connect")
                await bob.goto(f"{page_url}?name=bob&room=lobby")
                await bob.wait_for_selector(
                    '#online li[data-client="alice"]:has-text("alice — typing")', timeout=10_000
                )
                await alice.wait_for_selector('#online li[data-client="bob"]', timeout=10_000)
                assert await alice.text_content("#state") == "online as alice in lobby"
                assert await alice.text_content("#list-title") == "In lobby"
                # Set while connected: PUT .../data, an UPDATE for the others.
                await alice.fill("#status", "away")
                await alice.click("#set-status")
                await bob.wait_for_selector(
                    '#online li[data-client="alice"]:has-text("alice — away")', timeout=10_000
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
                    lambda r: "/events?" in r.url, timeout=10_000
                ) as reconnect:
                    presence._service.connections.close_all("closed")
                query = parse_qs(urlsplit((await reconnect.value).url).query)
                assert query["data"] == ['{"status":"away"}']
                assert query["lastEventId"]
                await alice.wait_for_selector("#state.open", timeout=10_000)
            finally:
                await browser.close()
    finally:
        await server.close()
