"""``presence serve --workers N``: N server processes on one port.

Each worker is the single-process server (``serve``) with its own server id,
``<server id>.w<k>`` for k = 1…N, listening with ``SO_REUSEPORT``, so the
kernel spreads new connections over the workers. This parent process only
supervises: it starts the workers, restarts one that dies (logged), and on
SIGTERM or SIGINT passes SIGTERM on to every worker, each of which stops as
one server does, and waits for them. Workers that keep dying right after
they start (Redis refusing them, the port taken) make it give up and exit 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from . import logs
from .errors import ConfigError
from .settings import Settings
from .web.server import listen

log = logging.getLogger("presence")

#: Seconds a worker must run to count as started: one that dies sooner
#: counts towards ``START_FAILURES``.
STARTED_AFTER = 10.0
#: Workers dying at start in a row before the parent gives up.
START_FAILURES = 5
#: Seconds before a worker that died is started again, doubling per failure
#: at start, up to ``MAX_RESTART_DELAY``.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 8.0
#: Seconds the workers get to stop after SIGTERM before they are killed:
#: a server's own shutdown (streams closed, leaves sent) takes a few.
STOP_TIMEOUT = 30.0


def worker_count(workers: int) -> int:
    """``--workers``, with 0 meaning one per core this process may use: its
    CPU set, and a container's CPU limit (cgroup v2 ``cpu.max``) if lower."""
    if workers > 0:
        return workers
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path(CPU_MAX).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the CPU set it is
    return max(1, cores)


#: A cgroup v2 container's CPU limit: "<quota> <period>" in µs, or "max".
CPU_MAX = "/sys/fs/cgroup/cpu.max"


def worker_id(server_id: str, index: int) -> str:
    """Server id of worker ``index`` (from 1)."""
    return f"{server_id}.w{index}"


def worker_settings(settings: Settings, count: int) -> list[Settings]:
    """Each worker's settings; raises ``ConfigError`` when they cannot share a port."""
    if settings.in_memory:
        raise ConfigError(
            "--workers needs a shared Redis (memory:// lives in one process): pass --redis-url"
        )
    port = settings.port or _free_port(settings.host)
    server_id = settings.server_id
    if not settings.port and server_id == f"{socket.gethostname()}:0":
        server_id = f"{socket.gethostname()}:{port}"  # the default, with the port chosen
    alone = [settings.worker_ports + k for k in range(count)] if settings.worker_ports else []
    if alone and alone[-1] > 65535:
        base = settings.worker_ports
        raise ConfigError(f"--worker-ports {base} leaves no port for worker {count}")
    # Refused here, in one line, rather than by every worker in turn: a port
    # another program holds without SO_REUSEPORT, or one port given twice.
    held: list[socket.socket] = []
    try:
        for probe, reuse in [(port, True), *((p, False) for p in alone)]:
            try:
                held += listen(settings.host, probe, reuse_port=reuse)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {settings.host}:{probe}: {exc.strerror or exc}"
                ) from None
    finally:
        for sock in held:
            sock.close()
    try:
        return [
            dataclasses.replace(settings, port=port, workers=1, server_id=worker_id(server_id, k))
            for k in range(1, count + 1)
        ]
    except ConfigError as exc:
        last = worker_id(server_id, count)
        raise ConfigError(f"worker server id {last!r}: {exc}") from None


def own_port(settings: Settings, index: int) -> int:
    """The port worker ``index`` (from 0) listens on alone; 0 for none."""
    return settings.worker_ports + index if settings.worker_ports else 0


def _free_port(host: str) -> int:
    # Port 0 would give each worker a port of its own: one is picked for all.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def _run_worker(settings: Settings, explicit: bool, parent: int, alone: int) -> None:
    from .serve import serve  # in the worker: the parent needs none of the server

    # Only the parent answers SIGINT (a terminal's Ctrl-C reaches the whole
    # group): it stops the workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_with_parent(parent)
    code = serve(settings, explicit_max_connections=explicit, worker=True, own_port=alone)
    raise SystemExit(code)


