import type { RedisClock } from './redis-clock.js'
import type { ScriptedClient } from './redis-scripts.js'

/** What the leases need from the store. */
export interface LeaseHost {
  readonly client: ScriptedClient
  readonly clock: RedisClock
  readonly leaseMs: number
  readonly commandTimeoutMs: number
  available (): boolean
  timed<T> (promise: Promise<T>): Promise<T>
  /** The Redis key of a limit key's slots. */
  slotKey (key: string): string
  /** Splits renewals into script calls (on a Redis Cluster, one per slot). */
  calls<T> (items: T[], keyOf: (item: T) => string): T[][]
  /** These connections' slots ran out before they could be renewed: they close (1013). */
  slotsLost (slots: Array<{ key: string, connectionId: string }>): void
}

/** A fail-open slot: held here only, to be added to Redis once it is back. */
const LOCAL_ONLY = Number.POSITIVE_INFINITY

interface Held {
  key: string
  member: string
  /** Local time by which its lease, as last renewed, runs out; LOCAL_ONLY when Redis never had it. */
  expiresAt: number
}

/**
 * The connection slots this instance holds in Redis: leases in a sorted set per user, taken
 * atomically by a script on Redis's clock and renewed every `leaseMs / 3` while the
 * connection lives, so a dead instance's slots free themselves. Honest about what it holds:
 *
 * - An acquire that timed out carries a deadline, past which Redis does not write it, and
 *   is followed by a removal, so a slow Redis cannot hand a refused connection a slot.
 * - A lease is only renewed while Redis still has it. One this instance could not renew
 *   before it runs out (Redis slow or cut off) is given up shortly before, and its
 *   connection closed: no partition lets a user hold more slots than the limit.
 */
export class Leases {
  readonly #host: LeaseHost
  readonly #instanceId: string
  /** By connection id. */
  readonly #held = new Map<string, Held>()
  /** How many are held, by limit key. */
  readonly #perKey = new Map<string, number>()
  /** Slots released while Redis was unreachable, with when; freed there once it is back. */
  #releasedWhileAway: Array<{ key: string, member: string, at: number }> = []
  #renewTimer: NodeJS.Timeout | undefined
  #watchTimer: NodeJS.Timeout | undefined
  /** How often leases are checked, and how long before running out one is given up. */
  readonly #watchMs: number
  /** No lease here runs out before this (local time); spares a scan of every slot per check. */
  #earliest = Number.POSITIVE_INFINITY

  constructor (host: LeaseHost, instanceId: string) {
    this.#host = host
    this.#instanceId = instanceId
    this.#watchMs = Math.max(10, Math.min(1000, Math.floor(host.leaseMs / 10)))
  }

  /** Slots held, by limit key. */
  sizes (): Record<string, number> {
    return Object.fromEntries(this.#perKey)
  }

  /** Slots held under `key` (fail-open counts against this instance's own limit). */
  count (key: string): number {
    return this.#perKey.get(key) ?? 0
  }

  /**
   * Takes a slot in Redis: true, false when the user holds `limit` already. Rejects when
   * Redis does not answer in time; the slot is then never held.
   */
  async acquire (key: string, connectionId: string, limit: number): Promise<boolean> {
    const host = this.#host
    const member = this.#member(connectionId)
    const slotKey = host.slotKey(key)
    // Slots let go of while Redis did not answer must not count against this user now.
    await this.freeReleasedWhileAway()
    const sentAt = host.clock.now()
    const deadline = host.clock.known ? host.clock.redisTime(sentAt) + host.commandTimeoutMs : 0
    let answer: [number, number]
    try {
      answer = await host.timed(host.client.secureWsAcquire(slotKey, limit, member, host.leaseMs, deadline))
    } catch (err) {
      // Given up on: if the call still runs, past its deadline it writes nothing, and this
      // removal, sent behind it on the same connection, undoes it if it ran just before.
      this.#remove(key, member)
      throw err
    }
    host.clock.learn(answer[1], host.clock.now())
    if (answer[0] === -1) throw new Error(`redis took the slot call after its ${host.commandTimeoutMs} ms deadline`)
    if (answer[0] !== 1) return false
    this.#hold(connectionId, { key, member, expiresAt: sentAt + host.leaseMs })
    return true
  }

  /** Fail-open: a slot held here only while Redis is away, added there once it is back. */
  holdLocally (key: string, connectionId: string): void {
    this.#hold(connectionId, { key, member: this.#member(connectionId), expiresAt: LOCAL_ONLY })
  }

  async release (key: string, connectionId: string): Promise<void> {
    const held = this.#held.get(connectionId)
    if (held === undefined || held.key !== key) return
    this.#drop(connectionId, held)
    if (this.#held.size === 0) this.#stop()
    if (held.expiresAt === LOCAL_ONLY) return
    // While Redis is away, remember the release: if Redis kept its data, the lease would
    // otherwise hold the user's slot until it runs out.
    if (!this.#host.available()) {
      this.#releasedWhileAway.push({ key, member: held.member, at: this.#host.clock.now() })
      return
    }
    await this.#host.timed(this.#host.client.zrem(this.#host.slotKey(key), held.member)).catch(() => {
      this.#releasedWhileAway.push({ key, member: held.member, at: this.#host.clock.now() })
    })
  }

