import type { FastifyBaseLogger } from 'fastify'
import type { AuditHook, CloseKind, SecureWsAuditEvent, TelemetrySink } from './types.js'

/** Refusals counted in `stats().refusals`, each from 0. */
export const REFUSAL_KINDS = [
  'originNotAllowed', 'invalidToken', 'accessDenied', 'tooManyConnections', 'storeUnavailable',
  'tooManyAuthFailures', 'tooManyPendingUpgrades', 'authUnavailable', 'admissionTimeout', 'serverFull', 'internalError', 'shuttingDown'
] as const satisfies readonly CloseKind[]

/** Server-side closes of admitted connections counted in `stats().closes`, each from 0. */
export const CLOSE_KINDS = [
  'rateLimited', 'messageTooBig', 'tokenExpired', 'loggedOut', 'disconnected', 'heartbeatTimeout',
  'slowConsumer', 'shuttingDown', 'internalError', 'storeUnavailable', 'authUnavailable'
] as const satisfies readonly CloseKind[]

function zeroes<K extends string> (kinds: readonly K[]): Record<K, number> {
  const counts = {} as Record<K, number>
  for (const kind of kinds) counts[kind] = 0
  return counts
}

/**
 * The plugin's counters and the app's audit hook. Counting is a field increment, so the
 * per-message path pays nothing else; events are built only when the app listens.
 */
export class Telemetry implements TelemetrySink {
  readonly refusals = zeroes<CloseKind>(REFUSAL_KINDS)
  readonly closes = zeroes<CloseKind>(CLOSE_KINDS)
  /** Inbound frames on admitted connections, valid or not (not those refused for their size). */
  messages = 0
  readonly #audit: AuditHook | undefined
  readonly #log: FastifyBaseLogger

  constructor (audit: AuditHook | undefined, log: FastifyBaseLogger) {
    this.#audit = audit
    this.#log = log
  }

  /** Whether anyone listens for events: callers skip building them otherwise. */
  get auditing (): boolean {
    return this.#audit !== undefined
  }

  /** Counts a refusal of `kind`; the event is built only when an audit hook listens. */
  refused (kind: CloseKind, event: () => Extract<SecureWsAuditEvent, { type: 'refused' }>): void {
    this.refusals[kind] = (this.refusals[kind] ?? 0) + 1
    if (this.#audit !== undefined) this.emit(event())
  }

  closedByServer (kind: CloseKind): void {
    this.closes[kind] = (this.closes[kind] ?? 0) + 1
  }

  /** Hands `event` to the audit hook; a hook that throws is logged, never let through. */
  emit (event: SecureWsAuditEvent): void {
    if (this.#audit === undefined) return
    try {
      this.#audit(event)
    } catch (err) {
      this.#log.error({ err, event: event.type }, 'fastify-secure-ws: audit hook failed')
    }
  }
}
