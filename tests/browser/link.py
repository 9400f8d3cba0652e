"""A TCP proxy whose connections can be cut, as a network drop would cut them."""

from __future__ import annotations

import asyncio
import contextlib


class Link:
    """A TCP proxy to a server: ``cut()`` resets every connection and refuses
    new ones until ``restore()``."""

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
