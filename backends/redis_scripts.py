"""The Lua scripts of the Redis key store (`backends.redis`): every write that touches more than
one key is one script, so it is atomic. The rate limits' hit is here too (`HIT`), so that a
reservation can count one in its own round trip where the limits share the store's Redis.

Each script says which KEYS and ARGV it takes; the keys are built by `redis_layout.redis_key`
and the entry format is `redis_layout.ENTRY` (bytes 2-9 created_at, 10-17 updated_at, then the
record). Redis Cluster is not supported: the scripts touch keys of several hash slots.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CREATE_CHILD",
    "CREATE_USER",
    "DELETE_CHILD",
    "DELETE_KEY",
    "DELETE_USER",
    "HIT",
    "HIT_RESERVE",
    "PRUNE_USAGE",
    "PUT_KEY",
    "RECORD_USAGE",
    "REPLACE_KEY",
    "RESERVE",
    "REVOKE",
    "SETTLE",
    "SET_CAPS",
    "SET_STATUS",
    "TOUCH",
    "TOUCH_CHILD",
    "USERS_FOR_TOKENS",
]

# KEYS: token key, user key, app set. ARGV: token digest, user id, the record's field/values.
CREATE_USER: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# KEYS: user key. ARGV: token key prefix, caps ('' to clear them).
SET_CAPS: Final = """
local digest = redis.call('GET', KEYS[1])
if not digest then return 0 end
if ARGV[2] == '' then return redis.call('HDEL', ARGV[1] .. digest, 'caps') end
return redis.call('HSET', ARGV[1] .. digest, 'caps', ARGV[2])
"""

# A fixed-window rate-limit hit (`relay.server.redislimits`): the count, this hit included, and
# the milliseconds left in the window. A counter found without an expiry (left by an interrupted
# writer) starts its window now rather than never ending.
_HIT: Final = """
local function hit(key, window)
  local count = redis.call('INCRBY', key, 1)
  local left = redis.call('PTTL', key)
  if left < 0 then
    left = window
    redis.call('PEXPIRE', key, left)
  end
  return count, left
end
"""

# The user's key, counters hash (counter -> amount), their expiries hash; from ARGV[base + 1]:
# now, n, then n times counter, amount, limit, expires_at. -2 all reserved, -1 no user, else the
# 0-based index of the first charge that would pass its limit (nothing added). Expired counters
# go first; the hashes live as long as their last counter.
_RESERVE: Final = """
local function reserve(user, amounts, expiries, base)
  if redis.call('EXISTS', user) == 0 then return -1 end
  local now = tonumber(ARGV[base + 1])
  local last = 0
  local found = redis.call('HGETALL', expiries)
  for j = 1, #found, 2 do
    local at = tonumber(found[j + 1])
    if at <= now then
      redis.call('HDEL', amounts, found[j])
      redis.call('HDEL', expiries, found[j])
    elseif at > last then last = at end
  end
  local n = tonumber(ARGV[base + 2])
  local sums = {}
  for i = 0, n - 1 do
    local c = ARGV[base + 3 + i * 4]
    if sums[c] == nil then sums[c] = tonumber(redis.call('HGET', amounts, c) or '0') end
    sums[c] = sums[c] + tonumber(ARGV[base + 4 + i * 4])
    if sums[c] > tonumber(ARGV[base + 5 + i * 4]) then return i end
  end
  for i = 0, n - 1 do
    local c = ARGV[base + 3 + i * 4]
    local at = tonumber(ARGV[base + 6 + i * 4])
    redis.call('HINCRBY', amounts, c, ARGV[base + 4 + i * 4])
    redis.call('HSET', expiries, c, ARGV[base + 6 + i * 4])
    if at > last then last = at end
  end
  -- Redis expires by its own clock: only a period still to end there bounds the hashes' lives.
  local clock = redis.call('TIME')
  if last > tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) then
    redis.call('PEXPIREAT', amounts, last)
    redis.call('PEXPIREAT', expiries, last)
  end
  return -2
