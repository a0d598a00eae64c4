import { randomUUID } from 'node:crypto'
import type { Cluster, Redis } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import secureJson from 'secure-json-parse'
import { AUTH_FAILURE_WINDOW_MS, AuthFailureLog } from '../auth-failures.js'
import { InvalidOptionError, StoreUnavailableError } from '../errors.js'
import { Revocations } from '../revocations.js'
import type { RateLimits } from '../rate-window.js'
import { openClients, type RedisNode } from './redis-clients.js'
import { Health, RedisTimeoutError } from './redis-health.js'
import { RedisClock } from './redis-clock.js'
import { batches } from './redis-cluster.js'
import { Leases } from './redis-leases.js'
import { RateSync, type Exceeded } from './redis-rate.js'
import { defineScripts, type ScriptedClient } from './redis-scripts.js'
import type { BroadcastEvent, MessageCounter, SecureWsStore, StoreContext, StoreStats } from './types.js'

export interface RedisStoreOptions {
  /**
   * An ioredis client the app owns, `Redis` or `Cluster`; the store never closes it. Give
   * this, `url` or `nodes`.
   */
  client?: Redis | Cluster
  /**
   * A Redis URL; the store opens and closes its own clients. Several, comma-separated, are
   * the seed nodes of a Redis Cluster.
   */
  url?: string
  /** The seed nodes of a Redis Cluster (`host:port`, URLs or `{ host, port }`); the store opens and closes its own clients. */
  nodes?: RedisNode[]
  /** Prefix of every key and channel the store uses. @default 'secure-ws:' */
  prefix?: string
  /** How long a connection slot outlives the instance that holds it, in ms. @default 30000 */
  leaseMs?: number
  /** How often message counts are exchanged with Redis, in ms. @default 50 */
  syncIntervalMs?: number
  /** How long one Redis call may take before the store counts Redis as unreachable, in ms. @default 1000 */
  commandTimeoutMs?: number
  /**
   * While Redis is unreachable, admit connections under this instance's own limits, and
   * against the revocations it knows, instead of refusing them with 1013. Off by default: an
   * outage must not lift the limits.
   * @default false
   */
  failOpen?: boolean
  /** Clock in ms since the epoch; for tests. @default Date.now */
  now?: () => number
}

const DEFAULT_PREFIX = 'secure-ws:'
const DEFAULT_LEASE_MS = 30_000
const DEFAULT_SYNC_INTERVAL_MS = 50
const DEFAULT_COMMAND_TIMEOUT_MS = 1000
// Leases renewed in one script call.
const RENEW_BATCH = 500
// Lockouts and revocations known here are swept this often.
const SWEEP_MS = 10_000
// Users whose counts go to Redis in one script call; a sync sends as many calls as it needs.
const RATE_BATCH = 250

