/**
 * Sliding-window counters for message rate limits.
 *
 * A window of `windowMs` is split into fixed buckets, and one bucket more is kept than the
 * window needs, so the counted span always covers the last `windowMs` in full. That makes
 * the check conservative: no span of `windowMs` ever holds more than the limit (unlike a
 * fixed window, which lets a client burst twice across a boundary, or GCRA, which lets a
 * drained bucket refill mid-window). It may refuse up to one bucket early. Memory and time
 * per check are constant whatever the limit.
 */
export class SlidingWindowCounter {
  readonly #counts: Uint32Array
  readonly #bucketMs: number
  #tick = Number.NEGATIVE_INFINITY
  #total = 0

  constructor (windowMs: number, buckets: number) {
    this.#bucketMs = windowMs / buckets
    this.#counts = new Uint32Array(buckets + 1)
  }

  /** Events counted over the span that covers the last window ending at `now`. */
  count (now: number): number {
    this.#advance(now)
    return this.#total
  }

  /** Counts `n` events at `now`; call `count` first so the buckets are current. */
  add (n: number): void {
    this.#counts[this.#tick % this.#counts.length] += n
    this.#total += n
  }

  #advance (now: number): void {
    const tick = Math.floor(now / this.#bucketMs)
    // A clock that steps back keeps counting into the newest bucket instead of forgetting.
    if (tick <= this.#tick) return
    const size = this.#counts.length
    if (tick - this.#tick >= size) {
      this.#counts.fill(0)
      this.#total = 0
    } else {
      for (let t = this.#tick + 1; t <= tick; t++) {
        const i = t % size
        this.#total -= this.#counts[i]!
        this.#counts[i] = 0
      }
    }
    this.#tick = tick
  }
}

export const SECOND_MS = 1000
export const MINUTE_MS = 60_000
// 50 ms buckets for the second, 1 s buckets for the minute: an early refusal is at most that long.
const SECOND_BUCKETS = 20
const MINUTE_BUCKETS = 60

/** Limits a rate counter enforces. */
export interface RateLimits {
  /** Most inbound messages in any one-second span. */
  messagesPerSecond: number
  /** Most inbound messages in any sixty-second span. */
  messagesPerMinute: number
}

/** One user's message counts over the one-second and sixty-second windows. */
export class RateCounter {
  readonly second = new SlidingWindowCounter(SECOND_MS, SECOND_BUCKETS)
  readonly minute = new SlidingWindowCounter(MINUTE_MS, MINUTE_BUCKETS)
  lastSeen = 0

  /**
   * Counts one message at `now` if both windows have room, with `extraSecond` and
   * `extraMinute` added to what this counter holds (events counted elsewhere, e.g. by other
   * instances). Returns false, counting nothing, when either window is full.
   */
  tryConsume (now: number, limits: RateLimits, extraSecond = 0, extraMinute = 0): boolean {
    this.lastSeen = now
    if (this.second.count(now) + extraSecond >= limits.messagesPerSecond) return false
    if (this.minute.count(now) + extraMinute >= limits.messagesPerMinute) return false
    this.second.add(1)
    this.minute.add(1)
    return true
  }

  /** True once nothing counted here can affect a future check. */
  isIdle (now: number): boolean {
    return now - this.lastSeen > MINUTE_MS + MINUTE_MS / MINUTE_BUCKETS
  }
}
