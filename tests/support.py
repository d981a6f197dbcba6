"""Test helpers: settings for throwaway apps and callers, and running core/edge on port 0.

Every test gets apps with unique ids, so tests never share Redis keys and the suite can
run against a shared Redis (`WXP_TEST_REDIS_URL`) without flushing it.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis
from msgspec.structs import replace
from prometheus_client import REGISTRY
from wxplatform_client import from_rpc_error

from edge.app import EdgeServer, start_edge
from wxplatform.clock import Clock, SystemClock
from wxplatform.config import (
    AppConfig,
    Secret,
    Settings,
    WeChatConfig,
    hash_credential,
    parse_settings,
)
from wxplatform.core.server import CoreServer, create_server
from wxplatform.sim import WeChatSimulator

EDGE_CREDENTIAL = "edge-credential-" + secrets.token_hex(8)
TEAM_CREDENTIAL = "team-credential-" + secrets.token_hex(8)
OTHER_CREDENTIAL = "other-credential-" + secrets.token_hex(8)
# Every secret the suite configured or was handed (AppSecrets, AES and vault keys,
# session tokens, session keys, OAuth tokens): none may be in Redis in the clear, which
# the session's Redis fixture checks when the suite ends.
SECRETS: set[str] = set()


class _SessionTokens(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Remembers the session tokens core hands out (in `SECRETS`)."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        call = await continuation(client_call_details, request)
        with contextlib.suppress(grpc.aio.AioRpcError):
            response = await call
            if token := getattr(response, "session_token", ""):
                SECRETS.add(token)
        return call


# What the edge calls: deliveries, and the two halves of a web login.
EDGE_RPCS = ["IngressService/*", "OAuthService/BuildAuthorizeUrl", "OAuthService/ExchangeCode"]
VAULT_KEY = "dGVzdC12YXVsdC1rZXktb2YtMzItYnl0ZXMtLS0tLS0="  # 32 bytes, base64
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # a published sample key


def free_port() -> int:
    """A loopback port free right now (for processes that need a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_app_id(prefix: str = "wxt") -> str:
    """A unique app id for one test."""
    return f"{prefix}{secrets.token_hex(7)}"


def app_table(app_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid `[[apps]]` table for an official account, with overrides."""
    table: dict[str, Any] = {
        "app_id": app_id,
        "kind": "official_account",
        "encryption": "plaintext",
        "app_secret": "secret-" + secrets.token_hex(8),
        "token": "tok" + secrets.token_hex(8),
        "auto_reply": [
            {
                "match": "exact",
                "keyword": "hello",
                "reply": {"type": "text", "content": "hi there"},
            },
        ],
        "default_reply": {"type": "text", "content": "default answer"},
    }
    if overrides.get("encryption", "plaintext") != "plaintext":
        table["encoding_aes_key"] = AES_KEY
    table.update(overrides)
    return {k: v for k, v in table.items() if v is not None}


def make_settings(
    *apps: dict[str, Any], team_apps: list[str] | None = None, **top: Any
) -> Settings:
    """Settings with the given app tables and three callers.

    `edge` may call only Ingress; `team` may call everything for `team_apps` (default:
    all apps); `other` may call everything, but only for an app that does not exist.
    """
    app_ids = [a["app_id"] for a in apps]
    data: dict[str, Any] = {
        "apps": list(apps),
        "callers": [
            {
                "name": "edge",
                "token_sha256": hash_credential(EDGE_CREDENTIAL),
                "allow": [{"apps": ["*"], "rpcs": EDGE_RPCS}],
            },
            {
                "name": "team",
                "token_sha256": hash_credential(TEAM_CREDENTIAL),
                "allow": [{"apps": team_apps or app_ids or ["*"], "rpcs": ["*"]}],
            },
            {
                "name": "other",
                "token_sha256": hash_credential(OTHER_CREDENTIAL),
                "allow": [{"apps": app_ids[:0] or ["*"], "rpcs": ["TokenService/*"]}],
            },
        ],
        "vault": {"keys": [{"id": "test1", "key": VAULT_KEY}]},
        **top,
    }
    settings = parse_settings(data)
    for app in settings.apps.values():
        SECRETS.add(app.app_secret.reveal())
        SECRETS.update(k.reveal() for k in (app.encoding_aes_key,) if k is not None)
    SECRETS.update(key.key.reveal() for key in settings.vault.keys)
    return settings


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a call that must fail fails with (the test fails if it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def bearer(credential: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying a caller credential."""
    return (("authorization", f"Bearer {credential}"),)


@dataclass
class Stack:
    """core (+ optionally edge) running on port 0 for one test."""

    settings: Settings
    core: CoreServer
    channel: grpc.aio.Channel
    edge: EdgeServer | None = None

    @property
    def edge_url(self) -> str:
        assert self.edge is not None
        return f"http://127.0.0.1:{self.edge.port}"


@asynccontextmanager
async def running_simulator(
    settings: Settings, clock: Clock | None = None
) -> AsyncIterator[tuple[WeChatSimulator, Settings]]:
    """The WeChat simulator for `settings`' apps, and settings pointing core at it."""
    sim = WeChatSimulator(settings.apps, clock or SystemClock())
    await sim.start()
    try:
        yield (
            sim,
            replace(settings, wechat=WeChatConfig(api_base=sim.base_url, open_base=sim.base_url)),
        )
    finally:
        SECRETS.update(sim.issued_secrets())
        await sim.stop()


@asynccontextmanager
async def running_stack(
    settings: Settings,
    client: redis.Redis,
    *,
    with_edge: bool = False,
    clock: Clock | None = None,
    **edge_overrides: Any,
) -> AsyncIterator[Stack]:
    """Start core on port 0 (and the edge pointed at it), stop both afterwards."""
    core = await create_server(
        settings, client, listen="127.0.0.1:0", serve_metrics=False, clock=clock
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{core.port}", interceptors=[_SessionTokens()])
    edge = None
    try:
        if with_edge:
            edge_overrides.setdefault("spool_path", str(Path(tempfile.mkdtemp()) / "spool.sqlite3"))
            edge_settings = replace(
                settings,
                edge=replace(
                    settings.edge,
                    core_target=f"127.0.0.1:{core.port}",
                    core_credential=Secret(EDGE_CREDENTIAL),
                    **edge_overrides,
                ),
            )
            edge = await start_edge(edge_settings, listen="127.0.0.1:0", clock=clock)
        yield Stack(settings, core, channel, edge)
    finally:
        if edge is not None:
            await edge.stop(grace_seconds=1)
        await channel.close()
        await core.stop()


@asynccontextmanager
async def simulated_stack(
    settings: Settings, client: redis.Redis, *, clock: Clock | None = None, with_edge: bool = False
) -> AsyncIterator[tuple[WeChatSimulator, Stack]]:
    """The simulator as WeChat, and core (and the edge) pointed at it."""
    async with (
        running_simulator(settings, clock) as (sim, simulated),
        running_stack(simulated, client, with_edge=with_edge, clock=clock) as stack,
    ):
        yield sim, stack


def app_by_prefix(stack: Stack, prefix: str) -> AppConfig:
    """The stack's app whose id starts with `prefix` (tests name apps by role)."""
    return next(a for a in stack.settings.apps.values() if a.app_id.startswith(prefix))


__all__ = [
    "AES_KEY",
    "EDGE_CREDENTIAL",
    "OTHER_CREDENTIAL",
    "TEAM_CREDENTIAL",
    "Stack",
    "app_by_prefix",
    "app_table",
    "bearer",
    "error_info",
    "make_settings",
    "new_app_id",
    "running_simulator",
    "running_stack",
    "sample",
]


def sample(name: str, **labels: str) -> float:
    """The current value of a metric of this process (0 before its first increment)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The `google.rpc.RetryInfo` delay (seconds) a failed call carries, if any."""
    return from_rpc_error(error).retry_delay


def error_info(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The `google.rpc.ErrorInfo` (reason, metadata) carried by a failed call."""
    typed = from_rpc_error(error)
    assert typed.reason, "no ErrorInfo in the status details"
    assert typed.domain == "wxplatform"
    return typed.reason, typed.metadata
