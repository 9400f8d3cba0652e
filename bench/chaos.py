"""The chaos soak's long form: by default 100 s of chaos over 120 client ids.

    python -m bench.chaos [--seed N] [--seconds 100] [--clients 120] [--steady 24]

The harness, the driver and the invariants are those of ``tests/chaos``; see
its docstrings. Prints the faults as they happen, then the report by invariant,
with the seed. Exits 1 when an invariant broke. Logs (the servers' and the
harness's own ``chaos.log``) go to ``--workdir``, a fresh temporary
directory unless given, which is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from tests.chaos import Plan, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument(
        "--seed", type=int, default=None, help="default: PRESENCE_CHAOS_SEED or random"
    )
    parser.add_argument("--seconds", type=float, default=100.0, help="seconds of chaos")
    parser.add_argument("--clients", type=int, default=120, help="client ids besides the observers")
    parser.add_argument("--steady", type=int, default=24, help="of which steady, on node-1")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 0 < args.steady < args.clients:
        parser.error("--steady must be between 0 and --clients")
    seed = Plan.seed_from_env() if args.seed is None else args.seed
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="presence-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = Plan(seed=seed, duration=args.seconds, clients=args.clients, steady=args.steady)
    report = asyncio.run(run_chaos(plan, workdir))
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
