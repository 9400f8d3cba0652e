"""The browser tests' harness: how Chromium is launched, pages, a presence
server to open them on, and ``HARNESS``, which records every event a
``PresenceClient`` emits, with the checks that those events add up. The
``browser`` fixture is in ``tests/browser/chromium.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page

from ..support import Redis, RedisServer, ServerProcess

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
WAIT = 10_000  # ms, for every wait in the page

#: A browser test module's marks (``pytestmark``): its tests run in the
#: session's event loop, which the session's Chromium is bound to.
MARKS = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"
    ),
    pytest.mark.asyncio(loop_scope="session"),
]


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


async def online_ids(session: aiohttp.ClientSession, base: str) -> set[str]:
    """Who the server at ``base`` says is online."""
    async with session.get(f"{base}/clients") as response:
        return {c["client"] for c in (await response.json())["clients"]}


# Starts a PresenceClient in the page as window.presence[name], recording what it emits.
# `tokens`, if given, are what getToken returns in turn (then null); `reasons` what it was asked.
# `options.client` may give the client another id than `name`.
HARNESS = """async ({ module, base, name, options, tokens }) => {
  const { PresenceClient } = await import(module);
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


# The tests' pages are of the server's origin, for the client's requests: a
# light one, such as /healthz, rather than the demo page with its scripts.
async def start(
    page: Page,
    base: str,
    name: str,
    tokens: list[str] | None = None,
    module: str | None = None,
    **options: Any,
) -> None:
    """A client of the server at ``base``, from ``module`` (by default the
    server's own ``/static/presence-client.js``)."""
    module = module or f"{base}/static/presence-client.js"
    arg = {"module": module, "base": base, "name": name, "options": options, "tokens": tokens}
    await page.evaluate(HARNESS, arg)


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
