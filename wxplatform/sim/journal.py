"""The log of API requests the simulator received, for tests to assert on.

Credentials are redacted as requests are recorded: the AppSecret (`secret`, in the
query of `/cgi-bin/token` or the JSON body of `/cgi-bin/stable_token`) never reaches
the log or the control API. Access tokens are kept, because tests need to see which
token a client used, and the simulator's tokens are its own inventions.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "RequestLog", "redact"]

REDACTED = "***"
_SECRET_KEYS = frozenset({"secret", "appsecret", "app_secret"})


def redact(value: Any) -> Any:
    """A copy of a JSON value with every credential field replaced by `***`."""
    if isinstance(value, Mapping):
        return {
            k: REDACTED if str(k).lower() in _SECRET_KEYS else redact(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _json_or_none(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


class RequestLog:
    """A bounded, redacted record of received API requests, oldest first."""

    def __init__(self, limit: int = 10_000) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def record(
        self,
        *,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        body: bytes,
        content_type: str | None,
        time: float,
    ) -> None:
        """Remember one request, with credentials redacted."""
        flat = {k: v[0] if len(v) == 1 else list(v) for k, v in query.items()}
        self._entries.append(
            {
                "method": method,
                "path": path,
                "query": redact(flat),
                "json": redact(_json_or_none(body)),
                "body_bytes": len(body),
                "content_type": content_type,
                "time": time,
            }
        )

    def entries(self, path: str | None = None) -> list[dict[str, Any]]:
        """Recorded requests, optionally only those for `path`."""
        return [e for e in self._entries if path is None or e["path"] == path]

    def clear(self) -> None:
        """Forget everything recorded."""
        self._entries.clear()
