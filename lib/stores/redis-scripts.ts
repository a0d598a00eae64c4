import type { Cluster, Redis } from 'ioredis'

// Every script touches the keys of one user or one address only, each hash-tagged (`{...}`),
// so on a Redis Cluster a call never spans two slots.

// Server time, so instances with skewed clocks agree on when a lease runs out.
const NOW_MS = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`

// Answers 1 and Redis's time when the slot was taken, 0 when the user holds `limit` already,
// -1 when the call arrived after its deadline (ARGV[4], Redis time; 0 for none): the caller
// has given up on it and refused the connection, so a late call must not take a slot.
const ACQUIRE_LUA = `${NOW_MS}
local deadline = tonumber(ARGV[4])
if deadline > 0 and now > deadline then return {-1, now} end
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return {0, now} end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {1, now}`

// Renews the leases of KEYS[i]'s member ARGV[i + 2], from now on. A member no longer there
// lost its slot (its lease ran out and someone took the room): it is not put back, unless
// ARGV[2] marks it as one to add (a slot admitted while Redis was away, fail-open).
// Answers Redis's time and the positions of the members that were lost.
const RENEW_LUA = `${NOW_MS}
local lease = tonumber(ARGV[1])
local add = ARGV[2]
local answer = {now}
for i = 1, #KEYS do
  local member = ARGV[i + 2]
  if string.sub(add, i, i) == '1' or redis.call('ZSCORE', KEYS[i], member) then
    redis.call('ZADD', KEYS[i], now + lease, member)
    redis.call('PEXPIRE', KEYS[i], lease * 2)
  else
    answer[#answer + 1] = i
  end
end
return answer`

/**
 * Adds instances' message counts and answers every instance's together. Per user two hashes:
 * `:s` holds the second window, a count per 50 ms tick (field: the tick), the last 20 ticks
 * kept; `:m` holds the minute window, a count per second (field `m<second>`) with their sum
 * `n` over the seconds from `lo` on, kept current as seconds leave (so a call reads a few
 * fields, not sixty). Ticks and seconds are on Redis's clock; counts for a tick outside a
 * window (late, or ahead of Redis's clock) are not counted in it, so each window's total is
 * what happened inside it.
 *
 * ARGV: the caller's instance id, then per user the number of (tick, count) runs and the
 * runs. KEYS: per user, `:s`, `:m` and the user's slots. Answers Redis's time, then per user:
 * the number of (tick, count) pairs of the second window, the pairs, the minute's total, the
 * count of its oldest second, and 1 when the call counted messages while another instance
 * holds a slot of the user's (it should hear of them), else 0. A user whose keys hold another
 * type (another app writing under the prefix) is answered -1 and skipped; the others' counts
 * go through.
 */
const RATE_LUA = `${NOW_MS}
local T = math.floor(now / 50)
local S = math.floor(T / 20)
local lo = S - 59
local out = {now}
local self = ARGV[1]
local a = 2
for k = 1, #KEYS, 3 do
  local sk = KEYS[k]
  local mk = KEYS[k + 1]
  local runs = tonumber(ARGV[a])
  a = a + 1
  local fields = redis.pcall('HGETALL', sk)
  local head = redis.pcall('HMGET', mk, 'lo', 'n')
  if fields.err or head.err then
    a = a + 2 * runs
    out[#out + 1] = -1
  else
    local counts = {}
    local stale = {}
    for i = 1, #fields, 2 do
      local tick = tonumber(fields[i])
      if tick and tick > T - 20 then counts[tick] = tonumber(fields[i + 1]) else stale[#stale + 1] = fields[i] end
    end
    if #stale > 0 then redis.call('HDEL', sk, unpack(stale)) end
    local was = tonumber(head[1])
    local n = tonumber(head[2]) or 0
    if was == nil or lo - was > 60 then
      if was ~= nil then redis.call('DEL', mk) end
      n = 0
    elseif lo > was then
      local names = {}
      for s = was, lo - 1 do names[#names + 1] = 'm' .. s end
      local gone = redis.call('HMGET', mk, unpack(names))
      for i = 1, #gone do
        if gone[i] then n = n - tonumber(gone[i]) end
      end
      redis.call('HDEL', mk, unpack(names))
    end
    local wrote = false
    for r = 1, runs do
      local tick = tonumber(ARGV[a])
      local c = tonumber(ARGV[a + 1])
      a = a + 2
      if tick <= T and tick > T - 20 then
        counts[tick] = (counts[tick] or 0) + c
        redis.call('HINCRBY', sk, tick, c)
        wrote = true
      end
      local s = math.floor(tick / 20)
      if s <= S and s >= lo then
        redis.call('HINCRBY', mk, 'm' .. s, c)
        n = n + c
      end
    end
    if wrote then redis.call('PEXPIRE', sk, 2000) end
    if runs > 0 or (was ~= nil and was ~= lo) then
      redis.call('HSET', mk, 'lo', lo, 'n', n)
      redis.call('PEXPIRE', mk, 62000)
    end
    local at = #out + 1
    out[at] = 0
    for tick, c in pairs(counts) do
      out[#out + 1] = tick
      out[#out + 1] = c
      out[at] = out[at] + 1
    end
    out[#out + 1] = n
    out[#out + 1] = tonumber(redis.call('HGET', mk, 'm' .. lo)) or 0
    local shared = 0
    if runs > 0 then
      local holders = redis.pcall('ZRANGE', KEYS[k + 2], 0, -1)
      if not holders.err then
        for i = 1, #holders do
          if string.sub(holders[i], 1, #self) ~= self then
            shared = 1
            break
          end
        end
      end
    end
    out[#out + 1] = shared
  end
end
return out`

// One failed authentication from an address: a sorted set of failure times per address, on
// Redis's clock. Answers until when the address is locked out (0 if not) and Redis's now,
// so the instance can carry the lockout over to its own clock.
const AUTH_FAILURE_LUA = `${NOW_MS}
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then return {0, now} end
local oldest = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
return {tonumber(oldest[2]) + window, now}`

// A user's revocation: the latest `issuedBefore` wins, and the key lives as long as the
// longest revocation asked for. Answers what is now in force and for how long, in ms.
const REVOKE_LUA = `local current = redis.call('GET', KEYS[1])
local value = ARGV[1]
if current and tonumber(current) >= tonumber(value) then value = current end
local ttl = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left > ttl then ttl = left end
redis.call('SET', KEYS[1], value, 'PX', ttl)
return {value, ttl}`

// One read of a user's revocation and its time to live: one round trip per upgrade.
const REVOKED_LUA = `local value = redis.call('GET', KEYS[1])
if not value then return {'0', 0} end
return {value, redis.call('PTTL', KEYS[1])}`

/** The store's scripts, as ioredis commands on its client. */
export interface Scripts {
  secureWsAcquire (key: string, limit: number, member: string, leaseMs: number, deadline: number): Promise<[number, number]>
  secureWsRenew (...args: Array<string | number>): Promise<number[]>
  secureWsRate (...args: Array<string | number>): Promise<number[]>
  secureWsAuthFailure (key: string, limit: number, windowMs: number, member: string): Promise<[number, number]>
  secureWsRevoke (key: string, issuedBefore: number, ttlMs: number): Promise<[string, number]>
  secureWsRevoked (key: string): Promise<[string, number]>
}

export type ScriptedClient = (Redis | Cluster) & Scripts

/** Defines the scripts on `client` (EVALSHA, loaded on first use on each node). */
export function defineScripts (client: Redis | Cluster): ScriptedClient {
  client.defineCommand('secureWsAcquire', { numberOfKeys: 1, lua: ACQUIRE_LUA })
  client.defineCommand('secureWsRenew', { lua: RENEW_LUA })
  client.defineCommand('secureWsRate', { lua: RATE_LUA })
  client.defineCommand('secureWsAuthFailure', { numberOfKeys: 1, lua: AUTH_FAILURE_LUA })
  client.defineCommand('secureWsRevoke', { numberOfKeys: 1, lua: REVOKE_LUA })
  client.defineCommand('secureWsRevoked', { numberOfKeys: 1, lua: REVOKED_LUA })
  return client as ScriptedClient
}
