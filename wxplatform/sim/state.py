"""Everything a running simulator knows, shared by its API and control handlers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.sim.faults import FaultBook
from wxplatform.sim.journal import RequestLog
from wxplatform.sim.tickets import TicketStore
from wxplatform.sim.tokens import TokenStore

__all__ = ["SimState"]


@dataclass
class SimState:
    """Apps, clock, token state, active faults and the request log of one simulator."""

    apps: Mapping[str, AppConfig]
    clock: Clock
    tokens: TokenStore
    tickets: TicketStore
    faults: FaultBook = field(default_factory=FaultBook)
    requests: RequestLog = field(default_factory=RequestLog)
