"""One run of the soak: the harness started, the driver's chaos, the settling,
the invariants checked, the harness torn down; the report printed."""

from __future__ import annotations

from pathlib import Path

from .driver import Driver
from .harness import Harness, Plan
from .invariants import Report, check


async def run_chaos(plan: Plan, workdir: Path) -> Report:
    """Run the soak; the report lists what broke, by invariant."""
    harness = Harness(plan, workdir)
    try:
        await harness.start()
        await Driver(harness).run()
        await harness.settle()
        report = check(harness)
    finally:
        await harness.teardown()
    print(report.text(), flush=True)
    return report
