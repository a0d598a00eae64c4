import type { FastifyBaseLogger } from 'fastify'
import { isThenable } from './admission.js'
import type { Telemetry } from './telemetry.js'
import type { CloseKind, SecureWsStore, ServerLimits } from './types.js'

/** A refusal decided before any check of the upgrade itself. */
export interface EarlyRefusal {
  readonly kind: CloseKind
  /** Seconds the client should wait, for `Retry-After`. */
  readonly retryAfter?: number
}

/**
 * What protects the server from one address or from sheer numbers, before an upgrade's own
 * checks: the per-address lockout after failed authentications, the cap on one address's
 * upgrades still being checked, and the cap on connections in the process.
 */
export class UpgradeGuard {
  readonly #limits: Readonly<ServerLimits>
  readonly #store: SecureWsStore
  readonly #openConnections: () => number
  readonly #pendingByIp = new Map<string, number>()
  /** The lockout last announced per address, so one lockout is one log line even when failures settle out of order. */
  readonly #announced = new Map<string, number>()
  #pending = 0
  /** Whether `verifyToken` is failing, so the outage is logged once, not per upgrade. */
  #verifierDown = false

  readonly #telemetry: Telemetry

  constructor (limits: Readonly<ServerLimits>, store: SecureWsStore, openConnections: () => number, telemetry: Telemetry) {
    this.#telemetry = telemetry
    this.#limits = limits
    this.#store = store
    this.#openConnections = openConnections
  }

  /** Upgrades being checked now, all addresses together. */
  get pending (): number {
    return this.#pending
  }

  /**
   * The refusal for an upgrade from `ip`, or undefined when it may be checked; then it counts
   * as pending until `leave(ip)`.
   */
  enter (ip: string): EarlyRefusal | undefined {
    const retryAfter = this.lockedOutFor(ip)
    if (retryAfter > 0) return { kind: 'tooManyAuthFailures', retryAfter }
    const pendingHere = this.#pendingByIp.get(ip) ?? 0
    if (pendingHere >= this.#limits.pendingUpgradesPerIp) return { kind: 'tooManyPendingUpgrades', retryAfter: 1 }
    const max = this.#limits.maxConnections
    if (max > 0 && this.#openConnections() + this.#pending >= max) return { kind: 'serverFull' }
    this.#pendingByIp.set(ip, pendingHere + 1)
    this.#pending++
    return undefined
  }

  /** Whole seconds `ip` stays locked out (at least 1), or 0 when it is not. */
  lockedOutFor (ip: string): number {
    if (this.#limits.authFailuresPerMinute === 0) return 0
    const until = this.#store.lockedOutUntil(ip)
    return until > 0 ? Math.max(1, Math.ceil((until - Date.now()) / 1000)) : 0
  }

  leave (ip: string): void {
    const pendingHere = this.#pendingByIp.get(ip)
    if (pendingHere === undefined) return
    if (pendingHere <= 1) this.#pendingByIp.delete(ip)
    else this.#pendingByIp.set(ip, pendingHere - 1)
    this.#pending--
  }

  /**
   * Counts an upgrade from `ip` refused for its token; logs one line when that locks the
   * address out, not one per attempt after.
   */
  authFailed (ip: string, log: FastifyBaseLogger): void {
    const limit = this.#limits.authFailuresPerMinute
    if (limit === 0) return
    const locked = (until: number): void => {
      const now = Date.now()
      // A shared store answers later: failures in flight together all report the same lockout.
      if (until <= now || (this.#announced.get(ip) ?? 0) > now) return
      this.#announce(ip, until, now)
      const lockedOutForS = Math.ceil((until - now) / 1000)
      log.warn({ ip, failures: limit, lockedOutForS }, 'client address locked out after failed authentications')
      this.#telemetry.emit({ type: 'lockedOut', ip, lockedOutForS })
    }
    let result: number | Promise<number>
    try {
      result = this.#store.recordAuthFailure(ip, limit)
    } catch (err) {
      log.error({ err }, 'store failed to count a failed authentication')
      return
    }
    if (isThenable(result)) result.then(locked, (err: unknown) => log.error({ err }, 'store failed to count a failed authentication'))
    else locked(result)
  }

  #announce (ip: string, until: number, now: number): void {
    // Bounded like the store's own record: announcements that ran out go when the map grows.
    if (this.#announced.size >= 10_000) {
      for (const [address, end] of this.#announced) if (end <= now) this.#announced.delete(address)
    }
    this.#announced.set(ip, until)
  }

  /** `verifyToken` threw or rejected: logs `err` once per outage. */
  verifierFailed (err: unknown, log: FastifyBaseLogger): void {
    if (this.#verifierDown) return
    this.#verifierDown = true
    log.error({ err }, 'verifyToken failed; upgrades are refused with 1013 until it answers again')
  }

  /** `verifyToken` answered (a user or a refusal). */
  verifierAnswered (log: FastifyBaseLogger): void {
    if (!this.#verifierDown) return
    this.#verifierDown = false
    log.info('verifyToken answers again')
  }
}