end
"""

# KEYS: the rate-limit counter. ARGV: its window in milliseconds. {count, milliseconds left}.
HIT: Final = _HIT + "return {hit(KEYS[1], tonumber(ARGV[1]))}"

# KEYS: user key, counters hash, their expiries hash. ARGV: as `_RESERVE`'s, from ARGV[1].
RESERVE: Final = _RESERVE + "return reserve(KEYS[1], KEYS[2], KEYS[3], 0)"

# A rate-limit hit and, unless it is over the limit, a reservation, in one round trip. KEYS: as
# RESERVE's, then the rate-limit counter. ARGV: its window in milliseconds, its limit, then
# RESERVE's. {count, milliseconds left, RESERVE's answer or -3: over the limit, nothing reserved}.
HIT_RESERVE: Final = (
    _HIT
    + _RESERVE
    + """
local count, left = hit(KEYS[4], tonumber(ARGV[1]))
if count > tonumber(ARGV[2]) then return {count, left, -3} end
return {count, left, reserve(KEYS[1], KEYS[2], KEYS[3], 2)}
"""
)

# KEYS: counters hash. ARGV: pairs of counter, amount to add. Never below 0; a counter gone (its
# period over) stays gone.
SETTLE: Final = """
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    if redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) < 0 then
      redis.call('HSET', KEYS[1], ARGV[i], 0)
    end
  end
end
return 1
"""

# KEYS: user key. ARGV: token key prefix, revoked_at.
REVOKE: Final = """
local digest = redis.call('GET', KEYS[1])
if not digest then return 0 end
return redis.call('HSETNX', ARGV[1] .. digest, 'revoked_at', ARGV[2])
"""

# KEYS: token keys. ARGV: token key prefix, children hash prefix. Per key, its hash, and for a
# narrow token its account's token hash and when it was last used ('' for never).
USERS_FOR_TOKENS: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local found = redis.call('HGETALL', key)
  local owner, user, id
  for j = 1, #found, 2 do
    local f = found[j]
    if f == 'owner' then owner = found[j + 1]
    elseif f == 'user' then user = found[j + 1]
    elseif f == 'child_id' then id = found[j + 1] end
  end
  if owner then
    out[i] = {found, redis.call('HGETALL', ARGV[1] .. owner),
              redis.call('HGET', ARGV[2] .. user, id .. ':used') or ''}
  else
    out[i] = {found}
  end
end
return out
"""

# The narrow tokens of an account are one hash: "<id>" -> the token's entry (JSON, with its
# digest), "<id>:used" -> last used. `gone` adds to `ids` (a set) every token whose parent is in it
# or missing, at any depth, and deletes them all, token keys and fields.
_CHILDREN: Final = """
local function gone(children, prefix, ids)
  local entries = {}
  local all = redis.call('HGETALL', children)
  for j = 1, #all, 2 do
    if not string.find(all[j], ':', 1, true) then entries[all[j]] = cjson.decode(all[j + 1]) end
  end
  local more = true
  while more do
    more = false
    for id, c in pairs(entries) do
      local parent = c['parent_id']
      if not ids[id] and parent ~= cjson.null and (ids[parent] or not entries[parent]) then
        ids[id] = true
        more = true
      end
    end
  end
  local deleted = {}
  for id in pairs(ids) do
    if entries[id] then
      redis.call('DEL', prefix .. entries[id]['digest'])
      redis.call('HDEL', children, id, id .. ':used')
      deleted[#deleted + 1] = id
      entries[id] = nil
    end
  end
  return entries, deleted
end
"""

# KEYS: user key, children hash, the new token key. ARGV: token key prefix, now, most, id,
# parent id ('' for none), entry, then the token key's field/values. 1 stored, 0 too many, -1 no
# user, -2 no parent, -3 id or digest in use.
CREATE_CHILD: Final = (
    _CHILDREN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local now = tonumber(ARGV[2])
local expired = {}
local all = redis.call('HGETALL', KEYS[2])
for j = 1, #all, 2 do
  if not string.find(all[j], ':', 1, true) then
    local at = cjson.decode(all[j + 1])['expires_at']
    if at ~= cjson.null and at <= now then expired[all[j]] = true end
  end
end
local entries = gone(KEYS[2], ARGV[1], expired)
local live = 0
for _ in pairs(entries) do live = live + 1 end
if live >= tonumber(ARGV[3]) then return 0 end
if ARGV[5] ~= '' and not entries[ARGV[5]] then return -2 end
if entries[ARGV[4]] or redis.call('EXISTS', KEYS[3]) == 1 then return -3 end
redis.call('HSET', KEYS[3], unpack(ARGV, 7))
redis.call('HSET', KEYS[2], ARGV[4], ARGV[6])
return 1
"""
)

# KEYS: children hash. ARGV: token key prefix, id. The ids deleted.
DELETE_CHILD: Final = (
    _CHILDREN
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return {} end
local _, deleted = gone(KEYS[1], ARGV[1], {[ARGV[2]] = true})
return deleted
"""
)

