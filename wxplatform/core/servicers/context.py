"""Per-call facts established by the interceptors, read by servicers."""

from __future__ import annotations

import contextvars

__all__ = ["current_caller"]

# The authenticated caller's configured name; set by the auth interceptor for every call.
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("current_caller", default="")
