"""The HTTP interface, served in-process against a real redis-server."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from presence import PRESENCE, Presence, Settings, create_app, setup

from .support import Redis, Serve, StartRedis, at, exists, open_events, poll


async def test_clients_see_each_other_come_and_go(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings))
    alice = await open_events(session, str(server.make_url("/clients/alice/events")))
    first = await alice.next()
    assert (first.event, first.data) == ("snapshot", {"clients": []})
    # Alice is online once her first heartbeat is applied; then bob's snapshot has her.
    await poll(lambda: _online(session, server, "alice"), what="alice ONLINE")
    bob = await open_events(session, str(server.make_url("/clients/bob/events")))
    snapshot = await bob.next()
    assert snapshot.event == "snapshot"
    assert snapshot.data == {"clients": [{"client": "alice", "server": "test-1"}]}
    joined = await alice.next()
    assert joined.event == "presence"
    assert joined.data == {"client": "bob", "status": "ONLINE", "server": "test-1"}
    assert joined.id is not None
    assert joined.id > (first.id or "")

    bob.close()
    left = await alice.next(timeout=5)
    assert left.data == {"client": "bob", "status": "OFFLINE", "server": "test-1", "at": at(left)}
    alice.close()


async def test_snapshot_lists_clients_of_every_server(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    server = await serve(create_app(settings.replace(heartbeat_interval=30)))
    for client in ("x1", "x2"):
        await redis.xadd("heartbeat", {"client": client, "server": "other-node"})

    async def both_online() -> bool:
        async with session.get(server.make_url("/clients")) as response:
            return bool((await response.json())["count"] == 2)

    await poll(both_online, what="two clients online")
    stream = await open_events(session, str(server.make_url("/clients/x1/events")))
    snapshot = await stream.next()
    assert snapshot.data == {"clients": [{"client": "x2", "server": "other-node"}]}
    stream.close()


async def test_snapshot_and_events_are_gapless_under_churn(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    """Connections opened while clients arrive see each exactly once: snapshot + events."""
    server = await serve(create_app(settings.replace(heartbeat_interval=30)))
    everyone = {f"c{n}" for n in range(60)}

    async def arrive() -> None:
        for client in sorted(everyone):
            await redis.xadd("heartbeat", {"client": client, "server": "ext"})

    async def watch(name: str) -> None:
        stream = await open_events(session, str(server.make_url(f"/clients/{name}/events")))
        snapshot = await stream.next()
        seen = [c["client"] for c in snapshot.data["clients"] if c["client"] in everyone]
        while set(seen) != everyone:
            event = await stream.next()
            if event.data["client"] in everyone:
                assert event.data["status"] == "ONLINE"
                seen.append(event.data["client"])
        assert sorted(seen) == sorted(everyone), "a client was delivered twice"
        stream.close()

    arrival = asyncio.create_task(arrive())
    await asyncio.gather(*(watch(f"w{n}") for n in range(5)), arrival)


async def test_client_status(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    server = await serve(create_app(settings.replace(heartbeat_interval=30)))
    async with session.get(server.make_url("/clients/carol")) as response:
        assert response.status == 200
        assert await response.json() == {
            "client": "carol",
            "status": "OFFLINE",
            "server": None,
            "last_seen": None,
            "last_seen_iso": None,
        }
    await redis.xadd("heartbeat", {"client": "carol", "server": "n1"})

    async def online() -> bool:
        async with session.get(server.make_url("/clients/carol")) as response:
            body = await response.json()
            return bool(body == {"client": "carol", "status": "ONLINE", "server": "n1"})

    await poll(online, what="carol ONLINE")
    async with session.get(server.make_url("/clients")) as response:
        assert await response.json() == {
            "clients": [{"client": "carol", "server": "n1"}],
            "count": 1,
        }


@pytest.mark.parametrize(
    "path",
    [
        "/clients/has%20space/events",
        "/clients/" + "x" * 129 + "/events",
        "/clients/%C3%A9/events",
        "/clients//events",
        "/clients/a%2Fb",
        "/clients/semi;colon",
    ],
)
async def test_invalid_client_ids_get_400_and_touch_nothing(
    serve: Serve,
    settings: Settings,
    session: aiohttp.ClientSession,
    redis: Redis,
    path: str,
) -> None:
    server = await serve(create_app(settings))
    keys_before = set(await redis.keys("*"))
    async with session.get(server.make_url(path)) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        assert "client id" in (await response.json())["error"]
    assert await redis.xlen("heartbeat") == 0
    assert set(await redis.keys("*")) == keys_before


async def test_unknown_routes_and_wrong_methods_get_json(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings))
    async with session.get(server.make_url("/nope")) as response:
        assert response.status == 404
        assert await response.json() == {"error": "not found"}
    async with session.post(server.make_url("/clients/alice/events")) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        assert await response.json() == {"error": "method not allowed"}


async def test_the_demo_page_and_its_files_are_served_and_nothing_else(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings))
    async with session.get(server.make_url("/")) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert 'src="static/demo.js"' in await response.text()
    async with session.get(server.make_url("/static/demo.js")) as response:
        assert response.status == 200
        assert "PresenceClient" in await response.text()
    async with session.get(server.make_url("/static/presence-client.js")) as response:
        assert response.status == 200
        assert response.content_type == "text/javascript"
        assert "export class PresenceClient" in await response.text()
    for path in ("/static/../http.py", "/static/%2e%2e/http.py", "/static/nope.js"):
        async with session.get(server.make_url(path)) as response:
            assert response.status in (403, 404), path
            assert "error" in await response.json()


async def test_healthz_reports_redis_loss(
    start_redis: StartRedis,
    serve: Serve,
    settings: Settings,
    session: aiohttp.ClientSession,
) -> None:
    own = start_redis()
    server = await serve(create_app(settings.replace(redis_url=own.url)))
    async with session.get(server.make_url("/healthz")) as response:
        assert response.status == 200
        body = await response.json()
        assert (body["status"], body["server"]) == ("ok", "test-1")
    own.stop()
    async with session.get(server.make_url("/healthz")) as response:
        assert response.status == 503
        body = await response.json()
        assert body["status"] == "unavailable"
        assert any(p.startswith("redis") for p in body["problems"])
    async with session.get(server.make_url("/clients")) as response:
        assert response.status == 503
        assert "Redis" in (await response.json())["error"]
    async with session.get(server.make_url("/clients/zed/events")) as response:
        assert response.status == 503
        assert response.content_type == "application/json"
        assert "Redis" in (await response.json())["error"]
    assert server.app is not None
    assert ("zed", "") not in server.app[PRESENCE]._service.held


async def test_shutdown_closes_streams_promptly(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    # A 30 s interval: alice's key outlives the shutdown, which must not end her.
    server = await serve(create_app(settings.replace(keepalive_interval=60, heartbeat_interval=30)))
    stream = await open_events(session, str(server.make_url("/clients/alice/events")))
    await stream.next()
    await poll(lambda: exists(redis, "online.clients.alice"), what="alice online")
    await server.close()  # would wait for the stream without on_shutdown
    with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
        await stream.next(timeout=5)
    assert [f[b"status"] for _, f in await redis.xrange("presence")] == [b"ONLINE"]


async def test_keepalive_comments_are_sent(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    server = await serve(create_app(settings.replace(keepalive_interval=0.2)))
    stream = await open_events(session, str(server.make_url("/clients/alice/events")))
    await stream.next()

    async def pinged() -> bool:
        raw = await stream.response.content.readline()
        return raw.startswith(b": ping")

    await poll(pinged, timeout=3, interval=0, what="keep-alive comment")
    stream.close()


async def test_mounted_into_another_app_with_track(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession
) -> None:
    host = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.json_response({"app": "host"})

    host.router.add_get("/", index)
    presence = setup(host, settings, prefix="/presence")
    server = await serve(host)
    async with session.get(server.make_url("/")) as response:
        assert await response.json() == {"app": "host"}
    stream = await open_events(session, str(server.make_url("/presence/clients/ann/events")))
    await stream.next()
    async with presence.track("ws-user"):
        joined = await stream.next()
        assert joined.data == {"client": "ws-user", "status": "ONLINE", "server": "test-1"}
        async with session.get(server.make_url("/presence/clients/ws-user")) as response:
            assert (await response.json())["status"] == "ONLINE"
    async with session.get(server.make_url("/presence/nope")) as response:
        assert response.status == 404
        assert await response.json() == {"error": "not found"}
    stream.close()


async def test_presence_key_gives_the_service(settings: Settings) -> None:
    app = create_app(settings)
    assert isinstance(app[PRESENCE], Presence)


async def _online(session: aiohttp.ClientSession, server: TestServer, client: str) -> bool:
    async with session.get(server.make_url(f"/clients/{client}")) as response:
        return bool((await response.json())["status"] == "ONLINE")


async def test_metrics_in_prometheus_text_format(
    serve: Serve, settings: Settings, session: aiohttp.ClientSession, redis: Redis
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server = await serve(create_app(settings.replace(heartbeat_interval=30)))
    stream = await open_events(session, str(server.make_url("/clients/alice/events")))
    await stream.next()
    await redis.xadd("heartbeat", {"server": "no client field"})
    await poll(lambda: _online(session, server, "alice"), what="alice ONLINE")

    async def scrape() -> dict[str, float]:
        async with session.get(server.make_url("/metrics")) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
        return {
            s.name + "".join(f"{{{v}}}" for v in s.labels.values()): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def counted() -> dict[str, float]:
        found = await scrape()
        return found if found["presence_heartbeats_malformed_total"] == 1 else {}

    found = await poll(counted, what="malformed entry counted")
    assert found["presence_sse_connections"] == 1
    assert found["presence_heartbeats_published_total"] == 1
    assert found["presence_heartbeats_applied_total"] == 1
    assert found["presence_transitions_published_total{ONLINE}"] == 1
    assert found["presence_transitions_published_total{OFFLINE}"] == 0
    assert found["presence_queue_overflows_total"] == 0
    assert found["presence_redis_reconnects_total"] == 0
    assert found["presence_sweeper_lag_seconds"] == 0
    stream.close()


async def test_a_redis_restart_without_data_sends_a_fresh_snapshot(
    start_redis: StartRedis,
    serve: Serve,
    settings: Settings,
    session: aiohttp.ClientSession,
) -> None:
    own = start_redis()
    app = create_app(settings.replace(redis_url=own.url, heartbeat_interval=0.4))
    server = await serve(app)
    alice = await open_events(session, str(server.make_url("/clients/alice/events")))
    await alice.next()
    external = aioredis.from_url(own.url)
    await external.xadd("heartbeat", {"client": "bob", "server": "ext"})
    await alice.until(lambda e: e.data.get("client") == "bob")
    await external.aclose()
    own.stop()  # bob's OFFLINE can never be published: the state is gone
    own.start()
    reset = await alice.until(lambda e: e.event == "snapshot", timeout=20)
    assert reset.data["reset"] is True
    assert "bob" not in {c["client"] for c in reset.data["clients"]}
    assert app[PRESENCE]._service.reader.resyncs == 1
    alice.close()
