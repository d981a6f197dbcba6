"""The `/_sim/` control API: faults, the request log, the clock, stats."""

from __future__ import annotations

import logging
import re
import time

import httpx
import pytest

from wxplatform.config import AppConfig
from wxplatform.sim import WeChatSimulator

from .sim_support import PLAIN, RID, SECRET, errcode_for, get_token, stable_token


async def add_fault(client: httpx.AsyncClient, **fault: object) -> None:
    response = await client.post("/_sim/faults", json=fault)
    assert response.status_code == 201, response.text


async def test_errcode_fault_applies_n_times(client: httpx.AsyncClient) -> None:
    await add_fault(client, path="/cgi-bin/token", errcode=-1, times=2)
    for _ in range(2):
        body = await get_token(client)
        assert body["errcode"] == -1
        assert re.fullmatch("system error " + RID, body["errmsg"])
    assert "access_token" in await get_token(client)
    assert (await client.get("/_sim/faults")).json() == []


async def test_fault_only_hits_its_path(client: httpx.AsyncClient) -> None:
    await add_fault(client, path="/cgi-bin/getcallbackip", errcode=45009, times=1)
    token = (await get_token(client))["access_token"]
    assert await errcode_for(client, token) == 45009
    assert await errcode_for(client, token) == 0


async def test_faults_for_one_path_apply_in_order(client: httpx.AsyncClient) -> None:
    await add_fault(client, path="/cgi-bin/token", errcode=-1)
    await add_fault(client, path="/cgi-bin/token", errcode=45011, errmsg="api minute-quota")
    assert (await get_token(client))["errcode"] == -1
    assert (await get_token(client))["errcode"] == 45011
    assert "access_token" in await get_token(client)


async def test_fault_until_cleared(client: httpx.AsyncClient) -> None:
    await add_fault(client, errcode=-1, times=-1)  # no path: every API path
    for _ in range(5):
        assert (await get_token(client))["errcode"] == -1
    assert (await stable_token(client))["errcode"] == -1
    assert len((await client.get("/_sim/faults")).json()) == 1
    assert (await client.delete("/_sim/faults")).status_code == 200
    assert "access_token" in await get_token(client)


async def test_latency_fault_delays_a_normal_answer(client: httpx.AsyncClient) -> None:
    await add_fault(client, path="/cgi-bin/token", latency_ms=400)
    started = time.perf_counter()
    body = await get_token(client)
    assert time.perf_counter() - started >= 0.35
    assert "access_token" in body


async def test_gateway_error_fault_sends_html(client: httpx.AsyncClient) -> None:
    await add_fault(client, path="/cgi-bin/token", http_status=502)
    response = await client.get("/cgi-bin/token", params={"appid": PLAIN})
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in response.text


async def test_raw_body_fault(client: httpx.AsyncClient) -> None:
    await add_fault(client, path="/cgi-bin/stable_token", body="{truncated", http_status=200)
    response = await client.post("/cgi-bin/stable_token", json={})
    assert response.status_code == 200
    assert response.text == "{truncated"


async def test_reset_fault_drops_the_connection_unanswered(client: httpx.AsyncClient) -> None:
    await add_fault(client, path="/cgi-bin/stable_token", reset=True)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/cgi-bin/stable_token", json={})
    assert len((await client.get("/_sim/requests")).json()) >= 1  # it was read
    assert (await client.get("/_sim/faults")).json() == []


@pytest.mark.parametrize(
    "fault",
    [
        {"path": "/cgi-bin/token"},
        {"path": "/cgi-bin/token", "reset": True, "errcode": -1},
        {"path": "/cgi-bin/token", "reset": 1},
        {"path": "/cgi-bin/token", "errcode": -1, "times": 0},
        {"path": "/cgi-bin/token", "errcode": "x"},
        {"path": "/cgi-bin/token", "http_status": 99},
        {"path": "/_sim/stats", "errcode": -1},
        {"path": "/cgi-bin/token", "errcode": -1, "colour": "red"},
        [1, 2],
    ],
)
async def test_bad_faults_are_refused(client: httpx.AsyncClient, fault: object) -> None:
    response = await client.post("/_sim/faults", json=fault)
    assert response.status_code == 400
    assert response.json()["error"]


