import type { FastifyBaseLogger } from 'fastify'
import { ReplyError } from 'ioredis'
import type { RateLimits } from '../rate-window.js'
import { HeldRateCounter } from './held-counter.js'
import { MINUTE_BUCKETS, SECOND_TICKS, TickRing, minuteBucket, type RedisClock } from './redis-clock.js'
import type { ScriptedClient } from './redis-scripts.js'

/** Which window the instances together went over, and its last tick or second (on Redis's clock). */
export interface Exceeded {
  window: 'second' | 'minute'
  /** Absolute: the second window's last tick, or the minute window's last second. */
  at: number
}

/** An excess found by this instance's sync; `here` when this instance counted messages in that window. */
export interface Detected extends Exceeded {
  here: boolean
}

/**
 * One user's message counts on this instance. The message path checks this instance's own
 * count, exactly, plus what the other instances had counted at the last sync, aged tick by
 * tick so it never counts what has left the window; it notes what Redis has not seen yet and
 * does no I/O.
 */
export class SharedRate extends HeldRateCounter {
  readonly key: string
  readonly secondKey: string
  readonly minuteKey: string
  readonly slotsKey: string
  readonly #clock: RedisClock
  readonly #dirty: Set<SharedRate>
  /** Counts Redis has not seen, as runs of (tick, count). */
  pendingTicks: number[] = []
  pendingCounts: number[] = []
  pendingCount = 0
  #held = 0
  /** What this instance sent to Redis, by tick and by second; created at the first send. */
  #sentTicks: TickRing | undefined
  #sentSeconds: TickRing | undefined
  /** The other instances' counts by tick, as of the last sync; absent when there were none. */
  #remoteTicks: TickRing | undefined
  /** `#remoteTicks` summed over the second window ending at tick `#remoteSumTick`. */
  #remoteSumTick = Number.NaN
  #remoteSum = 0
  /**
   * The other instances' counts in the minute window as of the last sync, at second
   * `#remoteMinuteAt`, and without its oldest second: what is still in the window during the
   * next second.
   */
  #remoteMinute = 0
  #remoteMinuteYounger = 0
  #remoteMinuteAt = Number.NEGATIVE_INFINITY
  /** The last window each check fired for, so one excess closes the user's connections once. */
  #firedSecond = Number.NEGATIVE_INFINITY
  #firedMinute = Number.NEGATIVE_INFINITY

  constructor (key: string, keys: { second: string, minute: string, slots: string }, limits: Readonly<RateLimits>, clock: RedisClock, dirty: Set<SharedRate>) {
    super(limits)
    this.key = key
    this.secondKey = keys.second
    this.minuteKey = keys.minute
    this.slotsKey = keys.slots
    this.#clock = clock
    this.#dirty = dirty
    // A new counter learns at the next sync what the other instances counted.
    dirty.add(this)
  }

