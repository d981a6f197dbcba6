"""Redis key layout. Every key of an app carries the app's hash tag `{app_id}`.

With the tag, all keys of one app hash to one Redis Cluster slot, so the multi-key
scripts and transactions of one app run unchanged on Cluster; no operation ever spans
two apps.

    wxp:{app}:dedup:<dedup key>          pending | done:<PassiveReply bytes>   (dedup TTL)
    wxp:{app}:nonce:<timestamp>:<nonce>  sha256 of the first body with them    (2 windows)
    wxp:{app}:events                     stream of accepted messages           (trimmed)
    wxp:{app}:events:dead                dead-letter stream                    (trimmed)
    wxp:{app}:window:<openid>            customer-service windows of a user    (48 h)
"""

from __future__ import annotations

__all__ = ["app_key"]

PREFIX = "wxp"


def app_key(app_id: str, *parts: str) -> str:
    """`wxp:{app_id}:part1:part2…`."""
    return ":".join((PREFIX, "{" + app_id + "}", *parts))