# KEYS: children hash. ARGV: id, at.
TOUCH_CHILD: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1] .. ':used', ARGV[2])
end
return 1
"""

# KEYS: user key, keys hash, key info hash, usage list, children hash, counters hash, their
# expiries hash. ARGV: token key prefix, app set prefix, user id.
DELETE_USER: Final = """
local digest = redis.call('GET', KEYS[1])
if digest then
  local token_key = ARGV[1] .. digest
  local app = redis.call('HGET', token_key, 'app_id')
  if app then redis.call('SREM', ARGV[2] .. app, ARGV[3]) end
  redis.call('DEL', token_key)
end
local children = redis.call('HGETALL', KEYS[5])
for j = 1, #children, 2 do
  if not string.find(children[j], ':', 1, true) then
    redis.call('DEL', ARGV[1] .. cjson.decode(children[j + 1])['digest'])
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
return 1
"""

# KEYS: per user, the user key then the usage list. ARGV: records kept a list, then per user the
# number of its records and the records. A user's records land only while their user key exists:
# the delete-user script removes it with the list, so nothing lands after an erasure.
# KEYS: a usage list. ARGV: before (epoch ms), most to pop. Records are appended as they are
# written: the old ones are at the head. Returns how many were popped.
PRUNE_USAGE: Final = """
local before = tonumber(ARGV[1])
local n = 0
while n < tonumber(ARGV[2]) do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head or cjson.decode(head)['created_at'] >= before then break end
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
return n
"""

RECORD_USAGE: Final = """
local at = 2
for i = 1, #KEYS, 2 do
  local n = tonumber(ARGV[at])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RPUSH', KEYS[i + 1], unpack(ARGV, at + 1, at + n))
    redis.call('LTRIM', KEYS[i + 1], -tonumber(ARGV[1]), -1)
  end
  at = at + n + 1
end
return 1
"""

# KEYS: user key, keys hash, key info hash. ARGV: provider, entry, n, the n key info fields to
# clear (all of the provider's), then the field/values to set. Keeps the first created_at.
PUT_KEY: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local p = ARGV[1]
local old = redis.call('HGET', KEYS[2], p)
local entry = ARGV[2]
if old then entry = string.sub(entry, 1, 1) .. string.sub(old, 2, 9) .. string.sub(entry, 10) end
redis.call('HSET', KEYS[2], p, entry)
local n = tonumber(ARGV[3])
redis.call('HDEL', KEYS[3], unpack(ARGV, 4, 3 + n))
if #ARGV > 3 + n then redis.call('HSET', KEYS[3], unpack(ARGV, 4 + n)) end
if old then return 1 end
return 0
"""

# KEYS: keys hash, key info hash. ARGV: provider, then its key info fields.
DELETE_KEY: Final = """
redis.call('HDEL', KEYS[2], unpack(ARGV, 2))
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# KEYS: keys hash, key info hash. ARGV: provider, record, status field, status, verified_at
# field, verified_at ('' to keep).
SET_STATUS: Final = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry or string.sub(entry, 18) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], ARGV[5], ARGV[6]) end
return 1
"""

# KEYS: keys hash, key info hash. ARGV: provider, last_used_at field, at.
TOUCH: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return 1
"""

# KEYS: keys hash. ARGV: provider, old record, new record. Keeps the entry's header.
REPLACE_KEY: Final = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry or string.sub(entry, 18) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], string.sub(entry, 1, 17) .. ARGV[3])
return 1
"""
