/** Message counts are shared in buckets of 50 ms, numbered on Redis's clock ("ticks"). */
export const TICK_MS = 50
/** The second window: the last twenty ticks, the current one included. */
export const SECOND_TICKS = 20
/** The minute window counts in buckets of one second (twenty ticks)... */
export const TICKS_PER_MINUTE_BUCKET = 20
/** ...and is the last sixty of them, the current one included. */
export const MINUTE_BUCKETS = 60

/**
 * A measured offset this much below the one in use means a clock stepped (this instance's
 * forward, or Redis's back); smaller differences are a reply handled late, which only makes
 * a measurement lower.
 */
const OFFSET_STEP_MS = 100
/**
 * Ticks are read this much behind the measured offset, so that a Redis Cluster node whose
 * clock is a little behind the one measured still sees no count from its future.
 */
const CLOCK_MARGIN_MS = 10

/**
 * This instance's reading of Redis's clock: its own clock plus an offset measured on Redis's
 * replies, so that instances whose clocks disagree still put a message in the same bucket.
 * Ticks are counted from an hour boundary (`originTick`), so the ones the message path
 * computes stay small integers, which V8 keeps unboxed.
 */
export class RedisClock {
  readonly now: () => number
  /** Absolute tick (Redis time / TICK_MS) of relative tick 0. */
  readonly originTick: number
  readonly #originMs: number
  /** The local time at which relative tick 0 starts. */
  #base: number
  #offset = 0
  #known = false

  constructor (now: () => number) {
    this.now = now
    this.#originMs = Math.floor(now() / 3_600_000) * 3_600_000
    this.originTick = this.#originMs / TICK_MS
    this.#base = this.#originMs
  }

  /** Absolute second (Redis time / 1000) of relative second 0. */
  get originSecond (): number {
    return this.originTick / TICKS_PER_MINUTE_BUCKET
  }

  /** Whether a reply from Redis has set the offset yet. */
  get known (): boolean {
    return this.#known
  }

  /**
   * Takes in Redis's time from a reply received at local time `receivedAt`. Redis read its
   * clock before the reply left, so `redisNow - receivedAt` is never above the true offset:
   * the highest such reading is the closest, and ticks counted with it are never ahead of
   * Redis's own, so Redis never drops a count as being from its future.
   */
  learn (redisNow: number, receivedAt: number): void {
    const measured = redisNow - receivedAt
    if (this.#known && measured <= this.#offset && measured > this.#offset - OFFSET_STEP_MS) return
    this.#offset = measured
    this.#base = this.#originMs - measured + CLOCK_MARGIN_MS
    this.#known = true
  }

  /** Redis's time at local time `localNow`, by the measured offset (never ahead of it). */
  redisTime (localNow: number): number {
    return localNow + this.#offset
  }

  /** The relative tick of local time `localNow`. */
  tick (localNow: number): number {
    return Math.floor((localNow - this.#base) / TICK_MS)
  }

  /** The relative tick of Redis time `redisNow`. */
  redisTick (redisNow: number): number {
    return Math.floor(redisNow / TICK_MS) - this.originTick
  }
}

/** The minute bucket a (relative) tick falls in. */
export function minuteBucket (tick: number): number {
  return Math.floor(tick / TICKS_PER_MINUTE_BUCKET)
}

/** `i` modulo `size`, also for negative `i`. */
function ringIndex (i: number, size: number): number {
  const r = i % size
  return r < 0 ? r + size : r
}

/** Counts by bucket number over the last `size` buckets up to the latest one counted. */
export class TickRing {
  readonly #counts: number[]
  #latest = Number.NEGATIVE_INFINITY

  constructor (size: number) {
    this.#counts = new Array<number>(size).fill(0)
  }

  add (bucket: number, n: number): void {
    const size = this.#counts.length
    if (bucket > this.#latest) {
      if (bucket - this.#latest >= size) {
        this.#counts.fill(0)
      } else {
        for (let b = this.#latest + 1; b <= bucket; b++) this.#counts[ringIndex(b, size)] = 0
      }
      this.#latest = bucket
    } else if (bucket <= this.#latest - size) {
      return
    }
    this.#counts[ringIndex(bucket, size)]! += n
  }

  /** The counts of buckets `from` to `to`, both included. */
  sum (from: number, to: number): number {
    const size = this.#counts.length
    const first = Math.max(from, this.#latest - size + 1)
    const last = Math.min(to, this.#latest)
    let total = 0
    for (let b = first; b <= last; b++) total += this.#counts[ringIndex(b, size)]!
    return total
  }

  get (bucket: number): number {
    return this.sum(bucket, bucket)
  }

  clear (): void {
    this.#counts.fill(0)
    this.#latest = Number.NEGATIVE_INFINITY
  }
}
