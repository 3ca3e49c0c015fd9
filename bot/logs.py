"""Structured JSON log lines. Callers pass fields, never free text a person typed, and
pseudonyms, never platform ids (safety rule 3)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from prometheus_client import Counter

_FIELDS = "tsunagu_fields"
FAILURES = Counter("tsunagu_failures_total", "Unexpected failures, by place (no personal data)",
                   ["where"])
_failure_log = logging.getLogger("tsunagu.failure")
# json.dumps(..., ensure_ascii=False) builds an encoder on every call; one does for every line.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS, {}))
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        return _ENCODER.encode(line)


def setup(level: str = "INFO") -> None:
    root = logging.getLogger("tsunagu")
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = True


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"tsunagu.{name}")


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields (pseudonyms, states, counts; no typed text).

    What `logger.log` does, less its walk up the stack for the caller: that is always this
    function, which no formatter of ours prints, and the walk was a good part of the cost of
    the one line every message logs."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, __file__, _EVENT_LINE, name, (),
                                        None, "event", {_FIELDS: fields}))


_EVENT_LINE = event.__code__.co_firstlineno


def failure(where: str, exc: BaseException, level: int = logging.ERROR, **fields: Any) -> None:
    """The one thing `except Exception` does in bot/: name the place and the exception type.

    Never the message or the traceback: an exception's text may quote what a person typed, a
    platform id or a token (safety rule 3). `where` is a fixed, dotted place name such as
    "line.deliver"; it is also the label of the one failure counter. `fields` may add
    pseudonyms, case numbers, counts — like any structured log line.
    """
    FAILURES.labels(where).inc()
    _failure_log.log(level, "failure", extra={_FIELDS: {"where": where,
                                                         "error": type(exc).__name__,
                                                         **fields}})


class Throttle:
    """Let a message through at most once per `interval` seconds (outage logs)."""

    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self._last = float("-inf")

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False
