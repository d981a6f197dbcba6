"""`/cgi-bin/stable_token`: normal and force mode, and isolation from `/cgi-bin/token`."""

from __future__ import annotations

import re

import httpx
import pytest

from .sim_support import (
    PLAIN,
    RID,
    SAFE,
    SECRET,
    advance,
    errcode_for,
    get_token,
    stable_token,
)


async def test_normal_mode_returns_the_same_token(client: httpx.AsyncClient) -> None:
    first = await stable_token(client)
    await advance(client, 100)
    second = await stable_token(client)
    assert first == {"access_token": first["access_token"], "expires_in": 7200}
    assert len(first["access_token"]) >= 100
    assert second == {"access_token": first["access_token"], "expires_in": 7100}


async def test_normal_mode_rolls_five_minutes_before_expiry(client: httpx.AsyncClient) -> None:
    old = (await stable_token(client))["access_token"]
    await advance(client, 6899)
    last = await stable_token(client)
    assert last == {"access_token": old, "expires_in": 301}
    await advance(client, 1)
    rolled = await stable_token(client)
    assert rolled["access_token"] != old
    assert rolled["expires_in"] == 7200
    # The old token is not cut short: it keeps working until its own expiry.
    await advance(client, 299)
    assert await errcode_for(client, old) == 0
    await advance(client, 1)
    assert await errcode_for(client, old) == 42001
    assert await errcode_for(client, rolled["access_token"]) == 0


async def test_normal_mode_never_hands_out_a_token_with_less_than_300s(
    client: httpx.AsyncClient,
) -> None:
    seen: set[str] = set()
    for _ in range(60):
        body = await stable_token(client)
        assert body["expires_in"] >= 300
        assert await errcode_for(client, body["access_token"]) == 0
        seen.add(body["access_token"])
        await advance(client, 347)  # 60 x 347 s crosses three rolls at odd offsets
    assert 3 <= len(seen) <= 5


async def test_force_refresh_replaces_the_token_with_an_overlap(
    client: httpx.AsyncClient,
) -> None:
    leaked = (await stable_token(client))["access_token"]
    forced = await stable_token(client, force=True)
    assert forced["access_token"] != leaked
    assert forced["expires_in"] == 7200
    assert await errcode_for(client, leaked) == 0
    await advance(client, 300)
    assert await errcode_for(client, leaked) == 40001


async def test_force_within_30_seconds_changes_nothing(client: httpx.AsyncClient) -> None:
    leaked = (await stable_token(client))["access_token"]
    first = (await stable_token(client, force=True))["access_token"]
    await advance(client, 29)
    again = await stable_token(client, force=True)
    assert again == {"access_token": first, "expires_in": 7171}
    await advance(client, 1)
    second = (await stable_token(client, force=True))["access_token"]
    assert second not in {leaked, first}
    # Two forced refreshes 30 s apart kill a leaked token at once (docs/wechat.md §5.1);
    # the one before the latest keeps its 5-minute overlap.
    assert await errcode_for(client, leaked) == 40001
    assert await errcode_for(client, first) == 0
    assert await errcode_for(client, second) == 0
    stats = (await client.get("/_sim/stats")).json()["apps"][PLAIN]["stable_token"]
    assert stats["forced"] == 2
    assert stats["forced_today"] == 2
    assert stats["issued"] == 3


async def test_force_is_limited_to_20_per_day(client: httpx.AsyncClient) -> None:
    tokens = set()
    for _ in range(20):
        tokens.add((await stable_token(client, force=True))["access_token"])
        await advance(client, 30)
    assert len(tokens) == 20
    refused = await stable_token(client, force=True)
    assert refused["errcode"] == 45009
    # Normal mode is unaffected by the force quota.
    assert (await stable_token(client))["access_token"] in tokens
    await advance(client, 86400)
    assert "access_token" in await stable_token(client, force=True)


async def test_stable_and_classic_tokens_are_isolated(client: httpx.AsyncClient) -> None:
    classic = (await get_token(client))["access_token"]
    stable = (await stable_token(client))["access_token"]
    for _ in range(3):
        await get_token(client)
    assert await errcode_for(client, stable) == 0
    assert (await stable_token(client))["access_token"] == stable
    classic = (await get_token(client))["access_token"]
    await stable_token(client, force=True)
    await advance(client, 30)
    await stable_token(client, force=True)
    assert await errcode_for(client, classic) == 0
    assert await errcode_for(client, stable) == 40001
    stats = (await client.get("/_sim/stats")).json()["apps"][PLAIN]
    assert stats["token"]["issued"] == 5
    assert stats["stable_token"]["issued"] == 3


async def test_stable_tokens_are_per_app(client: httpx.AsyncClient) -> None:
    plain = (await stable_token(client, PLAIN))["access_token"]
    safe = (await stable_token(client, SAFE))["access_token"]
    assert plain != safe
    await stable_token(client, SAFE, force=True)
    await advance(client, 30)
    await stable_token(client, SAFE, force=True)
    assert await errcode_for(client, plain) == 0


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        (b"grant_type=client_credential", 47001),
        (b"[1, 2]", 47001),
        (b"\xff\xfe", 47001),
        (b'{"grant_type": "client_credential", "appid": 5, "secret": "x"}', 47001),
        (b'{"grant_type": "client_credential", "appid": "wxnobody", "secret": "x"}', 40013),
        (b'{"grant_type": "nope", "appid": "wxplain000000001", "secret": "x"}', 40002),
        (b'{"grant_type": "client_credential", "secret": "x"}', 41002),
        (b'{"grant_type": "client_credential", "appid": "wxplain000000001"}', 41004),
        (b'{"grant_type": "client_credential", "appid": "wxplain000000001", "secret": "x"}', 40001),
    ],
)
async def test_stable_token_errors(client: httpx.AsyncClient, body: bytes, errcode: int) -> None:
    response = await client.post("/cgi-bin/stable_token", content=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["errcode"] == errcode
    assert re.search(RID, answer["errmsg"])
    assert SECRET not in response.text
