"""What ``presence doctor`` found: one ``Check`` per topic, as text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["OK", "WARN", "PROBLEM"]
OK: Status = "OK"
WARN: Status = "WARN"
PROBLEM: Status = "PROBLEM"


@dataclass(frozen=True, slots=True)
class Check:
    """One check: its stable ``name``, what was found, and what to do about it."""

    name: str
    status: Status
    detail: str
    #: The command or configuration line that fixes it; None when nothing is to do.
    fix: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    #: The Redis URL, its password masked.
    redis: str
    #: ``standalone``, ``cluster`` or ``sentinel``.
    mode: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """No problem (warnings allowed)."""
        return all(c.status != PROBLEM for c in self.checks)

    def text(self) -> str:
        """One line per check; a fix on an indented line after it."""
        width = max(len(c.name) for c in self.checks)
        lines = [f"presence doctor: {self.redis} ({self.mode})"]
        for check in self.checks:
            lines.append(f"{check.status:<7}  {check.name:<{width}}  {check.detail}")
            if check.fix:
                lines.append(f"{'':<9}{'':<{width}}  fix: {check.fix}")
        problems = sum(c.status == PROBLEM for c in self.checks)
        warnings = sum(c.status == WARN for c in self.checks)
        lines.append(f"{count(problems, 'problem')}, {count(warnings, 'warning')}")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(
            {
                "redis": self.redis,
                "mode": self.mode,
                "ok": self.ok,
                "checks": [asdict(c) for c in self.checks],
            },
            indent=2,
        )


def count(n: int, noun: str) -> str:
    """``1 problem``, ``2 problems``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
