"""JS-SDK tickets of the simulated WeChat: `/cgi-bin/ticket/getticket`.

WeChat hands out the same ticket while it is valid (7200 s) and counts every call
against a low daily quota, which is why a platform must cache tickets centrally.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.sim.errors import ApiError

__all__ = ["TicketStore"]

LIFETIME = 7200
TYPES = ("jsapi", "wx_card")


@dataclass
class _Ticket:
    value: str = field(repr=False)
    expires_at: float


class TicketStore:
    """Per app and ticket type: the current ticket and how often it was asked for."""

    def __init__(self, apps: Mapping[str, AppConfig], clock: Clock) -> None:
        self._apps = apps
        self._clock = clock
        self._tickets: dict[tuple[str, str], _Ticket] = {}
        self.calls: dict[str, int] = {}

    def get(self, app_id: str, kind: str) -> tuple[str, int]:
        """The ticket and its remaining lifetime; a new one once the old expired."""
        if kind not in TYPES:
            raise ApiError(40097, "invalid args")
        self.calls[app_id] = self.calls.get(app_id, 0) + 1
        now = self._clock.now()
        ticket = self._tickets.get((app_id, kind))
        if ticket is None or ticket.expires_at <= now:
            ticket = _Ticket(secrets.token_urlsafe(64), now + LIFETIME)
            self._tickets[(app_id, kind)] = ticket
        return ticket.value, int(ticket.expires_at - now)

    def stats(self) -> dict[str, Any]:
        """Ticket calls per app."""
        return {app_id: {"ticket_calls": self.calls.get(app_id, 0)} for app_id in self._apps}
