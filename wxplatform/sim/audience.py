"""Who each simulated app can reach: users, subscribe consent and customer-service windows.

State comes from two places: the control API (tests register users and consent
directly) and the pushes the simulator delivered to an edge (`record_push`). Only a
push the edge acknowledged counts: the platform never learned of the others. The
send endpoints read this state to answer 40003, 43004, 43019, 43101, 45015 and 45047
the way WeChat does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wxplatform.config import AppConfig
from wxplatform.sim.windows import OA_MESSAGE_TYPES, Window, WindowBook, grants_for

__all__ = ["Audience", "User", "subscribe_list"]

# Events a user triggers from inside an official account's chat: WeChat shows the
# chat (and its menu) only to followers, so seeing one means the user follows.
_IN_CHAT_EVENTS = frozenset(
    {
        "SCAN",  # §3.2: a scan by a user who already follows
        "LOCATION",
        "CLICK",
        "VIEW",
        "view_miniprogram",
        "scancode_push",
        "scancode_waitmsg",
        "pic_sysphoto",
        "pic_photo_or_album",
        "pic_weixin",
        "location_select",
    }
)


@dataclass
class User:
    """One openid of one app.

    `follows` matters for official accounts only; `blocked` is the account's blacklist
    (43019); `template_blocked` means the user refused this account's template
    messages, which WeChat reports only later, as `failed:user block`.
    """

    openid: str
    follows: bool
    blocked: bool = False
    template_blocked: bool = False

    def to_json(self) -> dict[str, Any]:
        """The user as the control API shows it."""
        return {
            "openid": self.openid,
            "follows": self.follows,
            "blocked": self.blocked,
            "template_blocked": self.template_blocked,
        }


def subscribe_list(fields: Mapping[str, Any], wrapper: str) -> list[Mapping[str, Any]]:
    """The `List` entries of a subscribe_msg_* event, however the push shaped them.

    XML pushes wrap `List` in e.g. `SubscribeMsgPopupEvent`; JSON pushes (mini programs)
    carry `List` at the top level, as an object for one template and an array for
    several (§3.2). The official change-event sample uses the popup wrapper by mistake.
    """
    holder: Any = fields
    for name in (wrapper, "SubscribeMsgPopupEvent"):
        if isinstance(fields.get(name), Mapping):
            holder = fields[name]
            break
    entries = holder.get("List") if isinstance(holder, Mapping) else None
    if isinstance(entries, Mapping):
        entries = [entries]
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, Mapping)]


class Audience:
    """Users, consent and windows of every app of one simulator."""

    def __init__(self) -> None:
        self._users: dict[str, dict[str, User]] = {}
        self._consent: dict[tuple[str, str], dict[str, int]] = {}
        self.windows = WindowBook()

    # -- users ---------------------------------------------------------------------------

    def user(self, app_id: str, openid: str) -> User | None:
        """The user, if the app knows the openid."""
        return self._users.get(app_id, {}).get(openid)

    def users(self, app_id: str) -> list[User]:
        """Every user the app knows, in the order they became known."""
        return list(self._users.get(app_id, {}).values())

    def _ensure(self, app_id: str, openid: str, *, follows: bool) -> User:
        users = self._users.setdefault(app_id, {})
        user = users.get(openid)
        if user is None:
            user = users[openid] = User(openid, follows)
        return user

    def set_user(
        self,
        app_id: str,
        openid: str,
        *,
        follows: bool | None = None,
        blocked: bool | None = None,
        template_blocked: bool | None = None,
    ) -> User:
        """Register or update a user; a new user follows unless told otherwise."""
        if not openid:
            raise ValueError("openid must not be empty")
        user = self._ensure(app_id, openid, follows=True if follows is None else follows)
        if follows is not None:
            user.follows = follows
        if blocked is not None:
            user.blocked = blocked
        if template_blocked is not None:
            user.template_blocked = template_blocked
        return user

    # -- subscribe consent ---------------------------------------------------------------

    def grant_consent(self, app_id: str, openid: str, template_id: str, count: int = 1) -> int:
        """Add `count` one-time acceptances; returns how many the user has left."""
        if not openid or not template_id:
            raise ValueError("openid and template_id must not be empty")
        if count < 1:
            raise ValueError("count must be at least 1")
        # Accepting a popup is an interaction with the app: WeChat knows the openid.
        self._ensure(app_id, openid, follows=False)
        held = self._consent.setdefault((app_id, openid), {})
        held[template_id] = held.get(template_id, 0) + count
        return held[template_id]

    def take_consent(self, app_id: str, openid: str, template_id: str) -> bool:
        """Use one acceptance; False if none is left (WeChat's 43101)."""
        held = self._consent.get((app_id, openid), {})
        if held.get(template_id, 0) < 1:
            return False
        held[template_id] -= 1
        return True

    def consent(self, app_id: str, openid: str) -> dict[str, int]:
        """Acceptances left per template id."""
        return dict(self._consent.get((app_id, openid), {}))

    # -- windows -------------------------------------------------------------------------

    def user_windows(self, app_id: str, openid: str) -> list[Window]:
        """A user's customer-service windows, soonest expiry first."""
        return self.windows.windows(app_id, openid)

    # -- pushes --------------------------------------------------------------------------

    def record_push(self, app: AppConfig, fields: Mapping[str, Any], now: float) -> None:
        """Learn from a push the edge acknowledged: who the user is and what they did."""
        openid = fields.get("FromUserName")
        if not isinstance(openid, str) or not openid:
            return
        app_id = app.app_id
        user = self._ensure(app_id, openid, follows=False)
        msg_type = fields.get("MsgType")
        event = fields.get("Event") if msg_type == "event" else None
        if app.kind == "official_account":
            if event == "subscribe" or event in _IN_CHAT_EVENTS or msg_type in OA_MESSAGE_TYPES:
                user.follows = True
            elif event == "unsubscribe":
                user.follows = False
                # "subscription is canceled" ends every window (45015).
                self.windows.close_all(app_id, openid)
        for grant in grants_for(app.kind, fields):
            self.windows.open(app_id, openid, grant, now)
        if event == "subscribe_msg_popup_event":
            for entry in subscribe_list(fields, "SubscribeMsgPopupEvent"):
                template_id = entry.get("TemplateId")
                # Each "accept" on a one-time template allows exactly one send (§5.4).
                if entry.get("SubscribeStatusString") == "accept" and isinstance(template_id, str):
                    self.grant_consent(app_id, openid, template_id)
        elif event == "subscribe_msg_change_event":
            for entry in subscribe_list(fields, "SubscribeMsgChangeEvent"):
                template_id = entry.get("TemplateId")
                # Turning a template off in the notification settings revokes it.
                if entry.get("SubscribeStatusString") == "reject" and isinstance(template_id, str):
                    self._consent.get((app_id, openid), {}).pop(template_id, None)
