"""WeChat's day: daily quotas (API calls, forced token refreshes) reset at Beijing midnight."""

from __future__ import annotations

__all__ = ["day_number", "next_reset"]

_BEIJING = 8 * 3600  # UTC+8, no daylight saving
_DAY = 86400


def day_number(now: float) -> int:
    """Which Beijing day the Unix time `now` falls on (days since 1970-01-01 there)."""
    return int((now + _BEIJING) // _DAY)


def next_reset(now: float) -> float:
    """The Unix time of the next Beijing midnight after `now`."""
    return float((day_number(now) + 1) * _DAY - _BEIJING)
