"""Typed Python client for wxplatform.

    async with wxplatform_client.Client("core.internal:50051", credential) as wx:
        token = await wx.tokens.GetAccessToken(GetAccessTokenRequest(app_id="wx…"))

Every call carries the caller credential and a deadline (default 5 s, override per call
with `timeout=`); failures raise a subclass of `WxPlatformError` carrying the
machine-readable `reason` and WeChat's errcode/errmsg/rid when WeChat refused the call.
The request and response types are the generated ones in `acme.wxplatform.v1`.
"""

from wxplatform_client._client import Client
from wxplatform_client._errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    WxPlatformError,
    from_rpc_error,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Client",
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
