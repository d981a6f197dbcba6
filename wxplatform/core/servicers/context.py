"""Per-call facts established by the interceptors, read by servicers."""

from __future__ import annotations

import contextvars
from collections.abc import Callable

__all__ = ["current_caller", "stream_authorizer"]

# The authenticated caller's configured name; set by the auth interceptor for every call.
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("current_caller", default="")

# On a bidirectional stream the requests carry their own `app_id`s, so the auth
# interceptor authenticates the caller when the stream opens and leaves this check for
# the servicer to run per request: it raises `CallerNotAuthorized` unless the caller may
# call the stream's RPC for the given app.
stream_authorizer: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "stream_authorizer", default=None
)
