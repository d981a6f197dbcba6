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
    ├── StoreUnavailable           STORE_UNAVAILABLE
    ├── IdempotencyKeyReused       IDEMPOTENCY_KEY_REUSED
    ├── RateLimited                RATE_LIMITED (retry_after)
    ├── DeliveryNotFound           DELIVERY_NOT_FOUND
    ├── SessionNotFound            SESSION_NOT_FOUND (unknown, expired and revoked alike)
    ├── UserDataInvalid            USER_DATA_INVALID
    ├── OAuthStateInvalid          OAUTH_STATE_INVALID
    ├── ReturnUrlNotAllowed        RETURN_URL_NOT_ALLOWED
    ├── UserAuthorizationRequired  USER_AUTHORIZATION_REQUIRED
    ├── SessionEventsExpired       SESSION_EVENTS_EXPIRED
    ├── WindowClosed               WINDOW_CLOSED
    ├── WindowQuotaExhausted       WINDOW_QUOTA_EXHAUSTED
    ├── TokenRefreshLimited        TOKEN_REFRESH_LIMITED
    ├── TokenUnavailable           TOKEN_UNAVAILABLE
    ├── TokenRejected              TOKEN_UNAVAILABLE: the token and its replacement refused
    ├── WeChatRefused              the errcode's reason (INVALID_OPENID, …), errcode/errmsg/rid
    │   └── CredentialsRefused     a token endpoint's refusal (APP_CREDENTIALS_REJECTED, …)
    ├── WeChatUnavailable          WECHAT_UNAVAILABLE: -1, 5xx, unreachable, retries spent
    ├── WeChatOutcomeUnknown       WECHAT_OUTCOME_UNKNOWN: sent, but no answer came
    └── WeChatBadResponse          WECHAT_BAD_RESPONSE: not WeChat's JSON API

Messages must never contain secrets (AppSecrets, AES keys, tokens, credentials).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wxplatform.wechat.errcodes import Retry

__all__ = [
    "AppKindMismatch",
    "AppNotFound",
    "CallerNotAuthorized",
    "CallerUnauthenticated",
    "CredentialsRefused",
    "DeliveryNotFound",
    "FieldViolation",
    "IdempotencyKeyReused",
    "IdempotentRequestInProgress",
    "InvalidRequest",
    "NotImplementedYet",
    "OAuthStateInvalid",
    "RateLimited",
    "ReplayedRequest",
    "ReturnUrlNotAllowed",
    "SessionEventsExpired",
    "SessionNotFound",
    "ShuttingDown",
    "StoreUnavailable",
    "TokenRefreshLimited",
    "TokenRejected",
    "TokenUnavailable",
    "UserAuthorizationRequired",
    "UserDataInvalid",
    "WeChatBadResponse",
    "WeChatOutcomeUnknown",
    "WeChatRefused",
    "WeChatUnavailable",
    "WindowClosed",
    "WindowQuotaExhausted",
    "WxPlatformError",
    "quoted",
]


def quoted(value: str, limit: int = 64) -> str:
    """`value` for an error message: quoted, and cut short (a request may carry kilobytes,
    and the message travels back in the call's trailers)."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"


class WxPlatformError(Exception):
    """Base of every error wxplatform reports to a caller."""

    reason = "UNSPECIFIED"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        # Seconds after which a retry makes sense (sent as google.rpc.RetryInfo).
        self.retry_after = retry_after


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
        shown = quoted(app_id)
        super().__init__(f"app {shown} is not configured", metadata={"app_id": app_id[:64]})


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


class IdempotencyKeyReused(WxPlatformError):
    """The idempotency key was used before with a different request."""

    reason = "IDEMPOTENCY_KEY_REUSED"


class RateLimited(WxPlatformError):
    """wxplatform's own per-app rate limit is exhausted."""

    reason = "RATE_LIMITED"


class DeliveryNotFound(WxPlatformError):
    """No delivery record with this id (or it expired)."""

    reason = "DELIVERY_NOT_FOUND"


class OAuthStateInvalid(WxPlatformError):
    """A web login's `state` is unknown, expired, used, forged or another browser's."""

    reason = "OAUTH_STATE_INVALID"


class ReturnUrlNotAllowed(WxPlatformError):
    """The return URL is not on the app's allow-list."""

    reason = "RETURN_URL_NOT_ALLOWED"


class UserAuthorizationRequired(WxPlatformError):
    """No usable user-level OAuth token or profile: the user must authorize again."""

    reason = "USER_AUTHORIZATION_REQUIRED"


class UserDataInvalid(WxPlatformError):
    """Encrypted user data does not open with the user's session key, or names another app."""

    reason = "USER_DATA_INVALID"


class SessionNotFound(WxPlatformError):
    """The session token is unknown, revoked or expired (the three look the same)."""

    reason = "SESSION_NOT_FOUND"


class SessionEventsExpired(WxPlatformError):
    """A watch resumed after an event older than the session events still kept."""

    reason = "SESSION_EVENTS_EXPIRED"


class WindowClosed(WxPlatformError):
    """No customer-service window is open for this user."""

    reason = "WINDOW_CLOSED"


class WindowQuotaExhausted(WxPlatformError):
    """The user's customer-service windows are open but their quota is used up."""

    reason = "WINDOW_QUOTA_EXHAUSTED"


class TokenRefreshLimited(WxPlatformError):
    """A forced token refresh would break WeChat's limits (30 s apart, 20 a day)."""

    reason = "TOKEN_REFRESH_LIMITED"


class WeChatRefused(WxPlatformError):
    """WeChat answered with an errcode, classified once where the answer was parsed.

    `reason` and `retry` come from the errcode table (`wxplatform.wechat.errcodes`).
    `after_possible_send`: an earlier attempt of the same call was retried after it may
    have reached WeChat, so this refusal says nothing about that attempt.
    """

    def __init__(
        self,
        reason: str,
        errcode: int,
        errmsg: str,
        rid: str,
        *,
        retry: Retry = "never",
        retry_after: float | None = None,
        after_possible_send: bool = False,
    ) -> None:
        super().__init__(
            f"WeChat refused the call: {errcode} {errmsg}",
            metadata={"errcode": str(errcode), "errmsg": errmsg, "rid": rid},
            retry_after=retry_after,
        )
        self.reason = reason
        self.errcode = errcode
        self.errmsg = errmsg
        self.rid = rid
        self.retry: Retry = retry
        self.after_possible_send = after_possible_send

    @property
    def judges_request(self) -> bool:
        """Whether WeChat refused what the call asked for, not the call itself."""
        return self.retry == "never"


class CredentialsRefused(WeChatRefused):
    """A token endpoint refused the app's credentials (or its quota for them is spent):
    no access token was issued, so no call that needed one was made."""


class TokenRejected(WxPlatformError):
    """WeChat rejected the app's access token and then its replacement as well."""

    reason = "TOKEN_UNAVAILABLE"


class WeChatUnavailable(WxPlatformError):
    """WeChat could not be reached, or kept failing transiently until the deadline."""

    reason = "WECHAT_UNAVAILABLE"


class WeChatOutcomeUnknown(WxPlatformError):
    """The request reached WeChat but no answer came: it may or may not have acted."""

    reason = "WECHAT_OUTCOME_UNKNOWN"


class WeChatBadResponse(WxPlatformError):
    """WeChat answered with something that is not its JSON API."""

    reason = "WECHAT_BAD_RESPONSE"


class TokenUnavailable(WxPlatformError):
    """The app's access token (or ticket) could not be obtained in time."""

    reason = "TOKEN_UNAVAILABLE"