  /** Redis answers again: leases are renewed at once, fail-open slots added, releases done. */
  onReachable (): void {
    this.#renew()
    this.freeReleasedWhileAway().catch(() => {})
  }

  /** Frees in Redis the slots released while it did not answer; kept for later if it still does not. */
  async freeReleasedWhileAway (): Promise<void> {
    // A release older than a lease has nothing left to free.
    const since = this.#host.clock.now() - this.#host.leaseMs
    const released = this.#releasedWhileAway.filter((release) => release.at > since)
    this.#releasedWhileAway = []
    if (released.length === 0) return
    try {
      await this.#host.timed(Promise.all(released.map(({ key, member }) => this.#host.client.zrem(this.#host.slotKey(key), member))))
    } catch (err) {
      this.#releasedWhileAway.push(...released)
      throw err
    }
  }

  /** Frees every slot held here in Redis (at shutdown). */
  async close (): Promise<void> {
    this.#stop()
    const byKey = new Map<string, string[]>()
    for (const { key, member, expiresAt } of this.#held.values()) {
      if (expiresAt === LOCAL_ONLY) continue
      let members = byKey.get(key)
      if (members === undefined) byKey.set(key, members = [])
      members.push(member)
    }
    this.#held.clear()
    this.#perKey.clear()
    if (!this.#host.available() || byKey.size === 0) return
    // One command per user: each touches one slot of a Redis Cluster.
    const removals = [...byKey].map(([key, members]) => this.#host.client.zrem(this.#host.slotKey(key), ...members))
    await this.#host.timed(Promise.all(removals)).catch(() => {})
  }

  #member (connectionId: string): string {
    return `${this.#instanceId}:${connectionId}`
  }

  #hold (connectionId: string, held: Held): void {
    this.#held.set(connectionId, held)
    this.#perKey.set(held.key, (this.#perKey.get(held.key) ?? 0) + 1)
    if (held.expiresAt < this.#earliest) this.#earliest = held.expiresAt
    if (this.#renewTimer !== undefined) return
    this.#renewTimer = setInterval(() => { this.#renew() }, Math.max(1, Math.floor(this.#host.leaseMs / 3)))
    this.#watchTimer = setInterval(() => { this.#watch() }, this.#watchMs)
    this.#renewTimer.unref()
    this.#watchTimer.unref()
  }

  #drop (connectionId: string, held: Held): void {
    this.#held.delete(connectionId)
    const left = this.#perKey.get(held.key)! - 1
    if (left === 0) this.#perKey.delete(held.key)
    else this.#perKey.set(held.key, left)
  }

  #stop (): void {
    clearInterval(this.#renewTimer)
    clearInterval(this.#watchTimer)
    this.#renewTimer = undefined
    this.#watchTimer = undefined
  }

  /** A removal that may find Redis away: then done once it is back. */
  #remove (key: string, member: string): void {
    const at = this.#host.clock.now()
    this.#host.client.zrem(this.#host.slotKey(key), member).catch(() => {
      this.#releasedWhileAway.push({ key, member, at })
    })
  }

  #renew (): void {
    const host = this.#host
    if (!host.available() || this.#held.size === 0) return
    const items = [...this.#held]
    for (const part of host.calls(items, ([, held]) => host.slotKey(held.key))) {
      const keys: string[] = []
      const members: string[] = []
      let add = ''
      for (const [, held] of part) {
        keys.push(host.slotKey(held.key))
        members.push(held.member)
        add += held.expiresAt === LOCAL_ONLY ? '1' : '0'
      }
      const sentAt = host.clock.now()
      host.timed(host.client.secureWsRenew(keys.length, ...keys, host.leaseMs, add, ...members)).then((answer) => {
        const lostAt = new Set(answer.slice(1))
        const lost: Array<{ key: string, connectionId: string }> = []
        part.forEach(([connectionId, held], i) => {
          // Released meanwhile, or replaced by a later connection's slot under the same id: not this answer's.
          if (this.#held.get(connectionId) !== held) return
          if (lostAt.has(i + 1)) {
            this.#drop(connectionId, held)
            lost.push({ key: held.key, connectionId })
          } else {
            held.expiresAt = sentAt + host.leaseMs
          }
        })
        if (lost.length > 0) this.#lose(lost)
      }, () => {
        // Not renewed: the lease runs out as it stood, and #watch gives it up before it does.
      })
    }
  }

  /** Gives up the leases about to run out unrenewed; their connections close. */
  #watch (): void {
    const now = this.#host.clock.now()
    if (now < this.#earliest - this.#watchMs) return
    const lost: Array<{ key: string, connectionId: string }> = []
    let earliest = Number.POSITIVE_INFINITY
    for (const [connectionId, held] of this.#held) {
      if (held.expiresAt - now <= this.#watchMs) {
        this.#drop(connectionId, held)
        lost.push({ key: held.key, connectionId })
      } else if (held.expiresAt < earliest) {
        earliest = held.expiresAt
      }
    }
    this.#earliest = earliest
    if (lost.length > 0) this.#lose(lost)
  }

  #lose (lost: Array<{ key: string, connectionId: string }>): void {
    if (this.#held.size === 0) this.#stop()
    this.#host.slotsLost(lost)
  }
}
