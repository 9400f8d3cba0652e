"""``presence doctor``'s own options and its run: exit 0 when all is well, 1
on a problem or an unreachable Redis, 2 on bad usage."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import Any

from ..errors import ConfigError, PresenceError
from ..settings import Settings
from . import run_doctor
from .streams import Thresholds

DESCRIPTION = (
    "Check one Redis (standalone, any node of a cluster, or redis+sentinel://) against "
    "what presence needs: one line per check, OK, WARN or PROBLEM, with the fix. "
    "Exit 0 when nothing is a problem, 1 on a problem or an unreachable Redis, 2 on bad usage."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options besides ``--redis-url``, ``--namespace`` and ``--shards``."""
    opt = parser.add_argument
    opt("--json", action="store_true", help="print the checks as JSON")
    opt("--acl-user", metavar="NAME", help="check this ACL user's permissions (default: the URL's)")
    defaults = Thresholds()
    opt(
        "--pending-after",
        type=float,
        default=defaults.pending_after,
        metavar="SECONDS",
        help=f"heartbeat entries pending longer are a problem (default {defaults.pending_after:g})",
    )
    opt(
        "--idle-after",
        type=float,
        default=defaults.idle_after,
        metavar="SECONDS",
        help=f"consumers idle longer are reported (default {defaults.idle_after:g})",
    )
    opt(
        "--heartbeat-maxlen",
        type=int,
        metavar="N",
        help="the servers' heartbeat stream cap (default 1000000)",
    )
    opt(
        "--presence-maxlen",
        type=int,
        metavar="N",
        help="the servers' presence stream cap (default 100000)",
    )
    opt("--room-maxlen", type=int, metavar="N", help="the servers' room stream cap (default 10000)")


def main(args: dict[str, Any]) -> int:
    """Run ``presence doctor`` with the parsed ``args``; the exit status."""
    as_json = args.pop("json")
    acl_user = args.pop("acl_user")
    try:
        thresholds = Thresholds(
            _seconds(args.pop("pending_after"), "pending after"),
            _seconds(args.pop("idle_after"), "idle after"),
        )
        settings = Settings.from_env(**args)
    except PresenceError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_doctor(settings, thresholds, acl_user=acl_user))
    except ConfigError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 2
    except PresenceError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(report.json() if as_json else report.text())
    return 0 if report.ok else 1


def _seconds(value: float, name: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be zero or a positive number of seconds")
    return value
