"""The memberships this process holds, and when to announce that one ended.

A membership is a client, globally (room ``""``) or in one room. Plain
synchronous state, touched only from the event loop. A membership is held
while any connection (or ``track()`` block) of it is open here. When the last
one closes, it stays in its leave grace: still heartbeated, so that a reload
within the grace changes nothing in Redis, and announced ended on this server
when the grace runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

#: ``(client, room)``; room ``""`` is the client's global presence.
Member = tuple[str, str]


class HeldClients:
    def __init__(self, leave_grace: float = 0.0) -> None:
        self._holds: dict[Member, int] = {}
        #: In the order they were held (a dict as an ordered set), as ``heartbeated``.
        self._fresh: dict[Member, None] = {}
        #: Data to send with a membership's next heartbeat.
        self._data: dict[Member, str] = {}
        self._leave_grace = leave_grace
        #: Memberships whose last connection closed -> when (monotonic) to announce it.
        self._leaving: dict[Member, float] = {}
        #: No leave is announced before this (monotonic): see ``postpone_leaves``.
        self._leaves_from = 0.0
        #: Set when a membership needs a heartbeat or a leave before the next tick.
        self.wake = asyncio.Event()

    def __contains__(self, member: Member) -> bool:
        return member in self._holds

    @property
    def rooms(self) -> int:
        """Room memberships held here."""
        return sum(1 for _, room in self._holds if room)

    def beats(self, member: Member) -> bool:
        """Whether ``member`` is among ``heartbeated()``."""
        return member in self._holds or self._leaving.get(member, 0.0) > time.monotonic()

    def heartbeated(self) -> list[Member]:
        """Every membership this server heartbeats: held, or in its leave grace;
        in the order they were held, so a client's memberships come side by side.

        Past its grace, a membership whose leave could not be sent yet is no
        longer heartbeated: its TTL decides, however long Redis stays away.
        """
        now = time.monotonic()
        return [*self._holds, *(m for m, at in self._leaving.items() if at > now)]

    def hold(self, client: str, room: str = "", data: str | None = None) -> None:
        """Count one more connection of the membership; a new one is heartbeated
        at once. ``data`` goes with its next heartbeat, as initial data: Redis
        takes it only for a member that has none, so a reconnect (which sends
        its first URL's data again) never undoes data set since."""
        member = (client, room)
        count = self._holds.get(member, 0)
        self._holds[member] = count + 1
        if data is not None:
            self._data[member] = data
        if (count == 0 and self._leaving.pop(member, None) is None) or data is not None:
            # Back within its leave grace (a reload), a membership was heartbeated
            # all along: it is simply still held.
            self._fresh[member] = None
            self.wake.set()

    def release(self, client: str, room: str = "", *, leave: bool = True) -> None:
        """Count one connection less; after the last, announce the leave after the grace.

        ``leave=False`` (shutdown): no leave; the TTL decides, as the client may
        be reconnecting to another server.
        """
        member = (client, room)
        count = self._holds.get(member, 0)
        if count > 1:
            self._holds[member] = count - 1
            return
        # A fresh membership keeps its first heartbeat even if it ended already
        # (unless its leave reaches Redis before that heartbeat is applied).
        self._holds.pop(member, None)
        if leave and self._leave_grace > 0:
            self._leaving[member] = time.monotonic() + self._leave_grace
            self.wake.set()

    def take_fresh(self) -> list[Member]:
        """Memberships held since the last call, to heartbeat before the next tick."""
        fresh = list(self._fresh)
        self._fresh.clear()
        self.wake.clear()
        return fresh

    def take_data(self, member: Member) -> str:
        """The data to send with this heartbeat of ``member``, once; ``""`` for none."""
        return self._data.pop(member, "") if self._data else ""

    def keep_data(self, beats: Iterable[tuple[str, str, str]]) -> None:
        """Data whose heartbeat could not be sent: it goes with the next one,
        unless newer data came meanwhile."""
        for client, room, data in beats:
            if (client, room) in self._holds:
                self._data.setdefault((client, room), data)
                self._fresh[(client, room)] = None

    def take_leaves(self) -> list[Member]:
        """Memberships whose leave grace ran out: announce that they ended here."""
        now = time.monotonic()
        if now < self._leaves_from:
            return []
        due = [m for m, at in self._leaving.items() if at <= now]
        for member in due:
            del self._leaving[member]
            self._data.pop(member, None)
        return due

    def next_leave(self) -> float | None:
        """When (monotonic) the next leave is due, if any."""
        at = min(self._leaving.values(), default=None)
        return None if at is None else max(at, self._leaves_from)

    def retry_leaves(self, members: Iterable[Member]) -> None:
        """Leaves that could not be sent: due again, unless the membership is back."""
        for member in members:
            if member not in self._holds:
                self._leaving.setdefault(member, time.monotonic())
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
