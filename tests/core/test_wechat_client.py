"""The WeChat API client's view of a connection that never opens."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from wxplatform.clock import SystemClock
from wxplatform.core.adapters.wechat_client import Call, WeChatClient
from wxplatform.errors import WeChatUnavailable


@pytest.fixture
def stuck_listener() -> Iterator[int]:
    """A port whose accept queue is full: a new connection's handshake never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # enough to fill the queue, whatever the kernel rounds 0 up to
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_send_that_never_connected_is_not_an_unknown_outcome(stuck_listener: int) -> None:
    """Short deadlines too: the connect timeout ends first, so nothing counts as sent."""
    client = WeChatClient(f"http://127.0.0.1:{stuck_listener}", SystemClock())
    try:
        started = time.monotonic()
        with pytest.raises(WeChatUnavailable):
            await client.post(
                "/cgi-bin/message/custom/send",
                {"access_token": "t"},
                {"touser": "o"},
                deadline=time.monotonic() + 1.0,
                call=Call.SEND,
            )
        assert time.monotonic() - started < 5  # the deadline (1 s), with room for a slow box
    finally:
        await client.close()


async def test_a_closed_client_refuses_calls_instead_of_opening_a_new_pool(
    stuck_listener: int,
) -> None:
    client = WeChatClient(f"http://127.0.0.1:{stuck_listener}", SystemClock())
    await client.close()
    with pytest.raises(WeChatUnavailable, match="closed"):
        await client.get("/cgi-bin/ticket/getticket", {}, deadline=time.monotonic() + 1.0)
    await client.close()  # closing twice is harmless
