"""Whose connection is it: the peer's address, or, from a trusted proxy, the
client's address it forwards in ``X-Forwarded-For``; and the streams each
address holds.

``X-Forwarded-For`` is believed only from the configured proxies: anyone
else could write any address into it. The header is read from the right,
past every trusted proxy, so that a client cannot hide behind a value it
wrote itself at the left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import ip_address

from aiohttp import web

from ..settings import IPNetwork


def is_trusted(address: str, networks: Sequence[IPNetwork]) -> bool:
    if not networks or not address:
        return False
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def client_address(request: web.BaseRequest, networks: Sequence[IPNetwork]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy."""
    address = request.remote or ""
    if not is_trusted(address, networks):
        return address
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        address = hop
        if not is_trusted(hop, networks):
            break
    return address


class AddressCounts:
    """Open connections (or streams) per client address."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __getitem__(self, address: str) -> int:
        return self._counts.get(address, 0)

    def add(self, address: str) -> None:
        self._counts[address] = self._counts.get(address, 0) + 1

    def remove(self, address: str) -> None:
        if (left := self._counts.pop(address) - 1) > 0:
            self._counts[address] = left

    @contextmanager
    def held(self, address: str) -> Iterator[Callable[[], None]]:
        """Count one of ``address`` while the block runs; yields a function
        that counts it out early (its connection closed), once."""
        self.add(address)
        counted = True

        def release() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.remove(address)

        try:
            yield release
        finally:
            release()
