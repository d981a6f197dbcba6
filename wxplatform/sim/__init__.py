"""A WeChat simulator: the HTTP API (tokens, sends, faults, a request log) and callback pushes.

Faithful enough that the edge and core can be tested against it without WeChat:
see `server.WeChatSimulator` for the API side and `push.push` for the callback side.
The send endpoints (template, customer-service, subscribe) answer from what the
simulator pushed (`audience.py`, `windows.py`) and push result events back
(`callbacks.py`).
"""

from __future__ import annotations

from wxplatform.sim.api import ApiHandler, requires_access_token
from wxplatform.sim.callbacks import CallbackRecord
from wxplatform.sim.errors import ApiError, CallbackAlreadySent, ClockNotAdjustable
from wxplatform.sim.faults import Fault
from wxplatform.sim.messages import build_push, event_message, original_id, text_message
from wxplatform.sim.push import PushResult, push
from wxplatform.sim.server import WeChatSimulator
from wxplatform.sim.tokens import Caller, TokenPolicy

__all__ = [
    "ApiError",
    "ApiHandler",
    "CallbackAlreadySent",
    "CallbackRecord",
    "Caller",
    "ClockNotAdjustable",
    "Fault",
    "PushResult",
    "TokenPolicy",
    "WeChatSimulator",
    "build_push",
    "event_message",
    "original_id",
    "push",
    "requires_access_token",
    "text_message",
]
