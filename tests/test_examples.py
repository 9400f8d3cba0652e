"""examples/embed_app.py, run as a process on its default in-process Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from .support import free_port, open_events, poll

EMBED_APP = Path(__file__).resolve().parent.parent / "examples" / "embed_app.py"


@dataclass
class App:
    process: subprocess.Popen[str]
    url: str

    def output(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.read() if self.process.poll() is not None else ""


@pytest.fixture
def embed_app() -> Iterator[App]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EMBED_APP), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield App(process, f"http://127.0.0.1:{port}")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_websocket_user_is_online_through_the_mounted_presence(
    embed_app: App, session: aiohttp.ClientSession
) -> None:
    async def healthy() -> bool:
        if embed_app.process.poll() is not None:
            raise AssertionError(f"embed_app exited early:\n{embed_app.output()}")
        try:
            async with session.get(f"{embed_app.url}/presence/healthz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await poll(healthy, timeout=15, what="embed_app healthy")

    async with session.ws_connect(f"{embed_app.url}/ws/carol") as ws:
        assert await ws.receive_json(timeout=5) == {"user": "carol", "status": "ONLINE"}

        async def carol_online() -> bool:
            async with session.get(f"{embed_app.url}/presence/clients/carol") as response:
                body = await response.json()
                return response.status == 200 and body["status"] == "ONLINE"

        await poll(carol_online, what="carol ONLINE")
        async with session.get(f"{embed_app.url}/online") as response:
            assert await response.json() == {"online": ["carol"]}

        dave = await open_events(session, f"{embed_app.url}/presence/clients/dave/events")
        try:
            snapshot = await dave.next()
            assert snapshot.event == "snapshot"
            assert [c["client"] for c in snapshot.data["clients"]] == ["carol"]
        finally:
            dave.close()

    embed_app.process.send_signal(signal.SIGTERM)
    assert embed_app.process.wait(10) == 0
    assert "carol is ONLINE" in embed_app.output()