/** What instances tell each other: the plugin's events, and the store's own. */
type ChannelEvent = BroadcastEvent |
  { kind: 'lockout', address: string, forMs: number } |
  { kind: 'revocation', userId: string, issuedBefore: number, forMs: number } |
  { kind: 'rateExceeded', key: string, window: Exceeded['window'], at: number } |
  { kind: 'counted', keys: string[] }

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
  readonly #client: ScriptedClient
  readonly #subscriber: Redis | Cluster
  readonly #ownsClient: boolean
  readonly #prefix: string
  readonly #channel: string
  readonly #leaseMs: number
  readonly #commandTimeoutMs: number
  readonly #failOpen: boolean
  readonly #instanceId = randomUUID()
  readonly #leases: Leases
  /** Whether the client is a Redis Cluster: calls are then grouped by hash slot. */
  readonly #cluster: boolean
  readonly #clock: RedisClock
  readonly #rates: RateSync
  /** Lockouts learnt from Redis and from the other instances; failures counted here during an outage. */
  readonly #authFailures = new AuthFailureLog()
  readonly #revocations = new Revocations()
  #lastFailureId = 0
  #log: FastifyBaseLogger = SILENT_LOG
  readonly #health: Health
  #closed = false
  #context: StoreContext | undefined
  #sweepTimer: NodeJS.Timeout | undefined

  constructor (options: RedisStoreOptions) {
    if (typeof options !== 'object' || options === null) throw new InvalidOptionError('redisStore: options must be an object with client, url or nodes')
    // A `{` would make the prefix the hash tag of every key: one Redis Cluster slot for all.
    if (options.prefix !== undefined && (typeof options.prefix !== 'string' || options.prefix.includes('{'))) throw new InvalidOptionError('redisStore: prefix must be a string without "{"')
    if (options.failOpen !== undefined && typeof options.failOpen !== 'boolean') throw new InvalidOptionError('redisStore: failOpen must be a boolean')
    if (options.now !== undefined && typeof options.now !== 'function') throw new InvalidOptionError('redisStore: now must be a function')
    this.#leaseMs = positiveInteger('leaseMs', options.leaseMs, DEFAULT_LEASE_MS)
    this.#commandTimeoutMs = positiveInteger('commandTimeoutMs', options.commandTimeoutMs, DEFAULT_COMMAND_TIMEOUT_MS)
    this.#failOpen = options.failOpen === true
    this.#prefix = options.prefix ?? DEFAULT_PREFIX
    this.#channel = `${this.#prefix}events`

    const syncIntervalMs = positiveInteger('syncIntervalMs', options.syncIntervalMs, DEFAULT_SYNC_INTERVAL_MS)
    const { client, subscriber, owned, cluster } = openClients(options)
    this.#ownsClient = owned
    this.#cluster = cluster
    this.#client = defineScripts(client)
    this.#subscriber = subscriber
    this.#clock = new RedisClock(options.now ?? Date.now)
    this.#health = new Health({
      log: () => this.#log,
      failOpen: this.#failOpen,
      // A write, so that a node demoted to replica by a failover (READONLY) does not pass for back.
      probe: () => this.#timed(this.#client.set(`${this.#prefix}probe:{${this.#instanceId}}`, '1', 'PX', 1000)),
      probeMs: Math.min(1000, this.#commandTimeoutMs),
      // Leases may have run out meanwhile: renew what this instance still holds, and free what it let go of.
      reachable: () => { this.#leases.onReachable() }
    })
    this.#rates = new RateSync({
      client: this.#client,
      clock: this.#clock,
      instanceId: this.#instanceId,
      keys: (key) => ({ second: `${this.#prefix}rate:{${key}}:s`, minute: `${this.#prefix}rate:{${key}}:m`, slots: this.#slotKey(key) }),
      syncIntervalMs,
      log: () => this.#log,
      available: () => this.#health.available,
      timed: (promise) => this.#timed(promise),
      calls: (rates) => batches(rates, (rate) => rate.secondKey, RATE_BATCH, this.#cluster),
      exceeded: (key) => { this.#context?.rateExceeded(key) },
      announce: (key, exceeded) => {
        this.#publish({ kind: 'rateExceeded', key, window: exceeded.window, at: exceeded.at }).catch(() => {})
      },
      announceCounted: (keys) => {
        this.#publish({ kind: 'counted', keys }).catch(() => {})
      }
    })
    this.#leases = new Leases({
      client: this.#client,
      clock: this.#clock,
      leaseMs: this.#leaseMs,
      commandTimeoutMs: this.#commandTimeoutMs,
      available: () => this.#health.available,
      timed: (promise) => this.#timed(promise),
      slotKey: (key) => this.#slotKey(key),
      calls: (items, keyOf) => batches(items, keyOf, RENEW_BATCH, this.#cluster),
      slotsLost: (slots) => { this.#context?.slotsLost(slots) }
    }, this.#instanceId)

    client.on('ready', this.#health.up)
    client.on('error', this.#health.down)
    client.on('close', this.#health.down)
    // The subscriber reports the same outages; its errors only need a listener.
    this.#subscriber.on('error', () => {})
    // Revocations broadcast while the subscriber was away were missed: forget what is known
    // here and ask Redis again. (Its first connection missed nothing this instance knows.)
    let subscribed = false
    this.#subscriber.on('ready', () => {
      if (subscribed) this.#revocations.clear()
      subscribed = true
    })
    this.#subscriber.on('message', this.#onEvent)
    if (client.status === 'ready') this.#health.up()
  }

  init (context: StoreContext): void {
    this.#log = context.log
    this.#context = context
    this.#subscriber.subscribe(this.#channel).catch((err: unknown) => {
      this.#log.error({ err }, 'fastify-secure-ws: redis store could not subscribe to its event channel')
    })
  }

  async acquireSlot (key: string, connectionId: string, limit: number): Promise<boolean> {
    if (!(await this.#usable())) {
      if (!this.#failOpen) throw new StoreUnavailableError('redis is unreachable')
      // Fail-open: this instance's own count is all there is until Redis returns.
      if (this.#leases.count(key) >= limit) return false
      this.#leases.holdLocally(key, connectionId)
      return true
    }
    try {
      return await this.#leases.acquire(key, connectionId, limit)
    } catch (err) {
      throw new StoreUnavailableError((err as Error).message)
    }
  }

  async releaseSlot (key: string, connectionId: string): Promise<void> {
    await this.#leases.release(key, connectionId)
  }

  holdCounter (key: string, limits: Readonly<RateLimits>): MessageCounter {
    return this.#rates.hold(key, limits)
  }

  async recordAuthFailure (address: string, limit: number): Promise<number> {
    this.#startSweeping()
    // Right after start the client may still be connecting: a failure counted only here
    // then would never reach the other instances' count.
    if (!(await this.#usable())) return this.#authFailures.record(address, limit, Date.now())
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
    const known = this.#remember(userId, answer)
    // The instances running now keep it in memory too: a logout Redis loses in a failover
    // (replication is asynchronous) is still enforced by every instance that heard of it.
    if (known > 0) this.#publish({ kind: 'revocation', userId, issuedBefore: known, forMs: answer[1] }).catch(() => {})
  }

  /**
   * A revocation known here is final until it expires: later ones reach this instance as
   * `revocation` events, which raise what it knew. Anything else is asked of Redis, so an
   * instance that started after a logout still refuses the old credentials.
   */
  revokedBefore (userId: string): number | Promise<number> {
    const known = this.#revocations.revokedBefore(userId, Date.now())
    if (known > 0) return known
    return this.#readRevocation(userId)
  }

  async #readRevocation (userId: string): Promise<number> {
    let answer: [string, number]
    try {
      if (!(await this.#usable())) throw new Error('redis is unreachable')
      answer = await this.#timed(this.#client.secureWsRevoked(this.#revocationKey(userId)))
    } catch (err) {
      // Fail-open: the revocations this instance knows (checked before) are all there is.
      if (this.#failOpen) return 0
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
    if (!this.#health.available) throw new StoreUnavailableError('redis is unreachable')
    try {
      await this.#timed(this.#client.publish(this.#channel, JSON.stringify({ origin: this.#instanceId, event })))
    } catch (err) {
      throw new StoreUnavailableError((err as Error).message)
    }
  }

  stats (): StoreStats {
    return { available: this.#health.available, slots: this.#leases.sizes(), rateCounters: this.#rates.size, authFailureAddresses: this.#authFailures.size, revocations: this.#revocations.size }
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#sweepTimer)
    this.#sweepTimer = undefined
    this.#rates.close()
    await this.#leases.close()
    this.#authFailures.clear()
    this.#revocations.clear()
    this.#health.close()
    this.#client.off('ready', this.#health.up)
    this.#client.off('error', this.#health.down)
    this.#client.off('close', this.#health.down)
    this.#subscriber.disconnect()
    if (this.#ownsClient) this.#client.disconnect()
  }

  #slotKey (key: string): string {
    // Hash-tagged like the user's rate keys: the rate script reads who holds slots.
    return `${this.#prefix}slots:{${key}}`
  }

  /** True when Redis answers; before the first connection, waits up to the command timeout. */
  async #usable (): Promise<boolean> {
    if (this.#health.available) return true
    if (this.#health.everReady || this.#closed) return false
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        this.#client.off('ready', done)
        resolve()
      }
      const timer = setTimeout(done, this.#commandTimeoutMs)
      this.#client.once('ready', done)
    })
    // Not connected within the command timeout: that is an outage too, and logged as one.
    if (!this.#health.available) this.#health.down(new RedisTimeoutError(this.#commandTimeoutMs))
    return this.#health.available
  }

  /** `promise`, or a RedisTimeoutError after `commandTimeoutMs`; a failure that means an outage is noted. */
  #timed<T> (promise: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new RedisTimeoutError(this.#commandTimeoutMs)), this.#commandTimeoutMs)
    })
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer)).catch(this.#health.failed)
  }

  readonly #onEvent = (channel: string, raw: string): void => {
    const context = this.#context
    if (channel !== this.#channel || context === undefined) return
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
    if (event.kind === 'counted') {
      if (Array.isArray(event.keys)) this.#rates.onCounted(event.keys.filter((key): key is string => typeof key === 'string'))
      return
    }
    if (event.kind === 'rateExceeded') {
      if (typeof event.key === 'string' && (event.window === 'second' || event.window === 'minute') && Number.isSafeInteger(event.at)) {
        this.#rates.onExceeded(event.key, { window: event.window, at: event.at })
      }
      return
    }
    if (event.kind === 'revocation') {
      if (typeof event.userId === 'string' && Number.isFinite(event.issuedBefore) && Number.isSafeInteger(event.forMs) && event.forMs > 0) {
        this.#revocations.revoke(event.userId, event.issuedBefore, Date.now() + event.forMs)
        this.#startSweeping()
      }
      return
    }
    context.deliver(event)
  }

  #startSweeping (): void {
    if (this.#sweepTimer !== undefined || this.#closed) return
    this.#sweepTimer = setInterval(() => {
      const now = Date.now()
      this.#authFailures.sweep(now)
      this.#revocations.sweep(now)
      if (this.#authFailures.size === 0 && this.#revocations.size === 0) {
        clearInterval(this.#sweepTimer)
        this.#sweepTimer = undefined
      }
    }, SWEEP_MS)
    this.#sweepTimer.unref()
  }
}

/** A store shared by every instance that uses the same Redis (and `prefix`). */
export function redisStore (options: RedisStoreOptions): RedisStore {
  return new RedisStore(options)
}
