import type { RateLimits } from '../rate-window.js'

export type { RateLimits }

/** What a store reports for `fastify.secureWs.stats()`. */
export interface StoreStats {
  /** Connection slots this process holds, by limit key. */
  slots: Record<string, number>
  /** Rate counters kept in this process (released once a user has been idle a minute). */
  rateCounters: number
}

/**
 * Where connection slots and message counts live. The in-memory store serves one process;
 * the Redis store shares one set of limits between instances. Slot calls are async because
 * they may cross the network once per connection; the message check is synchronous by
 * design, so the per-message path never waits on I/O.
 */
export interface SecureWsStore {
  /**
   * Takes a slot for `connectionId` under `key` when fewer than `limit` are held, atomically
   * with respect to every other caller sharing the store. Resolves false when full; rejects
   * when the backend cannot be reached (admission then refuses with `storeUnavailable`).
   */
  acquireSlot (key: string, connectionId: string, limit: number): Promise<boolean>
  /** Frees the slot. Called exactly once per acquired slot; must not reject. */
  releaseSlot (key: string, connectionId: string): Promise<void>
  /** Counts one inbound message for `key`; false when either window is already full. */
  consumeMessage (key: string, limits: RateLimits): boolean
  /** Current holdings, for tests and monitoring. */
  stats (): StoreStats
  /** Stops timers and lets go of connections; called from Fastify's `onClose`. */
  close (): Promise<void>
}
