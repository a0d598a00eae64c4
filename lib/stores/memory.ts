import { AuthFailureLog } from '../auth-failures.js'
import { InvalidOptionError } from '../errors.js'
import { refuseUnknownKeys } from '../known-keys.js'
import { addTo, removeFrom, sizes } from '../keyed-sets.js'
import { Revocations } from '../revocations.js'
import type { MessageCounter, RateLimits, SecureWsStore, StoreStats } from '../types.js'
import { HeldRateCounter } from './held-counter.js'

export interface MemoryStoreOptions {
  /**
   * How often idle rate counters are dropped, in ms.
   * @default 10000
   */
  sweepIntervalMs?: number
  /** Clock in ms since the epoch; for tests. @default Date.now */
  now?: () => number
}

const DEFAULT_SWEEP_INTERVAL_MS = 10_000

/** A user's counts in this process. */
class HeldCounter extends HeldRateCounter {
  readonly #now: () => number

  constructor (limits: Readonly<RateLimits>, now: () => number) {
    super(limits)
    this.#now = now
  }

  consume (): boolean {
    return this.tryConsume(this.#now())
  }
}

/** Counters and slots shared by the connections of one process. */
export class MemoryStore implements SecureWsStore {
  readonly #slots = new Map<string, Set<string>>()
  readonly #counters = new Map<string, HeldCounter>()
  readonly #authFailures = new AuthFailureLog()
  readonly #revocations = new Revocations()
  readonly #now: () => number
  readonly #sweepIntervalMs: number
  #sweeper: NodeJS.Timeout | undefined

  constructor (options: MemoryStoreOptions = {}) {
    if (typeof options !== 'object' || options === null) throw new InvalidOptionError('memoryStore: options must be an object')
    refuseUnknownKeys(options, ['sweepIntervalMs', 'now'], '', InvalidOptionError, 'memoryStore: ')
    this.#now = options.now ?? Date.now
    this.#sweepIntervalMs = options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS
    if (!(Number.isInteger(this.#sweepIntervalMs) && this.#sweepIntervalMs > 0)) {
      throw new InvalidOptionError('memoryStore: sweepIntervalMs must be a positive integer')
    }
  }

  acquireSlot (key: string, connectionId: string, limit: number): boolean {
    // Check and add run in one synchronous step, so concurrent upgrades cannot both pass.
    if ((this.#slots.get(key)?.size ?? 0) >= limit) return false
    addTo(this.#slots, key, connectionId)
    return true
  }

  releaseSlot (key: string, connectionId: string): void {
    removeFrom(this.#slots, key, connectionId)
  }

  holdCounter (key: string, limits: Readonly<RateLimits>): MessageCounter {
    let counter = this.#counters.get(key)
    if (counter === undefined) {
      counter = new HeldCounter(limits, this.#now)
      this.#counters.set(key, counter)
      this.#startSweeper()
    }
    return counter.hold()
  }

  recordAuthFailure (address: string, limit: number): number {
    const until = this.#authFailures.record(address, limit, this.#now())
    this.#startSweeper()
    return until
  }

  lockedOutUntil (address: string): number {
    return this.#authFailures.lockedOutUntil(address, this.#now())
  }

  revokeUser (userId: string, issuedBefore: number, ttlMs: number): void {
    this.#revocations.revoke(userId, issuedBefore, this.#now() + ttlMs)
    this.#startSweeper()
  }

  revokedBefore (userId: string): number {
    return this.#revocations.revokedBefore(userId, this.#now())
  }

  stats (): StoreStats {
    return { available: true, slots: sizes(this.#slots), rateCounters: this.#counters.size, authFailureAddresses: this.#authFailures.size, revocations: this.#revocations.size }
  }

  async close (): Promise<void> {
    this.#stopSweeper()
    this.#counters.clear()
    this.#slots.clear()
    this.#authFailures.clear()
    this.#revocations.clear()
  }

  #startSweeper (): void {
    if (this.#sweeper !== undefined) return
    this.#sweeper = setInterval(() => this.#sweep(), this.#sweepIntervalMs)
    // An idle store must never keep the process alive.
    this.#sweeper.unref()
  }

  #stopSweeper (): void {
    clearInterval(this.#sweeper)
    this.#sweeper = undefined
  }

  #sweep (): void {
    const now = this.#now()
    for (const [key, counter] of this.#counters) {
      if (counter.canDrop(now)) this.#counters.delete(key)
    }
    this.#authFailures.sweep(now)
    this.#revocations.sweep(now)
    if (this.#counters.size === 0 && this.#authFailures.size === 0 && this.#revocations.size === 0) this.#stopSweeper()
  }
}

/** The default store: limits held in this process only. */
export function memoryStore (options?: MemoryStoreOptions): SecureWsStore {
  return new MemoryStore(options)
}
