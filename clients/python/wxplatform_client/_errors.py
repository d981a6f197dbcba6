"""The one place where gRPC failures become typed exceptions.

WxPlatformError                 any failed call; .code .reason .metadata .violations
├── InvalidArgument             fix the request (see .violations)
├── NotFound
├── AlreadyExists
├── PermissionDenied
├── Unauthenticated
├── FailedPrecondition          e.g. WINDOW_CLOSED: the state of the world must change
├── Aborted                     retry later (same idempotency key)
├── ResourceExhausted           rate or quota; .retry_delay when a retry makes sense
├── Unavailable                 transient: retry with backoff
├── DeadlineExceeded            the outcome may be unknown
├── Unimplemented
└── Internal                    a bug on the server side
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WxPlatformError",
    "from_rpc_error",
]


class WxPlatformError(Exception):
    """A call to wxplatform failed.

    `reason` is the `ErrorReason` name without its prefix (`WINDOW_CLOSED`), or "" when
    the failure did not come from wxplatform itself (a network error, say).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        violations: list[tuple[str, str]] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {reason + ': ' if reason else ''}{message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain  # of the ErrorInfo: "wxplatform" when wxplatform refused
        self.metadata = metadata or {}
        self.violations = violations or []
        self.retry_delay = retry_delay


class InvalidArgument(WxPlatformError):
    """INVALID_ARGUMENT."""


class NotFound(WxPlatformError):
    """NOT_FOUND."""


class AlreadyExists(WxPlatformError):
    """ALREADY_EXISTS."""


class PermissionDenied(WxPlatformError):
    """PERMISSION_DENIED."""


class Unauthenticated(WxPlatformError):
    """UNAUTHENTICATED."""


class FailedPrecondition(WxPlatformError):
    """FAILED_PRECONDITION."""


class Aborted(WxPlatformError):
    """ABORTED."""


class ResourceExhausted(WxPlatformError):
    """RESOURCE_EXHAUSTED."""


class Unavailable(WxPlatformError):
    """UNAVAILABLE."""


class DeadlineExceeded(WxPlatformError):
    """DEADLINE_EXCEEDED."""


class Unimplemented(WxPlatformError):
    """UNIMPLEMENTED."""


class Internal(WxPlatformError):
    """INTERNAL, UNKNOWN, DATA_LOSS and anything unexpected."""


_BY_CODE: dict[grpc.StatusCode, type[WxPlatformError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> WxPlatformError:
    """The typed exception for a failed call, with the details the server attached."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the call's own status: not trusted
        status = None
    details = _unpack(status) if status is not None else {}
    cls = _BY_CODE.get(error.code(), Internal)
    return cls(error.code(), error.details() or "", **details)


def _unpack(status: status_pb2.Status) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            out["reason"] = info.reason
            out["domain"] = info.domain
            out["metadata"] = dict(info.metadata)
        elif detail.Unpack(bad):
            out["violations"] = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Unpack(retry):
            out["retry_delay"] = retry.retry_delay.ToTimedelta().total_seconds()
    return out
