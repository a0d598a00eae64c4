import type { CloseKind, CloseReason } from './types.js'

/**
 * Every way the plugin ends or refuses a connection, with its close code, its close reason
 * and the HTTP status used when `rejectWith: 'http'` refuses before the upgrade.
 * This table is the only place a close code is written down; apps override entries through
 * the `closeReasons` option.
 */
export const DEFAULT_CLOSE_REASONS = {
  originNotAllowed: { code: 1008, reason: 'Origin not allowed', status: 403 },
  invalidToken: { code: 4401, reason: 'Invalid or expired authentication token', status: 401 },
  accessDenied: { code: 1008, reason: 'Access denied', status: 403 },
  tooManyConnections: { code: 1008, reason: 'Too many connections', status: 429 },
  storeUnavailable: { code: 1013, reason: 'Try again later', status: 503 },
  authUnavailable: { code: 1013, reason: 'Try again later', status: 503 },
  admissionTimeout: { code: 1013, reason: 'Try again later', status: 503 },
  serverFull: { code: 1013, reason: 'Try again later', status: 503 },
  tooManyAuthFailures: { code: 1008, reason: 'Too many failed authentications', status: 429 },
  tooManyPendingUpgrades: { code: 1013, reason: 'Try again later', status: 429 },
  internalError: { code: 1011, reason: 'Internal server error', status: 500 },
  rateLimited: { code: 1008, reason: 'Rate limit exceeded', status: 429 },
  messageTooBig: { code: 1009, reason: 'Message too big', status: 413 },
  tokenExpired: { code: 4401, reason: 'Invalid or expired authentication token', status: 401 },
  disconnected: { code: 4403, reason: 'Disconnected by the server', status: 403 },
  loggedOut: { code: 4403, reason: 'Logged out', status: 403 },
  slowConsumer: { code: 1013, reason: 'Slow consumer', status: 503 },
  heartbeatTimeout: { code: 4408, reason: 'No answer to ping', status: 408 },
  shuttingDown: { code: 1001, reason: 'Server shutting down', status: 503 }
} as const satisfies Record<CloseKind, CloseReason>

/**
 * Refusals answered with their HTTP status before the upgrade, whatever `rejectWith` says:
 * they guard the server against one address, and completing an upgrade only to close it
 * would cost the very resources they protect.
 */
export const HTTP_ONLY_REFUSALS: ReadonlySet<CloseKind> = new Set<CloseKind>(['tooManyAuthFailures', 'tooManyPendingUpgrades'])

/** Largest close reason RFC 6455 allows: 125 bytes of control payload less the 2-byte code. */
export const MAX_CLOSE_REASON_BYTES = 123

/** A close reason ws will send: a string of at most 123 bytes of UTF-8. */
export function isSendableCloseReason (reason: unknown): reason is string {
  return typeof reason === 'string' && Buffer.byteLength(reason) <= MAX_CLOSE_REASON_BYTES
}

/** Close codes a server may send: the registered ones meant for endpoints, and the 3000-4999 range. */
export function isSendableCloseCode (code: number): boolean {
  if (!Number.isInteger(code)) return false
  if (code >= 3000 && code <= 4999) return true
  return code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006
}
