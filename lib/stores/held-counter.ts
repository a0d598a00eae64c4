import { RateCounter } from '../rate-window.js'
import type { MessageCounter } from '../types.js'

/**
 * A user's message counts as a store keeps them: shared by every connection of that user,
 * which hold it for their life, and dropped only once nobody holds it and nothing it counted
 * can affect a check (so a reconnect does not reset the counts, and two connections never
 * count apart).
 */
export abstract class HeldRateCounter extends RateCounter implements MessageCounter {
  #holders = 0

  abstract consume (): boolean

  /** One more connection holds this counter; returns it. */
  hold (): this {
    this.#holders++
    return this
  }

  release (): void {
    this.#holders--
  }

  /** True when the store may forget this counter. */
  canDrop (now: number): boolean {
    return this.#holders === 0 && this.isIdle(now)
  }
}
