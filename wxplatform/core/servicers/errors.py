"""The one table from domain errors to gRPC status codes with `google.rpc.ErrorInfo`."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from acme.wxplatform.v1 import error_reason_pb2
from wxplatform.errors import InvalidRequest, WxPlatformError

__all__ = ["DOMAIN", "STATUS_BY_REASON", "to_rpc_status"]

DOMAIN = "wxplatform"

# reason (ErrorReason value name without its prefix) -> gRPC status code.
STATUS_BY_REASON: dict[str, grpc.StatusCode] = {
    "CALLER_UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "CALLER_NOT_AUTHORIZED": grpc.StatusCode.PERMISSION_DENIED,
    "APP_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "INVALID_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_IMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
    "APP_KIND_MISMATCH": grpc.StatusCode.FAILED_PRECONDITION,
    "STORE_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "IDEMPOTENCY_KEY_REUSED": grpc.StatusCode.ALREADY_EXISTS,
    "IDEMPOTENT_REQUEST_IN_PROGRESS": grpc.StatusCode.ABORTED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "DELIVERY_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "SHUTTING_DOWN": grpc.StatusCode.UNAVAILABLE,
    "REPLAYED_REQUEST": grpc.StatusCode.PERMISSION_DENIED,
    "WINDOW_CLOSED": grpc.StatusCode.FAILED_PRECONDITION,
    "WINDOW_QUOTA_EXHAUSTED": grpc.StatusCode.FAILED_PRECONDITION,
    "WECHAT_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "WECHAT_OUTCOME_UNKNOWN": grpc.StatusCode.DEADLINE_EXCEEDED,
    "WECHAT_BAD_RESPONSE": grpc.StatusCode.UNAVAILABLE,
    "APP_CREDENTIALS_REJECTED": grpc.StatusCode.FAILED_PRECONDITION,
    "WECHAT_DAILY_QUOTA_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "WECHAT_RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "INVALID_OPENID": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_TEMPLATE": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_TEMPLATE_DATA": grpc.StatusCode.INVALID_ARGUMENT,
    "USER_NOT_SUBSCRIBED": grpc.StatusCode.FAILED_PRECONDITION,
    "SUBSCRIBE_CONSENT_MISSING": grpc.StatusCode.FAILED_PRECONDITION,
    "USER_BLOCKED": grpc.StatusCode.FAILED_PRECONDITION,
    "WECHAT_API_UNAUTHORIZED": grpc.StatusCode.PERMISSION_DENIED,
    "TOO_MANY_ARTICLES": grpc.StatusCode.INVALID_ARGUMENT,
    "WECHAT_ERROR": grpc.StatusCode.FAILED_PRECONDITION,
    "TOKEN_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "TOKEN_REFRESH_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "OAUTH_STATE_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "AUTH_CODE_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "RETURN_URL_NOT_ALLOWED": grpc.StatusCode.INVALID_ARGUMENT,
    "USER_LOGIN_BLOCKED": grpc.StatusCode.PERMISSION_DENIED,
    "USER_DATA_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "SESSION_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "SESSION_EVENTS_EXPIRED": grpc.StatusCode.OUT_OF_RANGE,
    "USER_AUTHORIZATION_REQUIRED": grpc.StatusCode.FAILED_PRECONDITION,
    "INVALID_CONSUMER_GROUP": grpc.StatusCode.INVALID_ARGUMENT,
}

_PREFIX = "ERROR_REASON_"


def _known_reasons() -> set[str]:
    values = error_reason_pb2.DESCRIPTOR.enum_types_by_name["ErrorReason"].values
    return {v.name.removeprefix(_PREFIX) for v in values if v.number != 0}


# Fail at import, not at the first error, if the proto and this table disagree.
if missing := _known_reasons() ^ set(STATUS_BY_REASON):
    raise RuntimeError(f"ErrorReason and STATUS_BY_REASON disagree on: {sorted(missing)}")


def to_rpc_status(error: WxPlatformError) -> status_pb2.Status:
    """The rich status for a domain error: code, message, ErrorInfo (+ BadRequest)."""
    code = STATUS_BY_REASON.get(error.reason, grpc.StatusCode.INTERNAL)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details: list[Message] = [info]
    if isinstance(error, InvalidRequest):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=error.retry_after))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=packed
    )
