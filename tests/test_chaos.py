"""The chaos soak at test size: 12 s of chaos over 60 client ids, 20 of them
steady. The harness, the faults and the invariants are in ``tests/chaos``
(see its docstrings); ``python -m bench.chaos`` is the long form.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .chaos import Plan, run_chaos


@pytest.mark.timeout(150)
async def test_chaos_soak(tmp_path: Path) -> None:
    plan = Plan(seed=Plan.seed_from_env(), duration=12, clients=60, steady=20)
    report = await run_chaos(plan, tmp_path)
    assert not report.problems, report.text()


@pytest.mark.timeout(180)
async def test_chaos_soak_on_a_cluster(tmp_path: Path) -> None:
    """The same soak on 3 primaries and 3 replicas: besides the servers' faults,
    a primary SIGKILLed (its replica takes over what it had replicated), a
    shard failed over, and a shard's stream trimmed."""
    plan = Plan(seed=Plan.seed_from_env(), duration=12, clients=60, steady=20, cluster=True)
    report = await run_chaos(plan, tmp_path)
    assert not report.problems, report.text()
