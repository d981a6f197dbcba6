"""Injected faults: make the next N requests to a path fail the way WeChat sometimes does.

A fault can add latency, answer with a WeChat errcode (e.g. -1 "system error"), answer
with a non-200 status and an HTML page (what a gateway in front of WeChat sends),
answer with any raw body, or close the connection after reading the request without
answering (`reset`: a crashed or overloaded front end; the request may have acted).
`times` counts the requests it applies to; -1 means until cleared. Faults for the same
path apply in the order they were added.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Fault", "FaultBook", "gateway_page"]

_FIELDS = frozenset(
    {
        "path",
        "errcode",
        "errmsg",
        "times",
        "latency_ms",
        "http_status",
        "body",
        "content_type",
        "reset",
    }
)


def gateway_page(status: int) -> str:
    """The kind of HTML error page a reverse proxy sends for `status`."""
    title = {
        500: "500 Internal Server Error",
        502: "502 Bad Gateway",
        503: "503 Service Temporarily Unavailable",
        504: "504 Gateway Time-out",
    }.get(status, f"{status} Error")
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


@dataclass
class Fault:
    """One fault rule. `path=None` applies to every API path (never to `/_sim/`)."""

    path: str | None = None
    errcode: int | None = None
    errmsg: str | None = None
    times: int = 1
    latency_ms: float = 0
    http_status: int = 200
    body: str | None = None
    content_type: str | None = None
    reset: bool = False

    def __post_init__(self) -> None:
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("path must start with /")
        if self.path is not None and self.path.startswith("/_sim/"):
            raise ValueError("faults cannot target the control API")
        if self.times == 0 or self.times < -1:
            raise ValueError("times must be positive, or -1 for until cleared")
        if not 0 <= self.latency_ms <= 120_000:
            raise ValueError("latency_ms must be between 0 and 120000")
        if not 100 <= self.http_status <= 599:
            raise ValueError("http_status must be an HTTP status code")
        if self.reset and self.responds:
            raise ValueError("a reset fault sends no answer: no errcode, body or http_status")
        if not self.responds and not self.latency_ms and not self.reset:
            raise ValueError("a fault needs errcode, body, http_status != 200, latency_ms or reset")

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """Validate a control-API request body; `ValueError` says what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("fault must be a JSON object")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown fault field {unknown[0]!r}")
        checks: dict[str, tuple[type, ...]] = {
            "path": (str,),
            "errcode": (int,),
            "errmsg": (str,),
            "times": (int,),
            "latency_ms": (int, float),
            "http_status": (int,),
            "body": (str,),
            "content_type": (str,),
            "reset": (bool,),
        }
        for name, kinds in checks.items():
            value = data.get(name)
            wrong = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
            if value is not None and wrong:
                raise ValueError(f"fault field {name!r} has the wrong type")
        values = {k: v for k, v in data.items() if v is not None}
        return cls(**values)

    @property
    def responds(self) -> bool:
        """Whether the fault replaces the real response (rather than only delaying it)."""
        return self.errcode is not None or self.body is not None or self.http_status != 200

    def matches(self, path: str) -> bool:
        """Whether the fault applies to a request for `path`."""
        return self.path is None or self.path == path

    def to_json(self) -> dict[str, Any]:
        """The rule as the control API shows it."""
        return asdict(self)


class FaultBook:
    """The active faults, consumed request by request."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue a fault behind any others for the same path."""
        self._faults.append(fault)

    def clear(self) -> None:
        """Remove every fault."""
        self._faults.clear()

    def take(self, path: str) -> Fault | None:
        """The fault for this request, if any, counting it as used once."""
        for fault in self._faults:
            if fault.matches(path):
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def to_json(self) -> list[dict[str, Any]]:
        """All active faults, oldest first."""
        return [f.to_json() for f in self._faults]
