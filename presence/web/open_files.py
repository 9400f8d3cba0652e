"""The process's open-file budget: every connection is a descriptor.

``serve`` raises the soft limit to the hard one, then checks that the limit
holds every connection it may accept plus a reserve, so that ``accept()``
never fails for want of a descriptor: past the caps, a connection is
accepted and closed at once, instead of waiting in the kernel's queue while
``/healthz`` and new streams wait behind it.
"""

from __future__ import annotations

import logging
import resource

from ..errors import ConfigError
from ..settings import Settings

log = logging.getLogger(__name__)

#: Descriptors kept for Redis (pool, pub/sub, blocking readers), the
#: listeners, the log and files served.
RESERVE = 256
#: Connections asyncio accepts from a listener in one event loop iteration.
ACCEPT_BATCH = 32
#: Listeners budgeted for (a host name may resolve to IPv4 and IPv6).
LISTENERS = 2
#: Descriptors of connections accepted but not yet seen by the caps, or
#: refused and not yet closed: each batch lives about four loop iterations.
IN_FLIGHT = 4 * ACCEPT_BATCH * LISTENERS
#: Linux's ceiling for a soft limit when the hard one is unlimited.
_NR_OPEN = "/proc/sys/fs/nr_open"


def connection_cap(max_connections: int) -> int:
    """Connections of every kind the process holds: the streams, and an eighth
    more (at least 64) for requests, health checks and connections still
    sending theirs."""
    return max_connections + max(64, max_connections // 8)


def needed(max_connections: int) -> int:
    """Open files a server with ``max_connections`` streams may need."""
    return connection_cap(max_connections) + IN_FLIGHT + RESERVE


def largest(limit: int) -> int:
    """The most streams (``max_connections``) an open-file limit holds; 0 for none."""
    fitting = (limit - IN_FLIGHT - RESERVE) * 8 // 9
    while fitting > 0 and needed(fitting) > limit:
        fitting -= 1
    return max(0, fitting)


def raise_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(_NR_OPEN) as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def fit(settings: Settings, *, explicit: bool) -> Settings:
    """``settings`` if the open-file limit holds its connections; else, for a
    ``max_connections`` that was given (``explicit``), a ``ConfigError``
    naming both numbers, and for the default, settings lowered to fit."""
    limit = raise_limit()
    want = settings.max_connections
    if needed(want) <= limit:
        return settings
    if explicit:
        raise ConfigError(
            f"--max-connections {want} needs {needed(want)} open files, but this process "
            f"may open {limit} (ulimit -n): raise the limit or lower --max-connections"
        )
    fitting = largest(limit)
    if fitting < 1:
        raise ConfigError(f"the open-file limit ({limit}, ulimit -n) is too low to serve")
    log.warning(
        "the open-file limit (%d, ulimit -n) holds %d connections, not the default %d: "
        "max connections lowered to %d; raise the limit to serve more",
        limit,
        fitting,
        want,
        fitting,
    )
    return settings.replace(max_connections=fitting)
