"""Customer-service windows: which pushed interactions allow how many sends, for how long.

WeChat lets an app send customer-service messages only after certain user actions,
with a quota per kind of action (docs/wechat.md §5.3). The simulator opens windows from
the pushes it delivered, on its own clock. A newer interaction of the same kind opens
a fresh window of that kind with its full quota; windows of different kinds coexist,
and a send uses the one that expires soonest and still has quota.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wxplatform.config import AppKind
from wxplatform.sim.errors import ApiError

__all__ = [
    "ENTER_SESSION",
    "FOLLOW",
    "MENU_CLICK",
    "SCAN",
    "USER_MESSAGE",
    "Grant",
    "Window",
    "WindowBook",
    "grants_for",
]

_MINUTE = 60.0
_TWO_DAYS = 48 * 3600.0


@dataclass(frozen=True)
class Grant:
    """What one kind of interaction allows: `quota` sends within `seconds`."""

    kind: str
    quota: int
    seconds: float


USER_MESSAGE = Grant("message", 5, _TWO_DAYS)
MENU_CLICK = Grant("menu", 3, _MINUTE)
FOLLOW = Grant("follow", 3, _MINUTE)
SCAN = Grant("scan", 3, _MINUTE)
ENTER_SESSION = Grant("session", 2, _MINUTE)  # mini programs: user_enter_tempsession

# Only these menu types count: a VIEW (link) click opens no window (§5.3).
_MENU_EVENTS = frozenset({"CLICK", "scancode_push", "scancode_waitmsg"})
# Inbound user messages per kind of app (§3.1, §3.3); other MsgTypes are not pushed.
OA_MESSAGE_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link"})
MP_MESSAGE_TYPES = frozenset({"text", "image", "miniprogrampage"})


def grants_for(kind: AppKind, fields: Mapping[str, Any]) -> list[Grant]:
    """The windows a pushed message or event opens for its sender."""
    msg_type = fields.get("MsgType")
    if msg_type != "event":
        types = OA_MESSAGE_TYPES if kind == "official_account" else MP_MESSAGE_TYPES
        return [USER_MESSAGE] if msg_type in types else []
    event = fields.get("Event")
    if kind == "mini_program":
        return [ENTER_SESSION] if event == "user_enter_tempsession" else []
    if event in _MENU_EVENTS:
        return [MENU_CLICK]
    if event == "subscribe":
        # A first follow through a parametric QR code is also a scan (§3.2: only then
        # does EventKey carry the qrscene_ prefix).
        key = fields.get("EventKey")
        scanned = isinstance(key, str) and key.startswith("qrscene_")
        return [FOLLOW, SCAN] if scanned else [FOLLOW]
    if event == "SCAN":
        return [SCAN]
    return []


@dataclass
class Window:
    """One open (or lapsed) window and how much of its quota is used."""

    kind: str
    quota: int
    used: int
    opened_at: float
    expires_at: float

    def is_open(self, now: float) -> bool:
        """Whether the window still allows sends at `now` (quota aside)."""
        return now < self.expires_at

    @property
    def remaining(self) -> int:
        """Sends left in this window."""
        return self.quota - self.used

    def to_json(self, now: float) -> dict[str, Any]:
        """The window as the control API shows it."""
        return {
            "kind": self.kind,
            "quota": self.quota,
            "used": self.used,
            "remaining": self.remaining,
            "opened_at": self.opened_at,
            "expires_at": self.expires_at,
            "open": self.is_open(now),
        }


class WindowBook:
    """Windows per (app, openid)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], dict[str, Window]] = {}

    def open(self, app_id: str, openid: str, grant: Grant, now: float) -> Window:
        """Open a fresh window of `grant`'s kind, replacing an older one of that kind."""
        window = Window(grant.kind, grant.quota, 0, now, now + grant.seconds)
        self._windows.setdefault((app_id, openid), {})[grant.kind] = window
        return window

    def close_all(self, app_id: str, openid: str) -> None:
        """Forget every window of a user (they unfollowed)."""
        self._windows.pop((app_id, openid), None)

    def windows(self, app_id: str, openid: str) -> list[Window]:
        """A user's windows, soonest expiry first (lapsed ones included)."""
        return sorted(self._windows.get((app_id, openid), {}).values(), key=lambda w: w.expires_at)

    def consume(self, app_id: str, openid: str, now: float) -> Window:
        """Use one send: 45015 with no open window, 45047 when all are used up."""
        live = [w for w in self.windows(app_id, openid) if w.is_open(now)]
        if not live:
            raise ApiError(45015)
        usable = [w for w in live if w.remaining > 0]
        if not usable:
            raise ApiError(45047)
        window = usable[0]  # sorted: the one expiring soonest
        window.used += 1
        return window
