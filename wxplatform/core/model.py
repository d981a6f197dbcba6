"""Value types that services and adapters share: what is stored, claimed and reported.

Below the adapters in the layering: a service builds these and a store persists them,
and neither has to import the other's module to agree on their shape.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Acceptance",
    "Accepted",
    "Begun",
    "Claim",
    "ClaimState",
    "ReplayCheck",
    "SendResult",
    "SessionChange",
    "StoredCredential",
    "StoredEvent",
    "StoredSession",
    "WindowGrant",
]


# --- ingress -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayCheck:
    """The signature parameters and body digest of a push."""

    timestamp: int
    nonce: str
    body_sha256: str


@dataclass(frozen=True)
class WindowGrant:
    """A customer-service window an interaction opens: `quota` sends within `seconds`."""

    kind: str
    quota: int
    seconds: int


@dataclass(frozen=True)
class Accepted:
    """What acceptance appends: the message and its filter fields, and the windows it opens."""

    message: bytes
    msg_type: str
    event: str
    openid: str
    windows: Sequence[WindowGrant]
    now_ms: int
    close_windows: bool = False  # the user unfollowed: no window stays open


@dataclass(frozen=True)
class Acceptance:
    """`new` for a first delivery (then `event_id` is set); the reply to give either way."""

    new: bool
    reply: bytes
    event_id: str = ""


# --- events and credentials ----------------------------------------------------------


@dataclass(frozen=True)
class StoredEvent:
    """One entry of an app's stream as delivered to a group."""

    event_id: str
    message: bytes
    msg_type: str
    event: str
    delivery_count: int


@dataclass(frozen=True)
class StoredCredential:
    """A credential as stored: its value, expiry and writer's fence."""

    value: str = field(repr=False)
    expires_ms: int
    fence: int


# --- sends ---------------------------------------------------------------------------


class ClaimState(enum.Enum):
    """Where a send's idempotency claim stands (the verdict of `begin` or `peek`)."""

    GO = "go"  # claimed: send now
    DONE = "done"  # an earlier request with this key finished
    PENDING = "pending"  # an earlier request with this key is still in flight
    FREE = "free"  # nobody holds the key (`peek` only)
    REUSED = "reused"  # the key was used with a different request
    CIRCUIT = "circuit"  # the API's daily-quota circuit is open
    RATE = "rate"  # over the app's own send rate
    CLOSED = "closed"  # no customer-service window is open for the user
    EXHAUSTED = "exhausted"  # the user's open windows have no quota left


@dataclass(frozen=True)
class Claim:
    """One send's hold on its idempotency key, as the message store made it.

    `window_openid` is the user whose interaction window the send draws on (customer
    service only); `window` the kind of window a unit was taken from, once taken.
    """

    app_id: str
    idempotency_key: str  # the caller's
    key: str  # the Redis key that holds it
    digest: str  # of the request: the same key with another request is a reuse
    delivery_id: str
    window_openid: str = ""
    window: str = ""


@dataclass(frozen=True)
class Begun:
    """The verdict on a claim: `state`, the claim (with its window unit when GO), and
    for DONE/PENDING the delivery id of the earlier request; `wait_ms` tells how long a
    circuit or the rate limit still holds."""

    state: ClaimState
    claim: Claim
    delivery_id: str = ""
    wait_ms: int = 0


@dataclass(frozen=True)
class SendResult:
    """What a result event reports about a send.

    `status` is a `DeliveryStatus` number; `errcode` and `errmsg` are WeChat's.
    """

    status: int
    errcode: int
    errmsg: str

    def dump(self) -> str:
        """The parked form."""
        return json.dumps([self.status, self.errcode, self.errmsg], ensure_ascii=False)

    @classmethod
    def load(cls, value: Any) -> SendResult:
        """The parked form back."""
        status, errcode, errmsg = json.loads(value)
        return cls(int(status), int(errcode), str(errmsg))


# --- sessions ------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSession:
    """A platform session as stored (keyed by its token's hash; times in ms)."""

    session_id: str
    openid: str
    unionid: str
    attributes: dict[str, str]
    created_ms: int
    expires_ms: int  # unless refreshed
    absolute_ms: int  # no refresh goes beyond
    idle_ms: int  # what a refresh extends it by


@dataclass(frozen=True)
class SessionChange:
    """One entry of an app's session event stream."""

    event_id: str
    revoked: bool  # else created
    session_id: str
    openid: str
    at_ms: int
