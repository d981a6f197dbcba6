"""The caller's deadline as a `time.monotonic()` instant, for the domain services."""

from __future__ import annotations

import time
from typing import Any

import grpc

__all__ = ["deadline_of"]

# Used when a caller sets no deadline (the published client always sets one).
DEFAULT_SECONDS = 10.0
# Kept back so an answer (or a typed error) still reaches the caller in time.
_MARGIN = 0.05


def deadline_of(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    """When the service must have answered."""
    remaining = context.time_remaining()
    seconds = DEFAULT_SECONDS if remaining is None else max(remaining - _MARGIN, 0.0)
    return time.monotonic() + seconds
