"""The clients this process holds online, and when to announce that one left.

Plain synchronous state, touched only from the event loop. A client is held
while any connection (or ``track()`` block) of it is open here. When the last
one closes, the client stays in its leave grace: still heartbeated, so that a
reload within the grace changes nothing in Redis, and announced gone from
this server when the grace runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable


class HeldClients:
    def __init__(self, leave_grace: float = 0.0) -> None:
        self._holds: dict[str, int] = {}
        self._fresh: set[str] = set()
        self._leave_grace = leave_grace
        #: Clients whose last connection closed -> when (monotonic) to announce it.
        self._leaving: dict[str, float] = {}
        #: No leave is announced before this (monotonic): see ``postpone_leaves``.
        self._leaves_from = 0.0
        #: Set when a client needs a heartbeat or a leave before the next tick.
        self.wake = asyncio.Event()

    def __contains__(self, client: str) -> bool:
        return client in self._holds

    def heartbeated(self) -> list[str]:
        """Every client this server heartbeats: held, or in its leave grace.

        Past its grace, a client whose leave could not be sent yet is no
        longer heartbeated: its TTL decides, however long Redis stays away.
        """
        now = time.monotonic()
        return [*self._holds, *(c for c, at in self._leaving.items() if at > now)]

    def hold(self, client: str) -> None:
        """Count one more connection of ``client``; a new client is heartbeated at once."""
        count = self._holds.get(client, 0)
        self._holds[client] = count + 1
        if count == 0 and self._leaving.pop(client, None) is None:
            # Back within its leave grace (a reload), a client was heartbeated
            # all along: it is simply still held.
            self._fresh.add(client)
            self.wake.set()

    def release(self, client: str, *, leave: bool = True) -> None:
        """Count one connection less; after the last, announce the leave after the grace.

        ``leave=False`` (shutdown): no leave; the TTL decides, as the client may
        be reconnecting to another server.
        """
        count = self._holds.get(client, 0)
        if count > 1:
            self._holds[client] = count - 1
            return
        # A fresh client keeps its first heartbeat even if it left already
        # (unless its leave reaches Redis before that heartbeat is applied).
        self._holds.pop(client, None)
        if leave and self._leave_grace > 0:
            self._leaving[client] = time.monotonic() + self._leave_grace
            self.wake.set()

    def take_fresh(self) -> list[str]:
        """Clients held since the last call, to heartbeat before the next tick."""
        fresh = list(self._fresh)
        self._fresh.clear()
        self.wake.clear()
        return fresh

    def take_leaves(self) -> list[str]:
        """Clients whose leave grace ran out: announce that they left this server."""
        now = time.monotonic()
        if now < self._leaves_from:
            return []
        due = [c for c, at in self._leaving.items() if at <= now]
        for client in due:
            del self._leaving[client]
        return due

    def next_leave(self) -> float | None:
        """When (monotonic) the next leave is due, if any."""
        at = min(self._leaving.values(), default=None)
        return None if at is None else max(at, self._leaves_from)

    def retry_leaves(self, clients: Iterable[str]) -> None:
        """Leaves that could not be sent: due again, unless the client is back."""
        for client in clients:
            if client not in self._holds:
                self._leaving.setdefault(client, time.monotonic())
                self.wake.set()

    def postpone_leaves(self, seconds: float) -> None:
        """Announce no leave for ``seconds``: Redis just came back.

        While Redis was unreachable nobody could heartbeat, so every other
        server's hold of a client has run out in Redis; a leave sent now would
        find no other holder and publish an OFFLINE for a client still
        connected elsewhere. Within a heartbeat interval of Redis coming back,
        those servers have heartbeated their clients again.
        """
        self._leaves_from = time.monotonic() + seconds
