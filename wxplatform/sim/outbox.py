"""What the simulated apps sent: msgids, the sent-message log, anti-replay ids, job results.

Every accepted send is logged for tests. Template sends also get the status their
`TEMPLATESENDJOBFINISH` event will report, which the control API can force
(`failed: system failed`, `failed:user block`) for the next send or a pending job.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from wxplatform.sim.errors import ApiError

__all__ = [
    "CLIENT_MSG_ID_TTL",
    "FIRST_MSGID",
    "JOB_STATUSES",
    "Outbox",
    "ResultRule",
    "SentMessage",
]

# Past 2**31 on purpose: WeChat's msgids outgrew 32-bit integers long ago, and a
# client that stores them in an int32 must break here rather than in production.
FIRST_MSGID = 3_000_000_001
# WeChat refuses a repeated (openid, client_msg_id) for 10 minutes (§5.2).
CLIENT_MSG_ID_TTL = 600.0
# The statuses a TEMPLATESENDJOBFINISH event carries, spelled exactly as WeChat does:
# no space after the colon in the first failure, one in the second (§3.2).
JOB_STATUSES = ("success", "failed:user block", "failed: system failed")


@dataclass
class SentMessage:
    """One accepted send: which endpoint, to whom, the request body, the msgid."""

    app_id: str
    endpoint: str
    openid: str
    payload: dict[str, Any]
    msgid: int | None
    time: float
    # Template sends only: what the TEMPLATESENDJOBFINISH event reports.
    job_status: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as the control API shows it."""
        out: dict[str, Any] = {
            "app_id": self.app_id,
            "endpoint": self.endpoint,
            "openid": self.openid,
            "payload": self.payload,
            "msgid": self.msgid,
            "time": self.time,
        }
        if self.job_status is not None:
            out["job_status"] = self.job_status
        return out


@dataclass(frozen=True)
class ResultRule:
    """Force the status of the next template job of an app, optionally for one openid."""

    app_id: str
    status: str
    openid: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The rule as the control API shows it."""
        return {"app_id": self.app_id, "status": self.status, "openid": self.openid}


class Outbox:
    """The simulator's record of outbound messages."""

    def __init__(self, limit: int = 10_000) -> None:
        self._next_msgid = FIRST_MSGID
        self._sent: deque[SentMessage] = deque(maxlen=limit)
        self._by_msgid: dict[int, SentMessage] = {}
        self._client_ids: dict[tuple[str, str, str], float] = {}
        self._rules: list[ResultRule] = []

    def new_msgid(self) -> int:
        """The next msgid: increasing across every app and endpoint."""
        msgid = self._next_msgid
        self._next_msgid += 1
        return msgid

    def claim_client_msg_id(self, app_id: str, openid: str, client_msg_id: str, now: float) -> None:
        """Remember an anti-replay id; 45065 if the same user had it in the last 10 min."""
        # Insertion order is time order (the clock does not go back): expire from the front.
        ids = self._client_ids
        while ids:
            oldest = next(iter(ids))
            if now - ids[oldest] < CLIENT_MSG_ID_TTL:
                break
            del ids[oldest]
        key = (app_id, openid, client_msg_id)
        if key in ids:
            raise ApiError(45065)
        ids[key] = now

    def record(self, message: SentMessage) -> SentMessage:
        """Log an accepted send."""
        if len(self._sent) == self._sent.maxlen and self._sent[0].msgid is not None:
            self._by_msgid.pop(self._sent[0].msgid, None)
        self._sent.append(message)
        if message.msgid is not None:
            self._by_msgid[message.msgid] = message
        return message

    def find(self, msgid: int) -> SentMessage | None:
        """The logged send with this msgid."""
        return self._by_msgid.get(msgid)

    def sent(self, app_id: str | None = None) -> list[SentMessage]:
        """Logged sends, oldest first, optionally of one app."""
        return [m for m in self._sent if app_id is None or m.app_id == app_id]

    def clear(self) -> None:
        """Forget logged sends (msgids keep increasing; anti-replay ids stay)."""
        self._sent.clear()
        self._by_msgid.clear()

    # -- forced template job results -----------------------------------------------------

    def add_rule(self, rule: ResultRule) -> None:
        """Queue a forced status behind earlier rules."""
        if rule.status not in JOB_STATUSES:
            raise ValueError(f"status must be one of {', '.join(map(repr, JOB_STATUSES))}")
        self._rules.append(rule)

    def rules(self) -> list[ResultRule]:
        """Rules not used yet."""
        return list(self._rules)

    def take_rule(self, app_id: str, openid: str) -> str | None:
        """The forced status for a new template send, using up the rule; openid rules first."""
        for wanted in (openid, None):
            for rule in self._rules:
                if rule.app_id == app_id and rule.openid == wanted:
                    self._rules.remove(rule)
                    return rule.status
        return None
