"""The connect storm's load in C (bench/storm_client.c): built with the system ``cc``
on first use, into a temporary directory named by the source's hash, then run as
``processes`` processes holding a slice of the clients each.

Each process prints a JSON status line every 0.5 s; a thread per process keeps
the latest. ``CLoad`` answers as ``storm.Load`` does, so the storm reports
either load the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

SOURCE = Path(__file__).resolve().parent / "storm_client.c"
CFLAGS = ("-O2", "-Wall", "-Wextra")


def build() -> Path:
    """The compiled client, built once per version of its source."""
    compiler = shutil.which("cc")
    if compiler is None:
        raise SystemExit("bench: the C storm load needs a C compiler (cc); or use --python-load")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    binary = Path(tempfile.gettempdir()) / f"presence-storm-client-{digest}"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "storm_client"
        subprocess.run([compiler, *CFLAGS, "-o", str(out), str(SOURCE)], check=True)
        os.replace(out, binary)  # atomic: a concurrent build wins or loses whole
    return binary


class CLoad:
    """``processes`` C processes holding ``total`` clients between them, interleaved;
    with ``room_size``, each client streams its room of that many (see the C source)."""

    def __init__(
        self,
        port: int,
        total: int,
        processes: int,
        *,
        niceness: int,
        spread_ms: float,
        room_size: int = 0,
    ) -> None:
        binary = build()
        processes = max(1, min(processes, total))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._latest: list[dict[str, Any]] = []
        self._final: list[dict[str, Any] | None] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        for p in range(processes):
            proc = subprocess.Popen(
                [str(binary), "--port", str(port), "--total", str(total), "--first", str(p),
                 "--step", str(processes), "--nice", str(niceness), "--spread-ms",
                 str(spread_ms), "--room-size", str(room_size)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline() or b"{}")
            if not ready.get("ready"):
                raise RuntimeError("the C storm load did not start")
            self._procs.append(proc)
            self._latest.append({})
            self._final.append(None)
        for p, proc in enumerate(self._procs):
            assert proc.stdout is not None
            thread = threading.Thread(target=self._read, args=(p, proc.stdout), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, p: int, stdout: IO[bytes]) -> None:
        for line in stdout:
            status = json.loads(line)
            with self._lock:
                self._latest[p] = status
                if status.get("final"):
                    self._final[p] = status

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def go(self) -> None:
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()

    def ask(self, command: str = "stats") -> list[dict[str, Any]]:
        """The latest status of each process, in the Python load's shape."""
        with self._lock:
            return [_answer(s) for s in self._latest]

    def stop(self) -> list[dict[str, Any]]:
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: close everything, print the final status
        for proc, thread in zip(self._procs, self._threads, strict=True):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            thread.join(5)
        with self._lock:
            return [_answer(s or {}) for s in self._final]


def _answer(status: dict[str, Any]) -> dict[str, Any]:
    """A status line as ``storm.Load`` answers: absolute times, the Python counters."""
    started = status.get("started_at", 0.0)
    all_at = status.get("all_converged_at")
    return {
        "counters": {
            "connects": status.get("connects", 0),
            "ended": status.get("streams_ended", 0),
            "connect_failures": status.get("connect_failures", 0),
            "http_errors": status.get("http_errors", 0),
            "closed_early": status.get("closed_early", 0),
            "snapshots": status.get("snapshots", 0),
            "reset_snapshots": status.get("reset_snapshots", 0),
            "online_events": status.get("online_events", 0),
            "offline_events": status.get("offline_events", 0),
            "bytes": status.get("bytes", 0),
        },
        "converged": status.get("converged", 0),
        "all_converged_at": None if all_at is None else started + all_at,
        "converged_at": [
            None if t is None else started + t for t in status.get("converged_at", [])
        ],
        "never_streamed": status.get("never_streamed", 0),
        "c": {
            key: status.get(key, 0)
            for key in (
                "bad_ids",
                "protocol_errors",
                "unconverged",
                "slow_connects",
                "connect_max_s",
                "foreign_ids",
                "wrong_room",
                "update_events",
            )
        },
    }
