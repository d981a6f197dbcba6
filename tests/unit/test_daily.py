"""WeChat's day turns at Beijing midnight (16:00 UTC)."""

from __future__ import annotations

import datetime as dt

from wxplatform.wechat.daily import day_number, next_reset


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text + "+00:00").timestamp()


def test_the_day_turns_at_sixteen_hundred_utc() -> None:
    assert day_number(utc("2026-11-27 15:59:59")) + 1 == day_number(utc("2026-11-27 16:00"))
    assert day_number(utc("2026-11-27 16:00")) == day_number(utc("2026-11-28 15:59:59"))


def test_the_next_reset_is_the_coming_beijing_midnight() -> None:
    assert next_reset(utc("2026-11-27 15:59:59")) == utc("2026-11-27 16:00")
    assert next_reset(utc("2026-11-27 16:00")) == utc("2026-11-28 16:00")
    assert next_reset(utc("2026-11-27 03:30")) == utc("2026-11-27 16:00")
