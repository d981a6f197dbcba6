"""Fixtures for the simulator tests: apps in every mode, a manual clock, a running sim."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from wxplatform.clock import ManualClock
from wxplatform.config import AppConfig
from wxplatform.sim import WeChatSimulator

from .sim_support import (
    COMPAT,
    DOC_MP,
    KEY_ALPHA,
    KEY_WECOM,
    KEY_ZERO,
    PLAIN,
    SAFE,
    START,
    Receiver,
    make_app,
    running_receiver,
)


@pytest.fixture
def apps() -> dict[str, AppConfig]:
    """One app per encryption mode, plus the MP from the official push guide."""
    return {
        PLAIN: make_app(PLAIN),
        COMPAT: make_app(COMPAT, encryption="compatible", key=KEY_ALPHA),
        SAFE: make_app(SAFE, encryption="safe", key=KEY_WECOM, previous_key=KEY_ALPHA),
        DOC_MP: make_app(
            DOC_MP,
            kind="mini_program",
            encryption="safe",
            data_format="json",
            token="AAAAA",
            key=KEY_ZERO,
        ),
    }


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock 23 hours before a Beijing midnight."""
    return ManualClock(START)


@pytest.fixture
async def sim(apps: dict[str, AppConfig], clock: ManualClock) -> AsyncIterator[WeChatSimulator]:
    """A running simulator on a free port."""
    async with WeChatSimulator(apps, clock) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: WeChatSimulator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the simulator."""
    async with httpx.AsyncClient(base_url=sim.base_url, trust_env=False, timeout=10) as c:
        yield c


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A stand-in edge on a free port that records what it is pushed."""
    async with running_receiver() as state:
        yield state
