"""Chaos soak: three ``python -m presence serve`` processes on one redis-server
that writes an append-only file, a few dozen client ids, and at random: churn,
second tabs, reloads, a server killed (SIGKILL) and restarted, a server frozen
(SIGSTOP) for 3 s, Redis killed and restarted from its AOF, and the
``presence`` stream trimmed to nothing.

``harness`` holds the processes and the clients, whose streams (``streams``)
record all they receive; ``driver`` makes the random choices and schedules
them; ``invariants`` checks the end and reports; ``soak`` runs them in turn.
The seed is printed with the report; ``PRESENCE_CHAOS_SEED=<seed>`` replays
the same choices (their timing, and so the interleaving, still varies).
"""

from .harness import Plan
from .invariants import Report
from .soak import run_chaos

__all__ = ["Plan", "Report", "run_chaos"]
