import { randomUUID } from 'node:crypto'
import { Redis, ReplyError, type RedisOptions } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import secureJson from 'secure-json-parse'
import { AUTH_FAILURE_WINDOW_MS, AuthFailureLog } from '../auth-failures.js'
import { InvalidOptionError, StoreUnavailableError } from '../errors.js'
import { addTo, removeFrom, sizes } from '../keyed-sets.js'
import { Revocations } from '../revocations.js'
import { MINUTE_MS, SECOND_MS, type RateLimits } from '../rate-window.js'
import { HeldRateCounter } from './held-counter.js'
import type { BroadcastEvent, MessageCounter, SecureWsStore, StoreContext, StoreStats } from './types.js'

export interface RedisStoreOptions {
  /** An ioredis client the app owns; the store never closes it. Give this or `url`. */
  client?: Redis
  /** A Redis URL; the store opens and closes its own clients. */
  url?: string
  /** Prefix of every key and channel the store uses. @default 'secure-ws:' */
  prefix?: string
  /** How long a connection slot outlives the instance that holds it, in ms. @default 30000 */
  leaseMs?: number
  /** How often message counts are exchanged with Redis, in ms. @default 50 */
  syncIntervalMs?: number
  /** How long one Redis call may take before the store counts Redis as unreachable, in ms. @default 1000 */
  commandTimeoutMs?: number
  /**
   * While Redis is unreachable, admit connections under this instance's own limits instead
   * of refusing them with 1013. Off by default: an outage must not lift the limits.
   * @default false
   */
  failOpen?: boolean
}

const DEFAULT_PREFIX = 'secure-ws:'
const DEFAULT_LEASE_MS = 30_000
const DEFAULT_SYNC_INTERVAL_MS = 50
const DEFAULT_COMMAND_TIMEOUT_MS = 1000
// Matches the local counter's buckets, so Redis and local sums cover the same spans.
const RATE_BUCKET_MS = 50
const RATE_SWEEP_MS = 10_000
const RENEW_BATCH = 500
// Users whose counts go to Redis in one script call; a sync sends as many calls as it needs.
const RATE_BATCH = 500

// Server time, so instances with skewed clocks agree on when a lease runs out.
const NOW_MS = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`

const ACQUIRE_LUA = `${NOW_MS}
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1`

const RENEW_LUA = `${NOW_MS}
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
return #KEYS`

// For each key: adds this instance's counts per 50 ms bucket, drops buckets past the windows
// and returns the totals of every instance over the last second (21 buckets) and minute (61
// buckets). One call carries every user a sync has counts for: ARGV is now's bucket, the
// keys' time to live, then per key the number of its (bucket, count) pairs and the pairs.
// A key that holds something other than a hash (another app writing under our prefix) is
// left alone and answered with -1, -1: one such key must not fail the other users' counts.
const RATE_LUA = `local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local nowMinute = math.floor(now / 20)
local totals = {}
local a = 3
for k = 1, #KEYS do
  local key = KEYS[k]
  local runs = tonumber(ARGV[a])
  a = a + 1
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'hash' and kind ~= 'none' then
    a = a + 2 * runs
    totals[2 * k - 1] = -1
    totals[2 * k] = -1
  else
    for r = 1, runs do
      local tick = tonumber(ARGV[a])
      local n = tonumber(ARGV[a + 1])
      a = a + 2
      redis.call('HINCRBY', key, 's' .. tick, n)
      redis.call('HINCRBY', key, 'm' .. math.floor(tick / 20), n)
    end
    local second, minute = 0, 0
    local fields = redis.call('HGETALL', key)
    for i = 1, #fields, 2 do
      local field = fields[i]
      local tick = tonumber(string.sub(field, 2))
      local n = tonumber(fields[i + 1])
      if string.sub(field, 1, 1) == 's' then
        if tick > now - 21 then second = second + n else redis.call('HDEL', key, field) end
      else
        if tick > nowMinute - 61 then minute = minute + n else redis.call('HDEL', key, field) end
      end
    end
    redis.call('PEXPIRE', key, ttl)
    totals[2 * k - 1] = second
    totals[2 * k] = minute
  end
end
return totals`

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

