"""A pytest plugin that says where each Redis connection left unclosed was opened.

`filterwarnings = error` turns an unclosed connection into a failure, but Python reports
it when the object is collected, often during a later, innocent test. With this plugin
(`make test-busy PROBE=1`, or `WXP_LEAK_PROBE=1 pytest`) every redis-py connection
remembers the stack that created it, and one collected while still connected prints that
stack, which names the code that forgot to close it.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from redis.asyncio import connection

_created = connection.AbstractConnection.__init__
_collected = connection.AbstractConnection.__del__


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    _created(self, *args, **kwargs)
    self._wxp_created_at = "".join(traceback.format_stack(limit=30)[:-1])


def _del(self: Any, *args: Any, **kwargs: Any) -> None:
    if getattr(self, "_writer", None) is not None:
        stack = getattr(self, "_wxp_created_at", "(unknown)\n")
        sys.stderr.write(f"\nwxp leak probe: an unclosed Redis connection, opened at:\n{stack}")
    _collected(self, *args, **kwargs)


connection.AbstractConnection.__init__ = _init  # type: ignore[method-assign]
connection.AbstractConnection.__del__ = _del  # type: ignore[method-assign]
