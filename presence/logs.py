"""Logging for the ``serve`` command: readable text, or one JSON object a line."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: A worker's lines (``serve --workers``) name it: they share one output.
WORKER_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"
_TOKEN = re.compile(r"(token=)[^&\s'\"]+")


class Throttle:
    """Counts events that a flood could log by the thousand: the first is
    reported at once, then at most one line per ``every`` seconds, with the
    count since the last (the metrics count every one)."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._next = 0.0
        self._unlogged = 0

    def count(self, events: int = 1) -> int:
        """Count ``events``; returns how many to report now, or 0 to stay quiet."""
        self._unlogged += events
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self._every
        due, self._unlogged = self._unlogged, 0
        return due


class RedactTokens(logging.Filter):
    """Blanks ``token=...`` in every line, tracebacks included: aiohttp logs the
    start of a request it could not parse, query string and all."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = _TOKEN.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = _TOKEN.sub(r"\1***", record.exc_text)
        return True


class LibraryOneLine(logging.Filter):
    """redis-py's cluster helpers log a retried failure with its traceback
    (a primary lost in a failover): one line instead, as presence's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("redis.") and record.exc_info:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers."""

    #: Whether lines carry ``worker``, the worker's server id.
    worker = False

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker:
            entry["worker"] = record.processName or ""
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access lines without query strings: a ``?token=`` must never reach a log."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s %d %.3fs",
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


def configure(settings: Settings, *, worker: bool = False) -> None:
    """Log to stderr; a ``worker``'s lines name it (its process is named
    after its server id)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        formatter = JsonFormatter()
        formatter.worker = worker
        handler.setFormatter(formatter)
    else:
        handler.setFormatter(logging.Formatter(WORKER_FORMAT if worker else TEXT_FORMAT))
    handler.addFilter(LibraryOneLine())
    handler.addFilter(RedactTokens())
    logging.basicConfig(level=settings.log_level, handlers=[handler])
