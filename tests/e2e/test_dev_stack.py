"""`wxplatform dev` as a user runs it: ready, verify, push, gRPC checks, clean stop.

This is the issue's "done when" list, run against real processes: the CLI in a
subprocess, a real redis-server child, the simulator, core and edge.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from acme.wxplatform.v1 import token_service_pb2, token_service_pb2_grpc
from tests.support import free_port
from wxplatform.devconfig import PLAIN_APP, SAFE_APP, DevPorts, render_dev_config
from wxplatform.wechat.signature import sign

pytestmark = pytest.mark.slow


@dataclass
class DevStack:
    process: subprocess.Popen[str]
    config: Path
    data: dict[str, Any]
    ports: DevPorts
    ready_line: str
    stderr_path: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wxplatform", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def app(self, app_id: str) -> dict[str, Any]:
        return next(a for a in self.data["apps"] if a["app_id"] == app_id)


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    state = tmp_path_factory.mktemp("dev")
    ports = DevPorts(core=free_port(), core_metrics=free_port(), edge=free_port(), sim=free_port())
    config = state / "dev.toml"
    config.write_text(render_dev_config(ports), encoding="utf-8")
    stderr_path = state / "stderr.log"
    with stderr_path.open("w") as stderr:
        command = [sys.executable, "-m", "wxplatform", "--config", str(config), "dev"]
        process = subprocess.Popen(
            [*command, "--dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    ready = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "ready" in line:
            ready = line
            break
    if not ready:
        process.kill()
        pytest.fail(f"dev stack never became ready; stderr:\n{stderr_path.read_text()[-3000:]}")
    stack = DevStack(process, config, tomllib.loads(config.read_text()), ports, ready, stderr_path)
    try:
        yield stack
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_ready_line_names_the_urls(dev_stack: DevStack) -> None:
    assert f"127.0.0.1:{dev_stack.ports.edge}" in dev_stack.ready_line
    assert f"127.0.0.1:{dev_stack.ports.core}" in dev_stack.ready_line


def test_signed_verification_echoes_and_wrong_signature_is_refused(dev_stack: DevStack) -> None:
    app = dev_stack.app(PLAIN_APP)
    ts, nonce = str(int(time.time())), "1514711492"
    good = sign(app["token"], ts, nonce)
    base = f"http://127.0.0.1:{dev_stack.ports.edge}/wx/{PLAIN_APP}?"
    query = {"timestamp": ts, "nonce": nonce, "echostr": "4375120948345356249"}
    assert http_get(base + urllib.parse.urlencode({**query, "signature": good})) == (
        200,
        b"4375120948345356249",
    )
    status, body = http_get(base + urllib.parse.urlencode({**query, "signature": "0" * 40}))
    assert status == 403
    assert b"4375120948345356249" not in body


@pytest.mark.parametrize(("app_id", "text", "expected"), [
    (PLAIN_APP, "hello", "Hello from wxplatform!"),
    (SAFE_APP, "hi there", "Hello, securely, from wxplatform!"),
])  # fmt: skip
def test_simulator_push_gets_the_rule_reply(
    dev_stack: DevStack, app_id: str, text: str, expected: str
) -> None:
    result = dev_stack.cli("sim", "push", "--app", app_id, "--text", text)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["status"] == 200
    assert outcome["reply"]["Content"] == expected


async def test_grpc_health_reflection_and_auth(dev_stack: DevStack) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dev_stack.ports.core}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in reflection.ServerReflectionInfo(iter([request])):
            names = {s.name for s in response.list_services_response.service}
            break
        for service in ("Ingress", "Event", "Messaging", "Token", "OAuth", "Session"):
            assert f"acme.wxplatform.v1.{service}Service" in names

        tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        request_pb = token_service_pb2.GetAccessTokenRequest(app_id=PLAIN_APP)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await tokens.GetAccessToken(request_pb, metadata=metadata, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        demo = dev_stack.data["dev"]["demo_credential"]
        token = await tokens.GetAccessToken(
            request_pb, metadata=(("authorization", f"Bearer {demo}"),), timeout=5
        )
        assert len(token.access_token) > 32  # fetched from the simulator, through core
        assert token.expire_time.seconds > time.time() + 3600


async def test_a_user_message_lets_teams_answer_through_customer_service(
    dev_stack: DevStack,
) -> None:
    import wxplatform_client

    from acme.wxplatform.v1 import messaging_service_pb2 as m

    openid = "oDevStackUser0000000000001"
    pushed = dev_stack.cli(
        "sim", "push", "--app", PLAIN_APP, "--text", "anyone there?", "--openid", openid
    )
    assert pushed.returncode == 0, pushed.stderr
    demo = dev_stack.data["dev"]["demo_credential"]
    async with wxplatform_client.Client(f"127.0.0.1:{dev_stack.ports.core}", demo) as client:
        request = m.SendCustomerMessageRequest(
            app_id=PLAIN_APP,
            idempotency_key="dev-1",
            to_user=openid,
            text=m.CustomerText(content="yes!"),
        )
        delivery = (await client.messaging.SendCustomerMessage(request)).delivery
    assert delivery.status == m.DELIVERY_STATUS_SENT
    status, body = http_get(f"http://127.0.0.1:{dev_stack.ports.sim}/_sim/sent?app_id={PLAIN_APP}")
    assert status == 200
    assert b"yes!" in body


def test_sigterm_stops_everything_and_logs_hold_no_secret(dev_stack: DevStack) -> None:
    redis_pids = _redis_children(dev_stack.process.pid)
    dev_stack.process.send_signal(signal.SIGTERM)
    assert dev_stack.process.wait(timeout=30) == 0
    for pid in redis_pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    for port in (dev_stack.ports.edge, dev_stack.ports.core):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
    logs = dev_stack.stderr_path.read_text()
    assert '"msg": "core serving"' in logs
    secrets = [dev_stack.data["edge"]["core_credential"], dev_stack.data["dev"]["demo_credential"]]
    for app in dev_stack.data["apps"]:
        secrets += [app["app_secret"], app["token"], app.get("encoding_aes_key", "--none--")]
    for secret in secrets:
        assert secret not in logs


def _redis_children(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [
        p for p in pids if "redis-server" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
    ]
