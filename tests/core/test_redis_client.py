"""The core's Redis client: a timed-out command is never sent again."""

from __future__ import annotations

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support import new_app_id
from wxplatform.core.adapters.redis_client import connect

# Counts its runs, then keeps Redis busy past the client's 2 s socket timeout.
_SLOW_INCR = """
local runs = redis.call('INCR', KEYS[1])
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 2500000 then break end
end
return runs
"""


async def test_a_command_that_timed_out_is_not_run_again(redis_url: str) -> None:
    """It may have run (here it did): our claims, counters and appends must not run twice."""
    client = connect(redis_url)
    key = f"wxp:{{{new_app_id()}}}:runs"
    try:
        with pytest.raises(RedisTimeoutError):
            await client.eval(_SLOW_INCR, 1, key)
        assert await client.get(key) == b"1"
    finally:
        await client.delete(key)
        await client.aclose()