def _stop_with_parent(parent: int) -> None:
    """SIGTERM when the parent dies, however (Linux): no worker is left
    holding the port after a SIGKILLed parent."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class Workers:
    """The worker processes, kept running until ``stop``."""

    def __init__(self, settings: list[Settings], explicit_max_connections: bool) -> None:
        self._settings = settings
        self._explicit = explicit_max_connections
        self._context = multiprocessing.get_context("spawn")
        self._procs: dict[int, BaseProcess] = {}
        self._started: dict[int, float] = {}
        self._due: dict[int, float] = {}
        self._failures = 0
        self.stopping = False
        # A signal wakes the wait below at once (Python retries it otherwise).
        self._wakeup, self._woken = socket.socketpair()
        self._wakeup.setblocking(False)
        self._woken.setblocking(False)

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT; the exit status."""
        previous = signal.set_wakeup_fd(self._woken.fileno())
        try:
            return self._supervise()
        finally:
            signal.set_wakeup_fd(previous)
            self._wakeup.close()
            self._woken.close()

    def _supervise(self) -> int:
        for index in range(len(self._settings)):
            self._start(index)
        while not self.stopping:
            self._restart_due()
            ready: list[object] = [self._wakeup, *(p.sentinel for p in self._procs.values())]
            timeout = min(self._due.values(), default=time.monotonic() + 1) - time.monotonic()
            wait(ready, timeout=max(0.05, timeout))  # type: ignore[arg-type]
            with contextlib.suppress(BlockingIOError):
                self._wakeup.recv(64)
            for index, proc in list(self._procs.items()):
                if not proc.is_alive() and not self.stopping:
                    self._died(index, proc)
            if self._failures >= START_FAILURES:
                log.error(
                    "workers keep dying at start (%d in a row): giving up; see their errors above",
                    self._failures,
                )
                self._stop_all()
                return 1
        return self._stop_all()

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start(self, index: int) -> None:
        settings = self._settings[index]
        proc = self._context.Process(
            target=_run_worker,
            args=(settings, self._explicit, os.getpid(), own_port(settings, index)),
            name=settings.server_id,
            daemon=False,
        )
        proc.start()
        self._procs[index] = proc
        self._started[index] = time.monotonic()
        log.info("worker %s started (pid %d)", settings.server_id, proc.pid)

    def _died(self, index: int, proc: BaseProcess) -> None:
        del self._procs[index]
        code = proc.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
        ran = time.monotonic() - self._started[index]
        if ran < STARTED_AFTER:
            self._failures += 1
        else:
            self._failures = 0
        delay = min(RESTART_DELAY * 2 ** max(0, self._failures - 1), MAX_RESTART_DELAY)
        log.warning(
            "worker %s (pid %d) died after %.1f s (%s); restarting in %.1f s",
            self._settings[index].server_id,
            proc.pid,
            ran,
            how,
            delay,
        )
        self._due[index] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, due in list(self._due.items()):
            if due <= now:
                del self._due[index]
                self._start(index)

    def _stop_all(self) -> int:
        """SIGTERM to every worker, SIGKILL to those still up after
        ``STOP_TIMEOUT``; 0 when every worker stopped cleanly."""
        self._due.clear()
        procs = list(self._procs.values())
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker %s did not stop in time: killed", proc.name)
                proc.kill()
                proc.join()
        for proc in procs:
            if proc.exitcode != 0:
                log.warning("worker %s stopped with exit %s", proc.name, proc.exitcode)
        log.info("all workers stopped")
        return 0 if all(p.exitcode == 0 for p in procs) else 1


def serve_workers(settings: Settings, count: int, *, explicit_max_connections: bool) -> int:
    """Run ``count`` workers of ``settings`` until SIGTERM or SIGINT."""
    logs.configure(settings)
    each = worker_settings(settings, count)
    log.info(
        "starting %d workers on %s:%d, server ids %s to %s",
        count,
        settings.host,
        each[0].port,
        each[0].server_id,
        each[-1].server_id,
    )
    workers = Workers(each, explicit_max_connections)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, workers.stop)
    return workers.run()
