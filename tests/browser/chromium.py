"""The ``browser`` fixture: Debian's headless Chromium, launched once for the
session. Both browser test modules load this module as a plugin
(``pytest_plugins``), which defines the fixture once for both; imported by
each, it would be two fixtures, and two browsers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from .harness import CHROMIUM, FLAGS


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        await launched.close()