async def test_request_log_redacts_the_secret(client: httpx.AsyncClient) -> None:
    await get_token(client)
    await stable_token(client, force=True)
    await client.get("/cgi-bin/getcallbackip", params={"access_token": "abc"})
    response = await client.get("/_sim/requests")
    assert SECRET not in response.text
    log = response.json()
    assert [e["path"] for e in log] == [
        "/cgi-bin/token",
        "/cgi-bin/stable_token",
        "/cgi-bin/getcallbackip",
    ]
    token_call, stable_call, api_call = log
    assert token_call["method"] == "GET"
    assert token_call["query"] == {
        "grant_type": "client_credential",
        "appid": PLAIN,
        "secret": "***",
    }
    assert token_call["json"] is None
    assert stable_call["json"] == {
        "grant_type": "client_credential",
        "appid": PLAIN,
        "secret": "***",
        "force_refresh": True,
    }
    assert api_call["query"] == {"access_token": "abc"}
    assert isinstance(api_call["time"], float)
    only = (await client.get("/_sim/requests", params={"path": "/cgi-bin/token"})).json()
    assert only == [token_call]
    assert (await client.delete("/_sim/requests")).status_code == 200
    assert (await client.get("/_sim/requests")).json() == []


async def test_faulted_and_unknown_requests_are_logged(client: httpx.AsyncClient) -> None:
    await add_fault(client, path="/cgi-bin/token", errcode=-1)
    await get_token(client)
    response = await client.get("/cgi-bin/nothing")
    assert response.status_code == 404
    await client.get("/_sim/stats")
    paths = [e["path"] for e in (await client.get("/_sim/requests")).json()]
    assert paths == ["/cgi-bin/token", "/cgi-bin/nothing"]


async def test_secrets_stay_out_of_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wxplatform")
    caplog.set_level(logging.DEBUG, logger="tornado")
    await get_token(client)
    await get_token(client, secret="wrong-secret-value")
    await stable_token(client)
    assert "/cgi-bin/token" in caplog.text
    assert SECRET not in caplog.text
    assert "wrong-secret-value" not in caplog.text


async def test_clock_control(client: httpx.AsyncClient, sim: WeChatSimulator) -> None:
    before = (await client.get("/_sim/clock")).json()
    assert before["manual"] is True
    after = (await client.post("/_sim/clock", json={"advance": 12.5})).json()
    assert after["now"] == before["now"] + 12.5
    assert sim.clock.now() == after["now"]
    assert sim.advance_clock(1) == after["now"] + 1
    bad = await client.post("/_sim/clock", json={"advance": -1})
    assert bad.status_code == 400


async def test_clock_control_needs_a_manual_clock(apps: dict[str, AppConfig]) -> None:
    async with (
        WeChatSimulator(apps) as sim,
        httpx.AsyncClient(base_url=sim.base_url, trust_env=False) as client,
    ):
        response = await client.post("/_sim/clock", json={"advance": 1})
        assert response.status_code == 409
        assert (await client.get("/_sim/clock")).json()["manual"] is False


async def test_stats_and_health(client: httpx.AsyncClient, sim: WeChatSimulator) -> None:
    await get_token(client)
    await get_token(client)
    await stable_token(client)
    stats = (await client.get("/_sim/stats")).json()
    assert stats == sim.stats()
    assert stats["apps"][PLAIN] == {
        "token": {"issued": 2, "calls_today": 2, "daily_quota": 2000},
        "stable_token": {"issued": 1, "forced": 0, "forced_today": 0, "force_daily_quota": 20},
        "ticket_calls": 0,
    }
    health = (await client.get("/_sim/health")).json()
    assert health == {"ok": True, "apps": sorted(sim.apps)}


async def test_python_control_methods_mirror_http(
    client: httpx.AsyncClient, sim: WeChatSimulator
) -> None:
    sim.add_fault("/cgi-bin/token", errcode=40164, times=1)
    assert sim.faults()[0]["errcode"] == 40164
    assert (await get_token(client))["errcode"] == 40164
    sim.add_fault(None, errcode=-1, times=-1)
    sim.clear_faults()
    assert "access_token" in await get_token(client)
    assert len(sim.requests("/cgi-bin/token")) == 2
    sim.clear_requests()
    assert sim.requests() == []


async def test_start_reports_the_real_port(apps: dict[str, AppConfig]) -> None:
    simulator = WeChatSimulator(apps)
    port = await simulator.start()
    try:
        assert port > 0
        assert simulator.base_url == f"http://127.0.0.1:{port}"
        with pytest.raises(RuntimeError):
            await simulator.start()
    finally:
        await simulator.stop()
    await simulator.stop()  # stopping twice is harmless


async def test_a_crashing_handler_does_not_log_the_secret(
    client: httpx.AsyncClient,
    sim: WeChatSimulator,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(app_id: str) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(sim.state.tokens, "issue", boom)
    caplog.set_level(logging.DEBUG)
    response = await client.get(
        "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": PLAIN, "secret": SECRET},
    )
    assert response.status_code == 500
    assert "simulated bug" in caplog.text
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert server_side
    assert all(SECRET not in r.getMessage() for r in server_side)
