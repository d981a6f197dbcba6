"""Structured (JSON lines) logging with a request id that follows the work.

The edge creates a request id per push and sends it to core in gRPC metadata
(`x-request-id`); both processes put it on every log line through a context variable,
so one push can be followed across processes with a single grep.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
import sys
import time
from typing import Any

__all__ = [
    "REQUEST_ID_HEADER",
    "REQUEST_ID_METADATA",
    "JsonFormatter",
    "configure_logging",
    "new_request_id",
    "request_id",
]

REQUEST_ID_METADATA = "x-request-id"
REQUEST_ID_HEADER = "X-Request-Id"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# LogRecord attributes that are not user-supplied `extra` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


def new_request_id() -> str:
    """A fresh, short, unguessable request id."""
    return secrets.token_hex(8)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # one strftime per second, not per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self.process,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(process: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Tornado logs every request itself; the edge writes its own access line instead.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    # HTTP client libraries log full URLs, and WeChat's token URL carries the AppSecret.
    for noisy in ("aiohttp",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