  consume (): boolean {
    const now = this.#clock.now()
    const tick = this.#clock.tick(now)
    if (!this.tryConsume(now, this.#remoteSecond(tick), this.#remoteMinuteIn(minuteBucket(tick)))) return false
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

  #remoteSecond (tick: number): number {
    if (this.#remoteTicks === undefined) return 0
    if (tick !== this.#remoteSumTick) {
      this.#remoteSumTick = tick
      this.#remoteSum = this.#remoteTicks.sum(tick - SECOND_TICKS + 1, tick)
    }
    return this.#remoteSum
  }

  #remoteMinuteIn (second: number): number {
    const at = this.#remoteMinuteAt
    if (second <= at) return this.#remoteMinute
    return second === at + 1 ? this.#remoteMinuteYounger : 0
  }

  override hold (): this {
    this.#held++
    return super.hold()
  }

  override release (): void {
    this.#held--
    super.release()
  }

  /** Counts Redis has not seen yet keep the counter too. */
  override canDrop (now: number): boolean {
    return super.canDrop(now) && this.pendingCount === 0
  }

  /**
   * Whether the once-a-second refresh should ask Redis for this user's counts: a user with
   * connections here and counts elsewhere, so that what those instances take is known here
   * before this one admits more. A user counted on this instance only costs Redis nothing
   * while silent.
   */
  get wantsRefresh (): boolean {
    return this.#held > 0 && (this.#remoteTicks !== undefined || this.#remoteMinute > 0)
  }

  /** Whether connections here hold this counter. */
  get held (): boolean {
    return this.#held > 0
  }

  /** Appends the pending runs to a sync's arguments (absolute ticks) and counts them as sent. */
  takePending (args: Array<string | number>): void {
    const runs = this.pendingTicks.length
    args.push(runs)
    if (runs > 0) {
      // One tick more than the window, for ticks counted here before Redis's clock reached them.
      this.#sentTicks ??= new TickRing(SECOND_TICKS + 4)
      this.#sentSeconds ??= new TickRing(MINUTE_BUCKETS + 2)
    }
    const origin = this.#clock.originTick
    for (let i = 0; i < runs; i++) {
      const tick = this.pendingTicks[i]!
      const count = this.pendingCounts[i]!
      args.push(tick + origin, count)
      this.#sentTicks!.add(tick, count)
      this.#sentSeconds!.add(minuteBucket(tick), count)
    }
    this.dropPending()
  }

  dropPending (): void {
    if (this.pendingCount === 0) return
    this.pendingTicks = []
    this.pendingCounts = []
    this.pendingCount = 0
  }

  /**
   * Takes in a sync's answer for this user: the totals of every instance per tick of the
   * second window (`pairs`, absolute ticks, from `at`), the minute's total and its oldest
   * second's count, as of Redis's tick `tick` (relative). The other instances' share is the
   * total less what this one sent, tick by tick and second by second, so this instance's
   * own messages never come back as someone else's. Answers the window the instances
   * together went over, if any.
   */
  learn (reply: number[], at: number, pairs: number, minute: number, oldest: number, tick: number): Detected | undefined {
    const origin = this.#clock.originTick
    const first = tick - SECOND_TICKS + 1
    let remote = this.#remoteTicks
    remote?.clear()
    let remoteSecond = 0
    for (let i = 0; i < pairs; i++) {
      const t = reply[at + 2 * i]! - origin
      const others = reply[at + 2 * i + 1]! - (this.#sentTicks?.get(t) ?? 0)
      if (others <= 0) continue
      remote ??= new TickRing(SECOND_TICKS)
      remote.add(t, others)
      if (t >= first && t <= tick) remoteSecond += others
    }
    this.#remoteTicks = remoteSecond > 0 ? remote : undefined
    this.#remoteSumTick = Number.NaN

    const second = minuteBucket(tick)
    const sentMinute = this.#sentSeconds?.sum(second - MINUTE_BUCKETS + 1, second) ?? 0
    const remoteMinute = Math.max(0, minute - sentMinute)
    const sentYounger = sentMinute - (this.#sentSeconds?.get(second - MINUTE_BUCKETS + 1) ?? 0)
    this.#remoteMinute = remoteMinute
    this.#remoteMinuteYounger = Math.max(0, minute - oldest - sentYounger)
    this.#remoteMinuteAt = second

    // Sound checks: every message in twenty ticks is within one second of every other (and in
    // sixty seconds, within one minute), so a total over the limit there is a real excess. A
    // user counted on this instance alone is never flagged: its own check is exact.
    if (remoteSecond > 0 && tick - this.#firedSecond >= SECOND_TICKS) {
      const own = this.#ownIn('second', tick)
      if (own + remoteSecond > this.limits.messagesPerSecond) {
        this.#firedSecond = tick
        return { window: 'second', at: tick + origin, here: own > 0 }
      }
    }
    if (remoteMinute > 0 && second - this.#firedMinute >= MINUTE_BUCKETS) {
      const own = this.#ownIn('minute', second)
      if (own + remoteMinute > this.limits.messagesPerMinute) {
        this.#firedMinute = second
        return { window: 'minute', at: second + this.#clock.originSecond, here: own > 0 }
      }
    }
    return undefined
  }

  /**
   * Another instance found this user over a limit in the window ending at `at` (absolute):
   * true, once per window, when this instance counted messages of theirs in it, whose
   * connections must then close.
   */
  claimExceeded ({ window, at }: Exceeded): boolean {
    if (window === 'second') {
      const tick = at - this.#clock.originTick
      if (tick - this.#firedSecond < SECOND_TICKS) return false
      if (this.#ownIn('second', tick) === 0) return false
      this.#firedSecond = tick
      return true
    }
    const second = at - this.#clock.originSecond
    if (second - this.#firedMinute < MINUTE_BUCKETS) return false
    if (this.#ownIn('minute', second) === 0) return false
    this.#firedMinute = second
    return true
  }

  /** This instance's count in the window ending at `end` (a relative tick, or second for the minute). */
  #ownIn (window: 'second' | 'minute', end: number): number {
    const span = window === 'second' ? SECOND_TICKS : MINUTE_BUCKETS
    const sent = window === 'second' ? this.#sentTicks : this.#sentSeconds
    let count = sent?.sum(end - span + 1, end) ?? 0
    for (let i = 0; i < this.pendingTicks.length; i++) {
      const at = window === 'second' ? this.pendingTicks[i]! : minuteBucket(this.pendingTicks[i]!)
      if (at > end - span && at <= end) count += this.pendingCounts[i]!
    }
    return count
  }
}

/** What the shared counts need from the store. */
export interface RateSyncHost {
  readonly client: ScriptedClient
  readonly clock: RedisClock
  readonly instanceId: string
  readonly syncIntervalMs: number
  /** The Redis keys of a limit key's counts and slots (hash-tagged alike). */
  keys (key: string): { second: string, minute: string, slots: string }
  log (): FastifyBaseLogger
  available (): boolean
  timed<T> (promise: Promise<T>): Promise<T>
  /** Splits the users of one sync into script calls (on a Redis Cluster, one per slot). */
  calls (rates: SharedRate[]): SharedRate[][]
  /** The user's connections here get the rate-limit error and close. */
  exceeded (key: string): void
  /** Tells the other instances that the user went over a limit. */
  announce (key: string, exceeded: Exceeded): void
  /** Tells the other instances that these users, who hold slots there, sent messages here. */
  announceCounted (keys: string[]): void
}

// Counters are dropped once idle; checked this often.
const RATE_SWEEP_MS = 10_000
// Users with counts elsewhere are refreshed this often while connected here.
const REFRESH_MS = 1000
// At most this many unusable rate keys are remembered, so each is logged once.
const MAX_FOREIGN_KEYS = 1000

/**
 * The message counts of every user with connections on this instance, exchanged with Redis
 * every `syncIntervalMs` for the users who sent something (and once a second for those
 * counted elsewhere too). See README, "Message limits".
 *
 * The bound this gives: an instance admits a message knowing every message the others
 * admitted more than D = 2 x syncIntervalMs + three Redis round trips earlier (their sync, the
 * `counted` event, this instance's refresh). So in any window the instances together admit
 * at most the limit plus what the user's other instances admitted within D before each
 * admission (and the few in the window's oldest tick, which the aged estimate leaves out
 * rather than count stale); never more than k x limit on k instances. A user on one
 * instance is held exactly. Whatever passes the limit is found by the next sync that sees
 * it, and the user is closed on every instance that counted messages of theirs in that
 * window, within about D.
 */
export class RateSync {
  readonly #host: RateSyncHost
  readonly #rates = new Map<string, SharedRate>()
  readonly #dirty = new Set<SharedRate>()
  /** Rate keys found holding another type, each logged once. */
  readonly #foreignKeys = new Set<string>()
  #syncing = false
  /** A failing rate script is logged once until a sync succeeds again. */
  #syncErrorLogged = false
  #lastRefresh = 0
  #syncTimer: NodeJS.Timeout | undefined
  #sweepTimer: NodeJS.Timeout | undefined
  #closed = false

  constructor (host: RateSyncHost) {
    this.#host = host
  }

  get size (): number {
    return this.#rates.size
  }

  hold (key: string, limits: Readonly<RateLimits>): SharedRate {
    let rate = this.#rates.get(key)
    if (rate === undefined) {
      rate = new SharedRate(key, this.#host.keys(key), limits, this.#host.clock, this.#dirty)
      this.#rates.set(key, rate)
      this.#start()
    }
    return rate.hold()
  }

  /**
   * Another instance counted messages of these users: those with connections here learn the
   * new totals at the next sync, before this instance admits much more of theirs.
   */
  onCounted (keys: string[]): void {
    for (const key of keys) {
      const rate = this.#rates.get(key)
      if (rate?.held === true) this.#dirty.add(rate)
    }
  }

  /** Another instance found `key` over a limit. */
  onExceeded (key: string, exceeded: Exceeded): void {
    if (this.#rates.get(key)?.claimExceeded(exceeded) === true) this.#host.exceeded(key)
  }

  close (): void {
    this.#closed = true
    this.#stop()
    this.#rates.clear()
    this.#dirty.clear()
  }

  #start (): void {
    if (this.#syncTimer !== undefined || this.#closed) return
    this.#syncTimer = setInterval(() => { this.#sync() }, this.#host.syncIntervalMs)
    this.#sweepTimer = setInterval(() => { this.#sweep() }, RATE_SWEEP_MS)
    // Idle counters must never keep the process alive.
    this.#syncTimer.unref()
    this.#sweepTimer.unref()
  }

  #stop (): void {
    clearInterval(this.#syncTimer)
    clearInterval(this.#sweepTimer)
    this.#syncTimer = undefined
    this.#sweepTimer = undefined
  }

  #sweep (): void {
    const now = this.#host.clock.now()
    for (const [key, rate] of this.#rates) {
      if (!rate.canDrop(now)) continue
      this.#rates.delete(key)
      this.#dirty.delete(rate)
    }
    if (this.#rates.size === 0) this.#stop()
  }

  /** Sends the counts taken since the last sync and learns what the other instances counted. */
  #sync (): void {
    if (this.#syncing) return
    const host = this.#host
    const now = host.clock.now()
    if (now - this.#lastRefresh >= REFRESH_MS) {
      this.#lastRefresh = now
      for (const rate of this.#rates.values()) {
        if (rate.wantsRefresh) this.#dirty.add(rate)
      }
    }
    if (this.#dirty.size === 0) return
    const batch = [...this.#dirty]
    this.#dirty.clear()
    if (!host.available()) {
      // During an outage every instance counts alone; counts taken meanwhile are not replayed.
      for (const rate of batch) rate.dropPending()
      return
    }
    const calls: Array<Promise<void>> = []
    for (const part of host.calls(batch)) {
      const keys: string[] = []
      const args: Array<string | number> = [host.instanceId]
      for (const rate of part) {
        keys.push(rate.secondKey, rate.minuteKey, rate.slotsKey)
        rate.takePending(args)
      }
      const call = host.client.secureWsRate(keys.length, ...keys, ...args)
      calls.push(host.timed(call).then((reply) => {
        this.#syncErrorLogged = false
        this.#learn(part, reply)
      }, this.#syncFailed))
    }
    this.#syncing = true
    Promise.all(calls).finally(() => { this.#syncing = false })
  }

  // The counts of a failed sync are lost and each instance counts alone until the next one.
  // A timeout or a lost connection is an outage, which the store reports; an error Redis
  // answered (out of memory, a script error) is reported here.
  readonly #syncFailed = (err: unknown): void => {
    if (!(err instanceof ReplyError) || this.#syncErrorLogged || this.#closed) return
    this.#syncErrorLogged = true
    this.#host.log().error({ err }, 'fastify-secure-ws: redis store could not sync message counts; each instance counts alone until it can')
  }

  /** Takes in what Redis counted for each user of one call, every instance together. */
  #learn (part: SharedRate[], reply: number[]): void {
    if (this.#closed || !Array.isArray(reply)) return
    const host = this.#host
    const redisNow = reply[0]!
    host.clock.learn(redisNow, host.clock.now())
    const tick = host.clock.redisTick(redisNow)
    const shared: string[] = []
    let i = 1
    for (const rate of part) {
      const pairs = reply[i++]!
      if (pairs === -1) {
        this.#foreign(rate.secondKey)
        continue
      }
      const at = i
      i += 2 * pairs
      const minute = reply[i++]!
      const oldest = reply[i++]!
      if (reply[i++] === 1) shared.push(rate.key)
      const detected = rate.learn(reply, at, pairs, minute, oldest, tick)
      if (detected === undefined) continue
      if (detected.here) host.exceeded(rate.key)
      host.announce(rate.key, { window: detected.window, at: detected.at })
    }
    if (shared.length > 0) host.announceCounted(shared)
  }

  #foreign (key: string): void {
    if (this.#foreignKeys.has(key)) return
    if (this.#foreignKeys.size >= MAX_FOREIGN_KEYS) this.#foreignKeys.delete(this.#foreignKeys.values().next().value!)
    this.#foreignKeys.add(key)
    this.#host.log().error({ key }, 'fastify-secure-ws: redis store found another type of value under a rate key; that user\'s message counts stay local to each instance')
  }
}
