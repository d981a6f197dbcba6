"""WeChat's errcodes as data: what each means for wxplatform and whether to retry.

docs/wechat.md §6. `retry` is one of:

- `backoff`: transient on WeChat's side; retry with jittered backoff inside the deadline.
- `token`: the access token was rejected; invalidate it (only if still current) and
  retry once with the new one.
- `later`: a rate limit; the caller may retry after a delay (reported with RetryInfo).
- `reset`: a daily quota; the caller may retry after WeChat's daily reset.
- `never`: a policy or input error; retrying cannot help.

`later`, `reset` and `token` refuse the call before WeChat considered what it asked
for (nothing was sent or changed); only `never` is a verdict on the request itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["DAILY_QUOTA", "DUPLICATE_CLIENT_MSG_ID", "Errcode", "Retry", "classify", "split_rid"]

Retry = Literal["backoff", "token", "later", "reset", "never"]


@dataclass(frozen=True)
class Errcode:
    """How wxplatform treats one errcode."""

    reason: str
    retry: Retry

    @property
    def judges_request(self) -> bool:
        """Whether WeChat refused what the call asked for, not the call itself."""
        return self.retry == "never"


DAILY_QUOTA = 45009  # the API's daily call quota is used up
DUPLICATE_CLIENT_MSG_ID = 45065  # a send with this client_msg_id went out before: a success

_TABLE: dict[int, Errcode] = {
    -1: Errcode("WECHAT_UNAVAILABLE", "backoff"),
    40001: Errcode("TOKEN_UNAVAILABLE", "token"),  # on business APIs; see `classify`
    40014: Errcode("TOKEN_UNAVAILABLE", "token"),
    42001: Errcode("TOKEN_UNAVAILABLE", "token"),
    40002: Errcode("WECHAT_ERROR", "never"),
    40003: Errcode("INVALID_OPENID", "never"),
    40013: Errcode("APP_CREDENTIALS_REJECTED", "never"),
    40125: Errcode("APP_CREDENTIALS_REJECTED", "never"),
    40164: Errcode("APP_CREDENTIALS_REJECTED", "never"),
    40029: Errcode("AUTH_CODE_INVALID", "never"),
    40163: Errcode("AUTH_CODE_INVALID", "never"),
    42003: Errcode("AUTH_CODE_INVALID", "never"),
    40030: Errcode("USER_AUTHORIZATION_REQUIRED", "never"),
    42002: Errcode("USER_AUTHORIZATION_REQUIRED", "never"),
    40226: Errcode("USER_LOGIN_BLOCKED", "never"),
    40037: Errcode("INVALID_TEMPLATE", "never"),
    43004: Errcode("USER_NOT_SUBSCRIBED", "never"),
    43019: Errcode("USER_BLOCKED", "never"),
    43101: Errcode("SUBSCRIBE_CONSENT_MISSING", "never"),
    45008: Errcode("TOO_MANY_ARTICLES", "never"),
    45009: Errcode("WECHAT_DAILY_QUOTA_EXHAUSTED", "reset"),
    45011: Errcode("WECHAT_RATE_LIMITED", "later"),
    45015: Errcode("WINDOW_CLOSED", "never"),
    45047: Errcode("WINDOW_QUOTA_EXHAUSTED", "never"),
    47003: Errcode("INVALID_TEMPLATE_DATA", "never"),
    48001: Errcode("WECHAT_API_UNAUTHORIZED", "never"),
    48004: Errcode("WECHAT_API_UNAUTHORIZED", "never"),
}

_OTHER = Errcode("WECHAT_ERROR", "never")
# On the token endpoints 40001 means a wrong AppSecret, not a stale token.
_BAD_SECRET = Errcode("APP_CREDENTIALS_REJECTED", "never")

_RID = re.compile(r"\s*,?\s*rid:\s*([0-9a-zA-Z-]+)\s*$")


def classify(errcode: int, *, token_endpoint: bool = False) -> Errcode:
    """The treatment of `errcode` (anything unknown: `WECHAT_ERROR`, never retried)."""
    if token_endpoint and errcode == 40001:
        return _BAD_SECRET
    return _TABLE.get(errcode, _OTHER)


def split_rid(errmsg: str) -> tuple[str, str]:
    """`"invalid openid rid: 64f0…"` → (`"invalid openid"`, `"64f0…"`)."""
    match = _RID.search(errmsg)
    if match is None:
        return errmsg, ""
    return errmsg[: match.start()], match.group(1)