/** What instances tell each other: the plugin's events, and the store's own lockouts. */
type ChannelEvent = BroadcastEvent | { kind: 'lockout', address: string, forMs: number }

interface ScriptedRedis extends Redis {
  secureWsAuthFailure (key: string, limit: number, windowMs: number, member: string): Promise<[number, number]>
  secureWsAcquire (key: string, limit: number, member: string, leaseMs: number): Promise<number>
  secureWsRenew (...args: Array<string | number>): Promise<number>
  secureWsRate (...args: Array<string | number>): Promise<number[]>
  secureWsRevoke (key: string, issuedBefore: number, ttlMs: number): Promise<[string, number]>
  secureWsRevoked (key: string): Promise<[string, number]>
}

/**
 * One user's message counts: this instance's own, exact, and the others' as of the last sync.
 * The message path only counts locally and notes what Redis has not seen yet.
 */
class SharedRate extends HeldRateCounter {
  readonly redisKey: string
  /** Counts Redis has not seen, as runs of (50 ms bucket, count) in arrival order. */
  pendingTicks: number[] = []
  pendingCounts: number[] = []
  pendingCount = 0
  remoteSecond = 0
  remoteMinute = 0
  syncedAt = Number.NEGATIVE_INFINITY
  /** The store's set of counters with counts to send. */
  readonly #dirty: Set<SharedRate>

  constructor (redisKey: string, limits: Readonly<RateLimits>, dirty: Set<SharedRate>) {
    super(limits)
    this.redisKey = redisKey
    this.#dirty = dirty
  }

  consume (): boolean {
    const now = Date.now()
    const age = now - this.syncedAt
    if (!this.tryConsume(now, age <= SECOND_MS ? this.remoteSecond : 0, age <= MINUTE_MS ? this.remoteMinute : 0)) return false
    const tick = Math.floor(now / RATE_BUCKET_MS)
    const last = this.pendingTicks.length - 1
    if (last >= 0 && this.pendingTicks[last] === tick) {
      this.pendingCounts[last]!++
    } else {
      this.pendingTicks.push(tick)
      this.pendingCounts.push(1)
    }
    if (this.pendingCount++ === 0) this.#dirty.add(this)
    return true
  }

  /**
   * Idle also waits for the other instances' counts, as last heard, to stop applying: until
   * then the counter is refreshed once a second, so a user refused on their strength is let
   * back in once those counts have left the window, not up to a minute later.
   */
  override isIdle (now: number): boolean {
    return super.isIdle(now) && (this.remoteMinute === 0 || now - this.syncedAt > MINUTE_MS)
  }

  /** Counts Redis has not seen yet keep the counter too. */
  override canDrop (now: number): boolean {
    return super.canDrop(now) && this.pendingCount === 0
  }

  /** Appends the pending counts to a sync's arguments and forgets them. */
  takePending (args: number[]): void {
    args.push(this.pendingTicks.length)
    for (let i = 0; i < this.pendingTicks.length; i++) args.push(this.pendingTicks[i]!, this.pendingCounts[i]!)
    this.dropPending()
  }

  dropPending (): void {
    this.pendingTicks = []
    this.pendingCounts = []
    this.pendingCount = 0
  }
}

function positiveInteger (name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) throw new InvalidOptionError(`redisStore: ${name} must be a positive integer`)
  return value
}

const SILENT_LOG = { warn () {}, info () {}, error () {} } as unknown as FastifyBaseLogger

/**
 * Shares connection slots and message counts between every instance that uses one Redis.
 * Slots are leases in a sorted set, taken atomically by a Lua script and renewed while the
 * connection lives, so a dead instance's slots free themselves. Message checks stay local
 * and synchronous; counts are exchanged with Redis in the background (see README).
 */
