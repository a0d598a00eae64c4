import type { RateLimits } from './types.js'

// lib/stores/redis.ts imports RateLimits from here; re-exported until it imports it from '../types.js'.
export type { RateLimits }

/** What a rate limit window offers: how many events the last window holds, and one more. */
export interface RateWindow {
  /** Events counted over the span that covers the last window ending at `now`. */
  count (now: number): number
  /** Counts one event at `now`; call `count` first so the window is current. */
  record (now: number): void
}

/**
 * The exact window: the times of the last `limit` accepted events in a ring, so a check is
 * "did fewer than `limit` happen in [now - windowMs, now]". No span of `windowMs` ever holds
 * more than the limit, and nothing is refused early. Time is constant per check (expired
 * events leave from the front); memory is one number per allowed event, so it serves limits
 * up to `EXACT_LIMIT_MAX`.
 */
export class SlidingLog implements RateWindow {
  // A plain array, not a Float64Array: it lives in the heap next to this object, where a
  // typed array would add two objects and a separately allocated store, each one more cache
  // miss on a check that runs for every message.
  readonly #times: number[]
  readonly #windowMs: number
  #head = 0
  #size = 0

  constructor (windowMs: number, capacity: number) {
    this.#windowMs = windowMs
    this.#times = new Array<number>(capacity).fill(0)
  }

  count (now: number): number {
    // A closed window: two events exactly `windowMs` apart are within one window.
    const oldest = now - this.#windowMs
    while (this.#size > 0 && this.#times[this.#head]! < oldest) {
      this.#head = (this.#head + 1) % this.#times.length
      this.#size--
    }
    return this.#size
  }

  record (now: number): void {
    // The caller only records when count() was below the limit, so the ring has room.
    this.#times[(this.#head + this.#size) % this.#times.length] = now
    this.#size++
  }
}

/**
 * Where bucket numbers start: an hour boundary near when this module loaded. Counted from the
 * epoch, a 50 ms bucket's number (~3.5e10) is too large for V8 to keep as a small integer, so
 * each read of it would go through a boxed number, one more cache line per check. Bucket
 * lengths that divide an hour (the library's 50 ms and 1 s do) keep the boundaries they would
 * have from the epoch; any other length still gets one fixed grid of buckets.
 */
const CLOCK_ORIGIN_MS = Math.floor(Date.now() / 3_600_000) * 3_600_000

/** `tick` modulo `size`, also for ticks before the origin (clocks given in tests). */
function ringIndex (tick: number, size: number): number {
  const i = tick % size
  return i < 0 ? i + size : i
}

/**
 * The bucketed window, for limits too large to log every event: `windowMs` is split into
 * fixed buckets, and one bucket more is kept than the window needs, so the counted span
 * always covers the last `windowMs` in full. That keeps the check conservative (no span of
 * `windowMs` ever holds more than the limit, unlike a fixed window, which lets a client burst
 * twice across a boundary, or GCRA, which lets a drained bucket refill mid-window); it may
 * refuse up to one bucket early. Memory and time per check are constant whatever the limit.
 *
 * A check runs for every message, on a counter that is usually cold in the CPU's caches
 * (each user's counter is touched once per message of that user, between which the kernel's
 * network path runs), so what it reads is kept to this object's own fields, all small
 * integers: the current bucket's count stays here, and the ring of closed buckets is only
 * touched when the clock moves into a new bucket. Reading the ring and a boxed start time on
 * every check cost measurably more (bench/README.md, "Measurements behind code choices").
 */
export class SlidingWindowCounter implements RateWindow {
  // V8 lays fields out in this order: the five every check reads fill the object's first 64 bytes.
  readonly #bucketMs: number
  #started = false
  /** Ticks count buckets from CLOCK_ORIGIN_MS, so they stay small integers (see there). */
  #tick = 0
  /** Events in the current bucket, `#tick`. */
  #current = 0
  /** Events in the closed buckets still in the window. */
  #closed = 0
  // The closed buckets, by tick modulo their number; a plain array, for the reason SlidingLog gives.
  readonly #closedCounts: number[]

  constructor (windowMs: number, buckets: number) {
    this.#bucketMs = windowMs / buckets
    this.#closedCounts = new Array<number>(buckets + 1).fill(0)
  }

  count (now: number): number {
    this.#advance(now)
    return this.#closed + this.#current
  }

  record (): void {
    this.#current++
  }

  /** Counts `n` events (a non-negative integer) at the current bucket; call `count` first so the buckets are current. */
  add (n: number): void {
    this.#current += n
  }

  #advance (now: number): void {
    const tick = Math.floor((now - CLOCK_ORIGIN_MS) / this.#bucketMs)
    if (!this.#started) {
      this.#started = true
      this.#tick = tick
      return
    }
    // A clock that steps back keeps counting into the newest bucket instead of forgetting.
    if (tick <= this.#tick) return
    const ring = this.#closedCounts
    const size = ring.length
    if (tick - this.#tick >= size) {
      if (this.#closed !== 0) ring.fill(0)
      this.#closed = 0
    } else {
      ring[ringIndex(this.#tick, size)] = this.#current
      this.#closed += this.#current
      // Each tick passed takes the slot of the bucket `size` ticks older, which leaves the window.
      for (let t = this.#tick + 1; t <= tick; t++) {
        const i = ringIndex(t, size)
        this.#closed -= ring[i]!
        ring[i] = 0
      }
    }
    this.#current = 0
    this.#tick = tick
  }
}

export const SECOND_MS = 1000
export const MINUTE_MS = 60_000
/** Limits up to this many events per window are checked exactly; larger ones by buckets. */
export const EXACT_LIMIT_MAX = 128
// Buckets for larger limits: 50 ms for the second, 1 s for the minute, an early refusal is
// at most that long.
const SECOND_BUCKETS = 20
const MINUTE_BUCKETS = 60

function windowFor (windowMs: number, buckets: number, limit: number): RateWindow {
  return limit <= EXACT_LIMIT_MAX ? new SlidingLog(windowMs, limit) : new SlidingWindowCounter(windowMs, buckets)
}

/** One user's message counts over the one-second and sixty-second windows. */
export class RateCounter {
  readonly limits: Readonly<RateLimits>
  readonly second: RateWindow
  readonly minute: RateWindow

  /** The limits choose the kind of window; a counter serves one set of limits for its life. */
  constructor (limits: Readonly<RateLimits>) {
    this.limits = limits
    this.second = windowFor(SECOND_MS, SECOND_BUCKETS, limits.messagesPerSecond)
    this.minute = windowFor(MINUTE_MS, MINUTE_BUCKETS, limits.messagesPerMinute)
  }

  /**
   * Counts one message at `now` if both windows have room, with `extraSecond` and
   * `extraMinute` added to what this counter holds (events counted elsewhere, e.g. by other
   * instances). Returns false, counting nothing, when either window is full.
   */
  tryConsume (now: number, extraSecond = 0, extraMinute = 0): boolean {
    if (this.second.count(now) + extraSecond >= this.limits.messagesPerSecond) return false
    if (this.minute.count(now) + extraMinute >= this.limits.messagesPerMinute) return false
    this.second.record(now)
    this.minute.record(now)
    return true
  }

  /**
   * True once nothing counted here can affect a future check: the minute window is empty
   * (every counted message is in both windows, and the minute's is the longer).
   */
  isIdle (now: number): boolean {
    return this.minute.count(now) === 0
  }
}
