"""The invariants, checked once the chaos stops and everything has settled,
and the report that lists what broke, by invariant:

1. In the ``presence`` stream, ONLINE and OFFLINE alternate per client, starting
   with ONLINE (reset only where the reader saw a gap). Each observer's events,
   between its snapshots, agree: no ONLINE of a client already online, no
   OFFLINE of one that is not, no event twice.
2. Every server's ``GET /clients``, every observer's view, and the state the
   stream adds up to are exactly the clients with an open stream.
3. A steady client never flaps: no OFFLINE of it in the stream, and no
   observer ever saw it go OFFLINE or left it out of a snapshot. And (3b) a
   reload that reopened on the same server within the leave grace, with no
   server or Redis away around it, is followed by no OFFLINE.

A broken harness (a stream that did not stay open, a record that does not
add up) is reported too, ahead of the invariants.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .harness import GRACE, Harness, Plan, Reload
from .streams import OFFLINE, ONLINE, Entry, Watcher, node, position

INVARIANTS = (
    "harness",
    "invariant 1 (ONLINE/OFFLINE alternate)",
    "invariant 2 (final state is the truth)",
    "invariant 3 (steady clients never flap)",
    "invariant 3b (a reload within the grace, away from faults, changes nothing)",
)
HARNESS, ALTERNATE, FINAL, STEADY, RELOAD = INVARIANTS


@dataclass
class Report:
    plan: Plan
    lines: list[str] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, invariant: str, problem: str) -> None:
        self.problems.setdefault(invariant, []).append(problem)

    def text(self) -> str:
        out = list(self.lines)
        for invariant in INVARIANTS:
            found = self.problems.get(invariant, [])
            out.append(f"{invariant}: {'ok' if not found else f'{len(found)} problem(s)'}")
            out += [f"  {p}" for p in found[:40]]
            if len(found) > 40:
                out.append(f"  ... and {len(found) - 40} more")
        out.append(f"seed {self.plan.seed}: replay with PRESENCE_CHAOS_SEED={self.plan.seed}")
        return "\n".join(out)


def check(harness: Harness) -> Report:
    """The report of a settled run."""
    report = Report(harness.plan)
    Checks(harness, report).run()
    return report


class Checks:
    def __init__(self, harness: Harness, report: Report) -> None:
        self.harness = harness
        self.report = report
        self.t0 = harness.t0
        self.record = harness.tape.record()
        self.ordered = sorted(self.record, key=position)
        self.watchers = [*harness.observers, *harness.steady]

    def run(self) -> None:
        self._summary()
        self._harness()
        last = self._alternate()
        self._final(last)
        self._steady()
        self._reloads()

    def _summary(self) -> None:
        harness, report, record = self.harness, self.report, self.record
        if not harness.keepalives:
            report.fail(HARNESS, "keep-alives stopped on a steady stream")
        tape, added = harness.tape, harness.added
        report.lines += [
            f"actions: {dict(sorted(harness.counts.items()))}",
            f"presence stream: {len(tape.entries)} entries read, "
            f"{len(tape.trimmed)} taken by trims, {len(record)} in all; "
            f"Redis counted {added} added; gaps after {tape.gaps() or 'none'}",
            "observers: "
            + ", ".join(
                f"{w.client} {w.connections} connection(s), {resets(w)} reset snapshot(s)"
                for w in harness.observers
            ),
        ]
        if added is not None and added != len(record) and not tape.gaps():
            report.fail(
                HARNESS, f"Redis added {added} presence entries, the record has {len(record)}"
            )

    def _harness(self) -> None:
        for watcher in self.harness.steady:
            if watcher.lost or watcher.connections != 1:
                self.report.fail(HARNESS, f"{watcher.client}: its stream did not stay open")
        for watcher in self.harness.observers:
            if not watcher.connected:
                self.report.fail(HARNESS, f"{watcher.client}: not connected at the end")

    def _alternate(self) -> dict[str, str]:
        """1. Alternation in the stream, and in what each watcher received;
        each client's last status in the stream."""
        record = self.record
        gaps = sorted(self.harness.tape.gaps(), key=position)
        last: dict[str, str] = {}
        after_gap = False
        for entry_id in self.ordered:
            while gaps and position(gaps[0]) < position(entry_id):
                gaps.pop(0)
                last.clear()
                after_gap = True
            client, status, _server = record[entry_id]
            before = last.get(client)
            if (before is None and status != ONLINE and not after_gap) or before == status:
                self.report.fail(
                    ALTERNATE,
                    f"stream: {client} {status} at {self._at(entry_id)} after "
                    f"{before or 'nothing'}",
                )
            last[client] = status
        for watcher in self.watchers:
            for problem in self._order(watcher):
                self.report.fail(ALTERNATE, f"{watcher.client} received {problem}")
        return last

    def _final(self, last: dict[str, str]) -> None:
        """2. The final state."""
        truth = self.harness.expected()
        derived = {c for c, s in last.items() if s == ONLINE}
        if derived != truth:
            self.report.fail(FINAL, f"the stream adds up to {_diff(derived, truth)}")
        for watcher in self.watchers:
            if watcher.connected and watcher.view() != truth - {watcher.client}:
                wrong = _diff(watcher.view(), truth - {watcher.client})
                self.report.fail(FINAL, f"{watcher.client} sees {wrong}")
        for index, listed in enumerate(self.harness.final_lists):
            if listed != truth:
                wrong = "no answer" if listed is None else _diff(listed, truth)
                self.report.fail(FINAL, f"GET /clients on {node(index)}: {wrong}")

    def _steady(self) -> None:
        """3. Steady clients never flap. OFFLINEs of the same millisecond (one
        script call) are reported together."""
        record, report = self.record, self.report
        steady = {w.client for w in self.harness.steady}
        flaps: dict[int, list[str]] = {}
        for entry_id in self.ordered:
            client, status, _server = record[entry_id]
            if client in steady and status == OFFLINE:
                flaps.setdefault(position(entry_id)[0], []).append(entry_id)
        watchers = len(self.watchers) - 1
        for ms, ids in flaps.items():
            clients = sorted(record[i][0] for i in ids)
            saw = min(len(self._saw_offline(i)) for i in ids)
            back = [self._back(record[i][0], i) for i in ids]
            report.fail(
                STEADY,
                f"{len(ids)} steady client(s) OFFLINE in the stream at "
                f"+{ms / 1000 - self.t0:.3f} (ids {ids[0]}..{ids[-1]}): {', '.join(clients)}; "
                f"seen by at least {saw} of {watchers} watchers; "
                f"back ONLINE after {', '.join(sorted(set(back)))}; "
                f"server(s) {sorted({record[i][2] for i in ids})}; "
                f"around it: {self._context(ms / 1000)}; "
                f"first one's entries: {self._history(clients[0])}",
            )
        for watcher in self.watchers:
            online: set[str] = set()
            for item in watcher.received:
                event = item.event
                if event.event == "snapshot":
                    online = {c["client"] for c in event.data["clients"]}
                    if item.at >= self.harness.ready:
                        for gone in sorted(steady - online - {watcher.client}):
                            kind = "reset snapshot" if event.data.get("reset") else "snapshot"
                            report.fail(
                                STEADY,
                                f"{watcher.client} got a {kind} (id {event.id}, connection "
                                f"{item.connection}) without {gone} at +{item.at - self.t0:.3f}",
                            )
                elif (
                    event.data["client"] in steady
                    and event.data["status"] == OFFLINE
                    and self._key(event.id, event.data["client"]) not in record
                ):
                    report.fail(
                        STEADY,
                        f"{watcher.client} saw {event.data['client']} go OFFLINE "
                        f"(id {event.id}, not in the stream) at +{item.at - self.t0:.3f}",
                    )

    def _reloads(self) -> None:
        """3b. A clean reload: reopened on the same server within the grace, and
        no server or Redis away from 1 s before the close to 3 s after the
        window (a trim changes no state). No OFFLINE may come in the window:
        2.5 s after the reopening, or until the client's next close."""
        harness, record = self.harness, self.record
        clean: list[tuple[Reload, float]] = []
        for reload in harness.reloads:
            later = [at for at in harness.ends.get(reload.client, []) if at > reload.reopened]
            until = min([reload.reopened + 2.5, *later])
            if reload.reopened - reload.closed < GRACE and not any(
                start - 1 <= until and reload.closed <= end + 3 for start, end in harness.outages
            ):
                clean.append((reload, until))
        for reload, until in clean:
            for entry_id in self.ordered:
                client, status, _server = record[entry_id]
                at = position(entry_id)[0] / 1000
                if client == reload.client and status == OFFLINE and reload.closed < at < until:
                    self.report.fail(
                        RELOAD,
                        f"{client} reloaded on {node(reload.server)}: closed at "
                        f"+{reload.closed - self.t0:.3f}, open again at "
                        f"+{reload.reopened - self.t0:.3f}, yet OFFLINE at {self._at(entry_id)}; "
                        f"its entries: {self._history(client)}",
                    )
        self.report.lines.append(f"reloads: {len(harness.reloads)}, {len(clean)} clean (checked)")

    def _back(self, client: str, entry_id: str) -> str:
        """How long after ``entry_id`` the client's next ONLINE came."""
        record = self.record
        after = [i for i in record if record[i][0] == client and position(i) > position(entry_id)]
        if not after:
            return "never"
        first = min(after, key=position)
        return f"{(position(first)[0] - position(entry_id)[0]) / 1000:.1f} s"

    def _saw_offline(self, entry_id: str) -> list[str]:
        return [
            w.client
            for w in self.watchers
            if any(
                r.event.event == "presence"
                and self._key(r.event.id, r.event.data["client"]) == entry_id
                for r in w.received
            )
        ]

    def _key(self, event_id: str | None, client: str) -> str:
        return "" if event_id is None else self.harness.layout.event_key(event_id, client)

    def _order(self, watcher: Watcher) -> Iterable[str]:
        online: set[str] = set()
        # Per shard (one, on one Redis): a stream's order is each shard's.
        newest: dict[int, tuple[int, int]] = {}
        layout = self.harness.layout
        for item in watcher.received:
            event = item.event
            if event.event == "snapshot":
                online = {c["client"] for c in event.data["clients"]}
                continue
            assert event.id is not None
            client, status = event.data["client"], event.data["status"]
            key, shard = layout.event_key(event.id, client), layout.shard(client)
            where = f"at {self._at(key)} (connection {item.connection})"
            if position(key) <= newest.get(shard, (0, 0)):
                yield f"event {key} out of order or twice {where}"
            newest[shard] = max(newest.get(shard, (0, 0)), position(key))
            if status == ONLINE and client in online:
                yield f"ONLINE of {client}, online already, {where}"
            if status == OFFLINE and client not in online:
                yield f"OFFLINE of {client}, not online, {where}"
            (online.add if status == ONLINE else online.discard)(client)

    def _at(self, entry_id: str) -> str:
        return f"{entry_id} (+{position(entry_id)[0] / 1000 - self.t0:.3f})"

    def _history(self, client: str) -> str:
        record: dict[str, Entry] = self.record
        return ", ".join(
            f"{record[i][1]}@+{position(i)[0] / 1000 - self.t0:.3f}({record[i][2] or '-'})"
            for i in sorted(record, key=position)
            if record[i][0] == client
        )

    def _context(self, at: float) -> str:
        """The faults in the 6 s before a moment (and 1 s after)."""
        notes = self.harness.notes
        near = [
            f"+{n.at - self.t0:.3f} {n.text}"
            for n in notes
            if n.kind == "fault" and at - 6 <= n.at <= at + 1
        ]
        reloads = sum(
            1 for n in notes if n.kind == "action" and "reload" in n.text and at - 2 <= n.at <= at
        )
        faults = "; ".join(near or ["no fault within 6 s"])
        return f"{faults}; {reloads} reload(s) in the 2 s before"


def _diff(seen: set[str], truth: set[str]) -> str:
    return f"{len(seen)} online: extra {sorted(seen - truth)}, missing {sorted(truth - seen)}"


def resets(watcher: Watcher) -> int:
    return sum(
        1 for r in watcher.received if r.event.event == "snapshot" and r.event.data.get("reset")
    )