export class RedisStore implements SecureWsStore {
  readonly #client: ScriptedRedis
  readonly #subscriber: Redis
  readonly #ownsClient: boolean
  readonly #prefix: string
  readonly #channel: string
  readonly #leaseMs: number
  readonly #syncIntervalMs: number
  readonly #commandTimeoutMs: number
  readonly #failOpen: boolean
  readonly #instanceId = randomUUID()
  /** Slots this instance holds: limit key → members. */
  readonly #held = new Map<string, Set<string>>()
  readonly #rates = new Map<string, SharedRate>()
  readonly #dirty = new Set<SharedRate>()
  /** Lockouts learnt from Redis and from the other instances; failures counted here during an outage. */
  readonly #authFailures = new AuthFailureLog()
  readonly #revocations = new Revocations()
  #lastFailureId = 0
  /** Slots released while Redis was unreachable, freed there once it is back. */
  #releasedWhileAway: Array<[key: string, member: string]> = []
  #log: FastifyBaseLogger = SILENT_LOG
  #deliver: ((event: BroadcastEvent) => void) | undefined
  #available = false
  #everReady = false
  #outageLogged = false
  #closed = false
  #syncing = false
  /** Rate keys found holding another type, each logged once. */
  readonly #foreignKeys = new Set<string>()
  /** A failing rate script is logged once until a sync succeeds again. */
  #syncErrorLogged = false
  #renewTimer: NodeJS.Timeout | undefined
  #syncTimer: NodeJS.Timeout | undefined
  #sweepTimer: NodeJS.Timeout | undefined
  #lastStaleScan = 0

