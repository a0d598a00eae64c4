import type { FastifyBaseLogger } from 'fastify'
import type { RateLimits } from '../rate-window.js'

export type { RateLimits }

/**
 * One key's message counts, shared by every connection counted under that key. A connection
 * holds its counter for its whole life, so a message costs one call on an object it already
 * has, with no lookup by key.
 */
export interface MessageCounter {
  /**
   * Counts one inbound message now; false, counting nothing, when either window is already
   * full. Synchronous by design: the per-message path never waits on I/O.
   */
  consume (): boolean
  /** Lets go of the counter; called exactly once per `holdCounter` call, when the connection ends. */
  release (): void
}

/** What a store reports for `fastify.secureWs.stats()`. */
export interface StoreStats {
  /**
   * Whether the store can reach its backend now (always true for a store that keeps
   * everything in the process). While false, a shared store refuses new connections (1013)
   * unless it fails open.
   */
  available: boolean
  /** Connection slots this process holds, by limit key. */
  slots: Record<string, number>
  /** Rate counters kept in this process (released once a user has been idle a minute). */
  rateCounters: number
  /** Client addresses with failed authentications or a lockout remembered in this process. */
  authFailureAddresses: number
  /** Users with a revocation remembered in this process. */
  revocations: number
}

/** An action every instance sharing the store carries out on its own connections. */
export type BroadcastEvent =
  | { kind: 'publish', topic: string, type: string, body: unknown }
  | { kind: 'disconnect', userId: string, code?: number, reason?: string }
  /** The user logged out: connections holding a credential issued at or before `issuedBefore` (ms since the epoch) close with 4403 `Logged out`. */
  | { kind: 'revoke', userId: string, issuedBefore: number }

/** What the plugin hands a store when it is registered. */
export interface StoreContext {
  /** The Fastify logger, for outage lines. */
  log: FastifyBaseLogger
  /** Carries out an event another instance broadcast. */
  deliver: (event: BroadcastEvent) => void
  /**
   * The counts under `key`, every instance together, went over a limit that this process's
   * own checks did not see (a user spread over several instances): the connections here
   * counted under `key` get the rate-limit error and close.
   */
  rateExceeded: (key: string) => void
  /**
   * The store can no longer vouch for these connections' slots (a lease it could not renew
   * before it lapsed): they close with 1013, so no partition lets a user over the limit.
   */
  slotsLost: (slots: ReadonlyArray<{ key: string, connectionId: string }>) => void
}

/**
 * Where connection slots and message counts live. The in-memory store serves one process;
 * the Redis store shares one set of limits between instances. Slot calls may be async because
 * they may cross the network once per connection; the message check is synchronous by
 * design, so the per-message path never waits on I/O.
 */
export interface SecureWsStore {
  /**
   * Takes a slot for `connectionId` under `key` when fewer than `limit` are held, atomically
   * with respect to every other caller sharing the store. Returns (or resolves) false when
   * full; throws or rejects when the backend cannot be reached (admission then refuses with
   * `storeUnavailable`). A store that answers from memory returns synchronously.
   */
  acquireSlot (key: string, connectionId: string, limit: number): boolean | Promise<boolean>
  /** Frees the slot. Called exactly once per acquired slot; a rejection is logged. */
  releaseSlot (key: string, connectionId: string): void | Promise<void>
  /**
   * The message counter for `key`, held by one connection until it calls `release`. Every
   * call with the same key while any holder remains returns a counter over the same counts
   * (`limits` are the same for a key). A counter nobody holds stays until it has been idle
   * for a minute, so reconnecting does not reset a user's counts.
   */
  holdCounter (key: string, limits: Readonly<RateLimits>): MessageCounter
  /**
   * Counts one upgrade from `address` refused for its token. Returns (or resolves) until when
   * the address is locked out, in ms since the epoch, once `limit` such failures fall within
   * a minute (every instance sharing the store together); 0 while it is not. A shared store
   * that cannot reach its backend counts in this process instead: a lockout must not lift
   * because the store is down.
   */
  recordAuthFailure (address: string, limit: number): number | Promise<number>
  /**
   * Until when `address` is locked out (ms since the epoch), or 0. Synchronous: it runs before
   * every upgrade, so a shared store answers from what it has learnt, never over the network.
   */
  lockedOutUntil (address: string): number
  /**
   * Revokes every credential of `userId` issued at or before `issuedBefore` (ms since the
   * epoch), for `ttlMs`: as long as such a credential could still be unexpired. A later
   * revocation of the same user replaces an earlier one only if it reaches further.
   * Rejects when the backend cannot be reached.
   */
  revokeUser (userId: string, issuedBefore: number, ttlMs: number): void | Promise<void>
  /**
   * The latest revocation of `userId` still in force (ms since the epoch), or 0. Read at
   * connect and at refresh; a shared store may ask its backend (rejecting when it cannot,
   * which refuses the upgrade with 1013).
   */
  revokedBefore (userId: string): number | Promise<number>
  /** Called once at registration; a shared store starts listening for broadcasts here. */
  init? (context: StoreContext): void
  /**
   * Sends an event to the other instances sharing the store (this instance has already
   * carried it out). Absent on stores that serve one process. Rejects when unreachable.
   */
  broadcast? (event: BroadcastEvent): Promise<void>
  /** Current holdings, for tests and monitoring. */
  stats (): StoreStats
  /** Stops timers and lets go of connections; called from Fastify's `onClose`. */
  close (): Promise<void>
}
