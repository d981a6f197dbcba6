"""The one exception tree of wxplatform. No transport library is imported here.

Each error carries a stable `reason`: the name of an `acme.wxplatform.v1.ErrorReason`
value without its prefix. Core's error interceptor maps reasons to gRPC status codes and
`google.rpc.ErrorInfo` in exactly one table (`wxplatform.core.servicers.errors`); the
edge turns them into HTTP replies in its one `write_error`.

    WxPlatformError
    ├── InvalidRequest             INVALID_REQUEST (field violations attached)
    ├── AppNotFound                APP_NOT_FOUND
    ├── AppKindMismatch            APP_KIND_MISMATCH
    ├── CallerUnauthenticated      CALLER_UNAUTHENTICATED
    ├── CallerNotAuthorized        CALLER_NOT_AUTHORIZED
    ├── IdempotentRequestInProgress IDEMPOTENT_REQUEST_IN_PROGRESS
    ├── NotImplementedYet          NOT_IMPLEMENTED
    ├── ReplayedRequest            REPLAYED_REQUEST
    ├── ShuttingDown               SHUTTING_DOWN
    └── StoreUnavailable           STORE_UNAVAILABLE

Messages must never contain secrets (AppSecrets, AES keys, tokens, credentials).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "AppKindMismatch",
    "AppNotFound",
    "CallerNotAuthorized",
    "CallerUnauthenticated",
    "FieldViolation",
    "IdempotentRequestInProgress",
    "InvalidRequest",
    "NotImplementedYet",
    "ReplayedRequest",
    "ShuttingDown",
    "StoreUnavailable",
    "WxPlatformError",
]


class WxPlatformError(Exception):
    """Base of every error wxplatform reports to a caller."""

    reason = "UNSPECIFIED"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (`data.keyword1.value`) and what is wrong."""

    field: str
    description: str


class InvalidRequest(WxPlatformError):
    """The request is malformed; `violations` names each offending field."""

    reason = "INVALID_REQUEST"

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        self.violations = violations if isinstance(violations, list) else [violations]
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {summary}")


class AppNotFound(WxPlatformError):
    """The app_id is not configured here."""

    reason = "APP_NOT_FOUND"

    def __init__(self, app_id: str) -> None:
        super().__init__(f"app {app_id!r} is not configured", metadata={"app_id": app_id})


class AppKindMismatch(WxPlatformError):
    """The operation does not apply to this kind of app."""

    reason = "APP_KIND_MISMATCH"


class CallerUnauthenticated(WxPlatformError):
    """No caller credential, or an unknown one."""

    reason = "CALLER_UNAUTHENTICATED"


class CallerNotAuthorized(WxPlatformError):
    """A known caller without a grant for this RPC and app."""

    reason = "CALLER_NOT_AUTHORIZED"


class IdempotentRequestInProgress(WxPlatformError):
    """An earlier request with the same identity is still being processed."""

    reason = "IDEMPOTENT_REQUEST_IN_PROGRESS"


class NotImplementedYet(WxPlatformError):
    """An RPC of the API that this server does not implement yet."""

    reason = "NOT_IMPLEMENTED"


class ReplayedRequest(WxPlatformError):
    """A push reused an earlier push's timestamp and nonce with a different body."""

    reason = "REPLAYED_REQUEST"


class ShuttingDown(WxPlatformError):
    """The server is draining; the call should go to another replica."""

    reason = "SHUTTING_DOWN"


class StoreUnavailable(WxPlatformError):
    """Redis could not be reached in time."""

    reason = "STORE_UNAVAILABLE"