  constructor (options: RedisStoreOptions) {
    if (typeof options !== 'object' || options === null) throw new InvalidOptionError('redisStore: options must be an object with client or url')
    if ((options.client === undefined) === (options.url === undefined)) throw new InvalidOptionError('redisStore: give exactly one of client or url')
    if (options.url !== undefined && typeof options.url !== 'string') throw new InvalidOptionError('redisStore: url must be a string')
    if (options.prefix !== undefined && typeof options.prefix !== 'string') throw new InvalidOptionError('redisStore: prefix must be a string')
    if (options.failOpen !== undefined && typeof options.failOpen !== 'boolean') throw new InvalidOptionError('redisStore: failOpen must be a boolean')
    this.#leaseMs = positiveInteger('leaseMs', options.leaseMs, DEFAULT_LEASE_MS)
    this.#syncIntervalMs = positiveInteger('syncIntervalMs', options.syncIntervalMs, DEFAULT_SYNC_INTERVAL_MS)
    this.#commandTimeoutMs = positiveInteger('commandTimeoutMs', options.commandTimeoutMs, DEFAULT_COMMAND_TIMEOUT_MS)
    this.#failOpen = options.failOpen === true
    this.#prefix = options.prefix ?? DEFAULT_PREFIX
    this.#channel = `${this.#prefix}events`

    // Commands fail at once while Redis is away instead of queueing; reconnects keep trying.
    const clientOptions: RedisOptions = {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (times) => Math.min(times * 100, 1000)
    }
    this.#ownsClient = options.client === undefined
    const client = options.client ?? new Redis(options.url!, clientOptions)
    this.#client = client as ScriptedRedis
    this.#subscriber = client.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, retryStrategy: clientOptions.retryStrategy })
    client.defineCommand('secureWsAcquire', { numberOfKeys: 1, lua: ACQUIRE_LUA })
    client.defineCommand('secureWsRenew', { lua: RENEW_LUA })
    client.defineCommand('secureWsRate', { lua: RATE_LUA })
    client.defineCommand('secureWsAuthFailure', { numberOfKeys: 1, lua: AUTH_FAILURE_LUA })
    client.defineCommand('secureWsRevoke', { numberOfKeys: 1, lua: REVOKE_LUA })
    client.defineCommand('secureWsRevoked', { numberOfKeys: 1, lua: REVOKED_LUA })

    client.on('ready', this.#onReady)
    client.on('error', this.#onDown)
    client.on('close', this.#onDown)
    // The subscriber reports the same outages; its errors only need a listener.
    this.#subscriber.on('error', () => {})
    // Revocations broadcast while the subscriber was away were missed: forget what is known
    // here and ask Redis again.
    this.#subscriber.on('ready', () => { this.#revocations.clear() })
    this.#subscriber.on('message', this.#onEvent)
    if (client.status === 'ready') this.#onReady()
  }

  init (context: StoreContext): void {
    this.#log = context.log
    this.#deliver = context.deliver
    this.#subscriber.subscribe(this.#channel).catch((err: unknown) => {
      this.#log.error({ err }, 'fastify-secure-ws: redis store could not subscribe to its event channel')
    })
  }

  async acquireSlot (key: string, connectionId: string, limit: number): Promise<boolean> {
    const member = `${this.#instanceId}:${connectionId}`
    if (!(await this.#usable())) {
      if (!this.#failOpen) throw new StoreUnavailableError('redis is unreachable')
      // Fail-open: this instance's own count is all there is until Redis returns.
      if ((this.#held.get(key)?.size ?? 0) >= limit) return false
      this.#hold(key, member)
      return true
    }
    let acquired: number
    try {
      // Slots let go of while Redis did not answer must not count against this user now.
      await this.#freeReleasedWhileAway()
      acquired = await this.#timed(this.#client.secureWsAcquire(this.#slotKey(key), limit, member, this.#leaseMs))
    } catch (err) {
      throw new StoreUnavailableError((err as Error).message)
    }
    if (acquired !== 1) return false
    this.#hold(key, member)
    return true
  }

  async releaseSlot (key: string, connectionId: string): Promise<void> {
    const member = `${this.#instanceId}:${connectionId}`
    if (!removeFrom(this.#held, key, member)) return
    if (this.#held.size === 0) this.#stopRenewing()
    // While Redis is away, remember the release: if Redis kept its data, the lease would
    // otherwise hold the user's slot until it runs out.
    if (!this.#available) {
      this.#releasedWhileAway.push([key, member])
      return
    }
    await this.#timed(this.#client.zrem(this.#slotKey(key), member)).catch(() => {
      this.#releasedWhileAway.push([key, member])
    })
  }

  holdCounter (key: string, limits: Readonly<RateLimits>): MessageCounter {
    let rate = this.#rates.get(key)
    if (rate === undefined) {
      rate = new SharedRate(`${this.#prefix}rate:${key}`, limits, this.#dirty)
      this.#rates.set(key, rate)
      this.#startSyncing()
      this.#startSweeping()
    }
    return rate.hold()
  }

  async recordAuthFailure (address: string, limit: number): Promise<number> {
    this.#startSweeping()
    if (!this.#available) return this.#authFailures.record(address, limit, Date.now())
    let answer: [number, number]
    try {
      // Hash-tagged by address, so the key has a slot of its own on a Redis Cluster.
      const key = `${this.#prefix}authfail:{${address}}`
      answer = await this.#timed(this.#client.secureWsAuthFailure(key, limit, AUTH_FAILURE_WINDOW_MS, `${this.#instanceId}:${++this.#lastFailureId}`))
    } catch {
      return this.#authFailures.record(address, limit, Date.now())
    }
    const [redisUntil, redisNow] = answer
    if (redisUntil === 0) return 0
    const until = Date.now() + (redisUntil - redisNow)
    this.#authFailures.lock(address, until)
    // The other instances lock the address out too; one that misses this learns it from
    // Redis at the address's next failure there.
    this.#publish({ kind: 'lockout', address, forMs: redisUntil - redisNow }).catch(() => {})
    return until
  }

  lockedOutUntil (address: string): number {
    return this.#authFailures.lockedOutUntil(address, Date.now())
  }

  async revokeUser (userId: string, issuedBefore: number, ttlMs: number): Promise<void> {
    if (!(await this.#usable())) throw new StoreUnavailableError('redis is unreachable')
    let answer: [string, number]
    try {
      answer = await this.#timed(this.#client.secureWsRevoke(this.#revocationKey(userId), issuedBefore, ttlMs))
    } catch (err) {
      throw new StoreUnavailableError((err as Error).message)
    }
    this.#remember(userId, answer)
  }

  /**
   * A revocation known here is final until it expires: later ones reach this instance as
   * `revoke` events, which drop what it knew. Anything else is asked of Redis, so an instance
   * that started after a logout still refuses the old credentials.
   */
  revokedBefore (userId: string): number | Promise<number> {
    const known = this.#revocations.revokedBefore(userId, Date.now())
    if (known > 0) return known
    return this.#readRevocation(userId)
  }

  async #readRevocation (userId: string): Promise<number> {
    if (!(await this.#usable())) throw new StoreUnavailableError('redis is unreachable')
    let answer: [string, number]
    try {
      answer = await this.#timed(this.#client.secureWsRevoked(this.#revocationKey(userId)))
    } catch (err) {
      throw new StoreUnavailableError((err as Error).message)
    }
    return this.#remember(userId, answer)
  }

  /** Keeps what Redis answered for `userId` (a revocation and its time to live); returns it. */
  #remember (userId: string, [value, ttlMs]: [string, number]): number {
    const issuedBefore = Number(value)
    if (!(issuedBefore > 0 && ttlMs > 0)) return 0
    this.#revocations.revoke(userId, issuedBefore, Date.now() + ttlMs)
    this.#startSweeping()
    return issuedBefore
  }

  #revocationKey (userId: string): string {
    // Hash-tagged by user, so the key has a slot of its own on a Redis Cluster.
    return `${this.#prefix}revoked:{${userId}}`
  }

  async broadcast (event: BroadcastEvent): Promise<void> {
    await this.#publish(event)
  }

  async #publish (event: ChannelEvent): Promise<void> {
    if (!this.#available) throw new StoreUnavailableError('redis is unreachable')
    try {
      await this.#timed(this.#client.publish(this.#channel, JSON.stringify({ origin: this.#instanceId, event })))
    } catch (err) {
      throw new StoreUnavailableError((err as Error).message)
    }
  }

  stats (): StoreStats {
    return { slots: sizes(this.#held), rateCounters: this.#rates.size, authFailureAddresses: this.#authFailures.size, revocations: this.#revocations.size }
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#stopRenewing()
    clearInterval(this.#syncTimer)
    clearInterval(this.#sweepTimer)
    this.#syncTimer = undefined
    this.#sweepTimer = undefined
    if (this.#available && this.#held.size > 0) {
      const pipeline = this.#client.pipeline()
      for (const [key, members] of this.#held) pipeline.zrem(this.#slotKey(key), ...members)
      await this.#timed(pipeline.exec()).catch(() => {})
    }
    this.#held.clear()
    this.#rates.clear()
    this.#dirty.clear()
    this.#authFailures.clear()
    this.#revocations.clear()
    this.#client.off('ready', this.#onReady)
    this.#client.off('error', this.#onDown)
    this.#client.off('close', this.#onDown)
    this.#subscriber.disconnect()
    if (this.#ownsClient) this.#client.disconnect()
  }

  #slotKey (key: string): string {
    return `${this.#prefix}slots:${key}`
  }

  #hold (key: string, member: string): void {
    addTo(this.#held, key, member)
    if (this.#renewTimer === undefined) {
      this.#renewTimer = setInterval(() => { this.#renew() }, Math.max(1, Math.floor(this.#leaseMs / 3)))
      this.#renewTimer.unref()
    }
  }

  #stopRenewing (): void {
    clearInterval(this.#renewTimer)
    this.#renewTimer = undefined
  }

  /** True when Redis answers; before the first connection, waits up to the command timeout. */
  async #usable (): Promise<boolean> {
    if (this.#available) return true
    if (this.#everReady || this.#closed) return false
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        this.#client.off('ready', done)
        resolve()
      }
      const timer = setTimeout(done, this.#commandTimeoutMs)
      this.#client.once('ready', done)
    })
    return this.#available
  }

  #timed<T> (promise: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`redis did not answer within ${this.#commandTimeoutMs} ms`)), this.#commandTimeoutMs)
    })
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
  }

  readonly #onReady = (): void => {
    if (this.#available) return
    this.#available = true
    if (this.#everReady && this.#outageLogged) this.#log.info('fastify-secure-ws: redis store reachable again')
    this.#everReady = true
    this.#outageLogged = false
    // Leases may have run out during the outage; put back what this instance still holds,
    // and free what it let go of meanwhile.
    this.#renew()
    this.#freeReleasedWhileAway().catch(() => {})
  }

  /** Frees in Redis the slots released while it did not answer; kept for later if it still does not. */
  async #freeReleasedWhileAway (): Promise<void> {
    const released = this.#releasedWhileAway
    if (released.length === 0) return
    this.#releasedWhileAway = []
    const pipeline = this.#client.pipeline()
    for (const [key, member] of released) pipeline.zrem(this.#slotKey(key), member)
    try {
      await this.#timed(pipeline.exec())
    } catch (err) {
      this.#releasedWhileAway.push(...released)
      throw err
    }
  }

  readonly #onDown = (err?: unknown): void => {
    this.#available = false
    if (this.#outageLogged || this.#closed) return
    this.#outageLogged = true
    const message = err instanceof Error ? err.message : 'connection closed'
    this.#log.warn({ reason: message }, 'fastify-secure-ws: redis store unreachable; refusing new connections until it returns')
  }

  readonly #onEvent = (channel: string, raw: string): void => {
    if (channel !== this.#channel || this.#deliver === undefined) return
    let message: { origin?: unknown, event?: ChannelEvent }
    try {
      message = secureJson.parse(raw, null, { protoAction: 'remove', constructorAction: 'remove' })
    } catch {
      return
    }
    // This instance already delivered its own events locally.
    if (message.origin === this.#instanceId || typeof message.event !== 'object' || message.event === null) return
    const event = message.event
    if (event.kind === 'lockout') {
      // Sent as a duration, so the instances' clocks need not agree.
      if (typeof event.address === 'string' && typeof event.forMs === 'number' && event.forMs > 0 && event.forMs <= AUTH_FAILURE_WINDOW_MS) {
        this.#authFailures.lock(event.address, Date.now() + event.forMs)
        this.#startSweeping()
      }
      return
    }
    // Redis keeps the latest revocation, so a known one is raised to this one (an expiry of 0
    // keeps the known one's); one not known here is read from Redis at the next connect.
    if (event.kind === 'revoke' && typeof event.userId === 'string' && typeof event.issuedBefore === 'number' &&
      this.#revocations.revokedBefore(event.userId, Date.now()) > 0) {
      this.#revocations.revoke(event.userId, event.issuedBefore, 0)
    }
    this.#deliver(event)
  }

  #renew (): void {
    if (!this.#available || this.#held.size === 0) return
    let keys: string[] = []
    let members: string[] = []
    const flush = (): void => {
      this.#timed(this.#client.secureWsRenew(keys.length, ...keys, this.#leaseMs, ...members)).catch(() => {})
      keys = []
      members = []
    }
    for (const [key, held] of this.#held) {
      for (const member of held) {
        keys.push(this.#slotKey(key))
        members.push(member)
        if (keys.length === RENEW_BATCH) flush()
      }
    }
    if (keys.length > 0) flush()
  }

  #startSyncing (): void {
    if (this.#syncTimer !== undefined || this.#closed) return
    this.#syncTimer = setInterval(() => { this.#sync() }, this.#syncIntervalMs)
    this.#syncTimer.unref()
  }

  #startSweeping (): void {
    if (this.#sweepTimer !== undefined || this.#closed) return
    this.#sweepTimer = setInterval(() => {
      const now = Date.now()
      for (const [key, rate] of this.#rates) {
        if (rate.canDrop(now)) this.#rates.delete(key)
      }
      this.#authFailures.sweep(now)
      this.#revocations.sweep(now)
      if (this.#rates.size === 0 && this.#authFailures.size === 0 && this.#revocations.size === 0) {
        clearInterval(this.#sweepTimer)
        clearInterval(this.#syncTimer)
        this.#sweepTimer = undefined
        this.#syncTimer = undefined
      }
    }, RATE_SWEEP_MS)
    this.#sweepTimer.unref()
  }

  /** Sends the counts taken since the last sync and learns what the other instances counted. */
  #sync (): void {
    if (this.#syncing) return
    const now = Date.now()
    // Once a second, also refresh users active here this minute whose counts are stale, so
    // bursts on other instances are seen before this one accepts more.
    if (now - this.#lastStaleScan >= SECOND_MS) {
      this.#lastStaleScan = now
      for (const rate of this.#rates.values()) {
        if (now - rate.syncedAt >= SECOND_MS && !rate.isIdle(now)) this.#dirty.add(rate)
      }
    }
    if (this.#dirty.size === 0) return
    const batch = [...this.#dirty]
    this.#dirty.clear()
    if (!this.#available) {
      // During an outage every instance counts alone; counts taken meanwhile are not replayed.
      for (const rate of batch) rate.dropPending()
      return
    }
    const nowTick = Math.floor(now / RATE_BUCKET_MS)
    const calls: Array<Promise<void>> = []
    for (let start = 0; start < batch.length; start += RATE_BATCH) {
      const part = batch.slice(start, start + RATE_BATCH)
      const args: number[] = [nowTick, MINUTE_MS * 2]
      for (const rate of part) rate.takePending(args)
      const call = this.#client.secureWsRate(part.length, ...part.map((rate) => rate.redisKey), ...args)
      calls.push(this.#timed(call).then((totals) => {
        this.#syncErrorLogged = false
        if (Array.isArray(totals)) this.#learn(part, totals)
      }, this.#syncFailed))
    }
    this.#syncing = true
    Promise.all(calls).finally(() => { this.#syncing = false })
  }

  // The counts of a failed sync are lost and each instance counts alone until the next one.
  // A timeout or a lost connection is an outage, which #onDown reports; an error Redis
  // answered (out of memory, a script error) is reported here.
  readonly #syncFailed = (err: unknown): void => {
    if (!(err instanceof ReplyError) || this.#syncErrorLogged || this.#closed) return
    this.#syncErrorLogged = true
    this.#log.error({ err }, 'fastify-secure-ws: redis store could not sync message counts; each instance counts alone until it can')
  }

  /** Takes in what Redis counted for each user of a sync, every instance together. */
  #learn (part: SharedRate[], totals: number[]): void {
    const at = Date.now()
    for (let i = 0; i < part.length; i++) {
      const rate = part[i]!
      const second = totals[2 * i]
      const minute = totals[2 * i + 1]
      if (typeof second !== 'number' || typeof minute !== 'number') continue
      if (second < 0) {
        if (!this.#foreignKeys.has(rate.redisKey)) {
          this.#foreignKeys.add(rate.redisKey)
          this.#log.error({ key: rate.redisKey }, 'fastify-secure-ws: redis store found another type of value under a rate key; that user\'s message counts stay local to each instance')
        }
        continue
      }
      // Redis totals include what this instance sent; what it counted since is still pending.
      rate.remoteSecond = Math.max(0, second - (rate.second.count(at) - rate.pendingCount))
      rate.remoteMinute = Math.max(0, minute - (rate.minute.count(at) - rate.pendingCount))
      rate.syncedAt = at
    }
  }
}

/** A store shared by every instance that uses the same Redis (and `prefix`). */
export function redisStore (options: RedisStoreOptions): RedisStore {
  return new RedisStore(options)
}
