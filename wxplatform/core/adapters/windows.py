"""The interaction-window hash of one user: its layout, and the Lua that reads and writes it.

docs/wechat.md §5.3: an interaction opens a customer-service window of its kind (so
many sends within so long); an unfollow closes them all. One hash per (app, user),
`redis_keys.window(app_id, openid)`, holds every window of that user:

    <kind>          "<expires ms>:<quota>"  the window of that kind
    <kind>:used     sends taken from it
    <kind>:at       when the interaction that opened it happened (ms)
    unfollowed:at   the latest unfollow (ms)

Ingress records windows in the same script that accepts the message
(`window_record`, given `KEY_TTL_MS`); the message store takes a unit before a send
(`window_take`) and gives it back when the send did not go out (`window_refund`). The three are Lua
functions in `LUA`, which each script that touches the hash starts with, so the layout
is written down once.
"""

from __future__ import annotations

from collections.abc import Sequence

from wxplatform.core.model import WindowGrant

__all__ = ["KEY_TTL_MS", "LUA", "grant_args"]

KEY_TTL_MS = (48 * 3600 + 60) * 1000  # the longest window (48 h) and a margin

# Pushes can arrive late (replayed from the edge's spool), so the hash keeps when each
# window was opened and the latest unfollow: an unfollow closes only the windows opened
# before it (or in the same second), an interaction older than the latest unfollow opens
# nothing, and a grant replaces a window of its kind only if it ends no earlier (a late
# push must not hand back quota a newer window has used). The key's life is never
# shortened: it also holds the user's longer windows.
LUA = """
local function window_record(key, ttl_ms, at, unfollow, grants, first)
  local unfollowed = tonumber(redis.call('HGET', key, 'unfollowed:at') or '0')
  if unfollow and at > unfollowed then
    local fields = redis.call('HGETALL', key)
    for i = 1, #fields, 2 do
      local kind = fields[i]
      if not string.find(kind, ':', 1, true) then
        local opened = tonumber(redis.call('HGET', key, kind .. ':at') or '0')
        if opened <= at then redis.call('HDEL', key, kind, kind .. ':used', kind .. ':at') end
      end
    end
    redis.call('HSET', key, 'unfollowed:at', at)
    redis.call('PEXPIRE', key, ttl_ms)
  end
  if at >= unfollowed then
    for i = first, #grants, 2 do
      local held = redis.call('HGET', key, grants[i])
      local ends = tonumber(string.match(grants[i + 1], '^%d+'))
      if not held or tonumber(string.match(held, '^%d+')) <= ends then
        redis.call('HSET', key, grants[i], grants[i + 1], grants[i] .. ':used', 0,
                   grants[i] .. ':at', at)
        redis.call('PEXPIRE', key, ttl_ms)
      end
    end
  end
end

-- The open window with quota left that ends first, its unit taken; or nil and whether
-- any window was open at all (closed and used-up windows are refused differently).
local function window_take(key, now)
  local fields = redis.call('HGETALL', key)
  local best, best_expiry, any_open = nil, nil, false
  for i = 1, #fields, 2 do
    local name = fields[i]
    if not string.find(name, ':', 1, true) then
      local expiry, quota = string.match(fields[i + 1], '^(%d+):(%d+)$')
      expiry, quota = tonumber(expiry), tonumber(quota)
      if expiry and expiry > now then
        any_open = true
        local used = tonumber(redis.call('HGET', key, name .. ':used') or '0')
        if used < quota and (best_expiry == nil or expiry < best_expiry) then
          best, best_expiry = name, expiry
        end
      end
    end
  end
  if best then redis.call('HINCRBY', key, best .. ':used', 1) end
  return best, any_open
end

-- Never below zero (a new interaction may have reset the count meanwhile), and never
-- recreating an expired window.
local function window_refund(key, kind)
  local used = tonumber(redis.call('HGET', key, kind .. ':used') or '0')
  if used > 0 then redis.call('HINCRBY', key, kind .. ':used', -1) end
end
"""


def grant_args(grants: Sequence[WindowGrant], now_ms: int) -> list[str]:
    """The flat `kind, "<expires ms>:<quota>"` pairs `window_record` takes."""
    args: list[str] = []
    for grant in grants:
        args += [grant.kind, f"{now_ms + grant.seconds * 1000}:{grant.quota}"]
    return args
