"""Everything a running simulator knows, shared by its API and control handlers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.sim.audience import Audience
from wxplatform.sim.callbacks import CallbackQueue
from wxplatform.sim.faults import FaultBook
from wxplatform.sim.journal import RequestLog
from wxplatform.sim.logins import LoginBook
from wxplatform.sim.oauth import OAuthBook
from wxplatform.sim.outbox import Outbox
from wxplatform.sim.templates import TemplateBook
from wxplatform.sim.tickets import TicketStore
from wxplatform.sim.tokens import TokenStore

__all__ = ["SimState"]


@dataclass
class SimState:
    """Apps, clock, tokens, faults, the request log, and the messaging side of one simulator.

    `audience` holds users, consent and windows; `templates` the registered templates;
    `outbox` what was sent; `callbacks` the result events pushed back to edges; `logins`
    mini-program login and phone codes and users' session keys; `oauth` web
    authorization codes, user tokens and profiles.
    """

    apps: Mapping[str, AppConfig]
    clock: Clock
    tokens: TokenStore
    tickets: TicketStore
    callbacks: CallbackQueue
    logins: LoginBook
    oauth: OAuthBook
    faults: FaultBook = field(default_factory=FaultBook)
    requests: RequestLog = field(default_factory=RequestLog)
    audience: Audience = field(default_factory=Audience)
    templates: TemplateBook = field(default_factory=TemplateBook)
    outbox: Outbox = field(default_factory=Outbox)
