"""Every Redis key wxplatform writes: its family, owner and lifetime, and its builder.

Every key of an app carries the app's hash tag `{app_id}`, so all keys of one app hash
to one Redis Cluster slot: the multi-key scripts of one app run unchanged on Cluster,
and no operation ever spans two apps. A key is built only by the function of its family
below, and written only by the module named as its owner.

    key                                    owner · value · lifetime
    wxp:{app}:dedup:<dedup key>
        ingress_store · PassiveReply bytes · core.dedup_ttl_seconds
    wxp:{app}:nonce:<timestamp>:<nonce>
        ingress_store · sha256 of the first body · 2 × edge.timestamp_window_seconds
    wxp:{app}:events
        event_log · stream of m, t, e; ingress_store appends · trimmed to core.event_retention
    wxp:{app}:events:dead
        event_log · stream of dead letters · trimmed to core.event_retention
    wxp:{app}:events:consumers:<group>
        event_log · hash consumer → visibility ms · 2 days after the last claim
    wxp:{app}:events:seen:<group>
        event_log · zset consumer → last claim ms · 2 days after the last claim
    wxp:{app}:window:<openid>
        windows · the user's interaction windows · 48 h + 60 s after the last grant
    wxp:{app}:idem:<caller>:<key sha256>
        message_store · <pending|done>:<digest>:<delivery id>
        · 120 s while pending, then core.idempotency_ttl_seconds
    wxp:{app}:circuit:<api path>
        message_store · end of the open circuit (ms) · to the daily reset + 60 s
    wxp:{app}:rate:<unix second>
        message_store · sends counted in that second · 2 s
    wxp:{app}:delivery:<delivery id>
        message_store · Delivery bytes · core.delivery_ttl_seconds
    wxp:{app}:delivery:msgid:<msgid>
        message_store · delivery id of WeChat's msgid · core.delivery_ttl_seconds
    wxp:{app}:delivery:early:<msgid>
        message_store · a result event that came first · 120 s
    wxp:{app}:session:<token sha256>
        session_store · hash of the session (never its token) · until it expires
    wxp:{app}:session:user:<openid>
        session_store · set of the user's session hashes · the longest absolute cap
    wxp:{app}:session:events
        session_store · stream of creations and revocations · core.session_event_retention
    wxp:{app}:session_key:<openid>
        identity_store · the user's sealed session keys (current, previous) · the app's
        absolute session cap
    wxp:{app}:oauth:state:<state>
        identity_store · a web login's scope, return URL, browser binding, code · 10 min
    wxp:{app}:oauth:exchange:<sha256 of state and code>
        identity_store · what that exchange gave, for reloads · the code's 5 min
    wxp:{app}:oauth:user:<openid>
        identity_store · the user's sealed OAuth tokens, expiries, profile · 30 days
    wxp:{app}:<kind>
        credential_store · hash of value, expires_ms, fence · none (replaced in place)
    wxp:{app}:<kind>:lock
        credential_store · fence of the refresher · the lock's 10 s
    wxp:{app}:<kind>:fence
        credential_store · counter of refreshers · none (must only grow)
    wxp:{app}:<kind>:force
        credential_store · forced refreshes of the day · 2 days

`<kind>` is `token` (the access token) or `ticket:jsapi`.
"""

from __future__ import annotations

__all__ = [
    "app_key",
    "circuit",
    "consumer_timeouts",
    "consumers_seen",
    "credential",
    "credential_fence",
    "credential_lock",
    "dead_letters",
    "dedup",
    "delivery",
    "delivery_by_msgid",
    "early_result",
    "events",
    "forced_refreshes",
    "idempotency",
    "nonce",
    "oauth_exchange",
    "oauth_state",
    "oauth_user",
    "rate",
    "session",
    "session_events",
    "session_key",
    "user_sessions",
    "window",
]

PREFIX = "wxp"


def app_key(app_id: str, *parts: str) -> str:
    """`wxp:{app_id}:part1:part2…` (the families below are built with it)."""
    return ":".join((PREFIX, "{" + app_id + "}", *parts))


def dedup(app_id: str, dedup_key: str) -> str:
    return app_key(app_id, "dedup", dedup_key)


def nonce(app_id: str, timestamp: int, value: str) -> str:
    return app_key(app_id, "nonce", str(timestamp), value)


def events(app_id: str) -> str:
    return app_key(app_id, "events")


def dead_letters(app_id: str) -> str:
    return app_key(app_id, "events", "dead")


def consumer_timeouts(app_id: str, group: str) -> str:
    return app_key(app_id, "events", "consumers", group)


def consumers_seen(app_id: str, group: str) -> str:
    return app_key(app_id, "events", "seen", group)


def window(app_id: str, openid: str) -> str:
    return app_key(app_id, "window", openid)


def idempotency(app_id: str, caller: str, key_sha256: str) -> str:
    return app_key(app_id, "idem", caller, key_sha256)


def circuit(app_id: str, api: str) -> str:
    return app_key(app_id, "circuit", api)


def rate(app_id: str, unix_second: int) -> str:
    return app_key(app_id, "rate", str(unix_second))


def delivery(app_id: str, delivery_id: str) -> str:
    return app_key(app_id, "delivery", delivery_id)


def delivery_by_msgid(app_id: str, msgid: str) -> str:
    return app_key(app_id, "delivery", "msgid", msgid)


def early_result(app_id: str, msgid: str) -> str:
    return app_key(app_id, "delivery", "early", msgid)


def session(app_id: str, token_sha256: str) -> str:
    return app_key(app_id, "session", token_sha256)


def user_sessions(app_id: str, openid: str) -> str:
    return app_key(app_id, "session", "user", openid)


def session_events(app_id: str) -> str:
    return app_key(app_id, "session", "events")


def session_key(app_id: str, openid: str) -> str:
    return app_key(app_id, "session_key", openid)


def oauth_state(app_id: str, state: str) -> str:
    return app_key(app_id, "oauth", "state", state)


def oauth_exchange(app_id: str, exchange_sha256: str) -> str:
    return app_key(app_id, "oauth", "exchange", exchange_sha256)


def oauth_user(app_id: str, openid: str) -> str:
    return app_key(app_id, "oauth", "user", openid)


def credential(app_id: str, kind: str) -> str:
    return app_key(app_id, kind)


def credential_lock(app_id: str, kind: str) -> str:
    return app_key(app_id, kind, "lock")


def credential_fence(app_id: str, kind: str) -> str:
    return app_key(app_id, kind, "fence")


def forced_refreshes(app_id: str, kind: str) -> str:
    return app_key(app_id, kind, "force")
