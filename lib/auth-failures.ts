/** The span over which failed authentications from one address are counted. */
export const AUTH_FAILURE_WINDOW_MS = 60_000

/**
 * Most addresses remembered at once. An attacker with many addresses (an IPv6 block) must
 * not grow this without bound; past it the least recently failing addresses are forgotten.
 */
const MAX_ADDRESSES = 100_000

/**
 * Failed authentications by client address over the last minute, and the addresses locked
 * out for it. An address is locked out once `limit` of its failures fall within one minute,
 * until the oldest of those is a minute old; the check is one map read, so it can run before
 * every upgrade. Shared by the stores: the memory store counts here, the Redis store counts
 * in Redis and keeps the resulting lockouts here.
 */
export class AuthFailureLog {
  /** Failure times per address, oldest first, at most `limit` of them; least recent address first. */
  readonly #failures = new Map<string, number[]>()
  readonly #lockedUntil = new Map<string, number>()

  /** Counts a failure at `now`; returns until when the address is locked out, or 0. */
  record (address: string, limit: number, now: number): number {
    let times = this.#failures.get(address)
    if (times === undefined) {
      times = []
      if (this.#failures.size >= MAX_ADDRESSES) this.#forgetOldest()
    } else {
      // Re-inserted, so the map stays ordered by most recent failure.
      this.#failures.delete(address)
    }
    this.#failures.set(address, times)
    while (times.length > 0 && times[0]! <= now - AUTH_FAILURE_WINDOW_MS) times.shift()
    times.push(now)
    if (times.length > limit) times.splice(0, times.length - limit)
    if (times.length < limit) return 0
    const until = times[0]! + AUTH_FAILURE_WINDOW_MS
    this.lock(address, until)
    return until
  }

  /** Locks `address` out until `until` (ms since the epoch), unless it already is for longer. */
  lock (address: string, until: number): void {
    if ((this.#lockedUntil.get(address) ?? 0) >= until) return
    if (this.#lockedUntil.size >= MAX_ADDRESSES) this.#lockedUntil.delete(this.#lockedUntil.keys().next().value!)
    this.#lockedUntil.set(address, until)
  }

  /** Until when `address` is locked out, or 0 when it is not. */
  lockedOutUntil (address: string, now: number): number {
    const until = this.#lockedUntil.get(address)
    if (until === undefined) return 0
    if (until > now) return until
    this.#lockedUntil.delete(address)
    return 0
  }

  /** Forgets what can no longer count: failures and lockouts older than the window. */
  sweep (now: number): void {
    for (const [address, times] of this.#failures) {
      if (times[times.length - 1]! <= now - AUTH_FAILURE_WINDOW_MS) this.#failures.delete(address)
    }
    for (const [address, until] of this.#lockedUntil) {
      if (until <= now) this.#lockedUntil.delete(address)
    }
  }

  /** Addresses with failures or lockouts remembered, for `stats()`. */
  get size (): number {
    return this.#failures.size + this.#lockedUntil.size
  }

  clear (): void {
    this.#failures.clear()
    this.#lockedUntil.clear()
  }

  #forgetOldest (): void {
    this.#failures.delete(this.#failures.keys().next().value!)
  }
}
