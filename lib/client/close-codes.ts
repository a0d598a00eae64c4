/**
 * The server's close frames as a client tells them apart: by code and reason. Several server
 * kinds share one frame (every "Try again later" is 1013 with the same reason), so a client
 * kind names the frame, not the server's cause. Must agree with lib/close-codes.ts
 * (test/client-close-codes.test.ts compares them); it is written out here because the
 * client may not load server code.
 */
export const CLOSE_FRAMES = {
  originNotAllowed: [1008, 'Origin not allowed'],
  invalidToken: [4401, 'Invalid or expired authentication token'],
  accessDenied: [1008, 'Access denied'],
  tooManyConnections: [1008, 'Too many connections'],
  tryAgainLater: [1013, 'Try again later'],
  tooManyAuthFailures: [1008, 'Too many failed authentications'],
  internalError: [1011, 'Internal server error'],
  rateLimited: [1008, 'Rate limit exceeded'],
  messageTooBig: [1009, 'Message too big'],
  disconnected: [4403, 'Disconnected by the server'],
  loggedOut: [4403, 'Logged out'],
  slowConsumer: [1013, 'Slow consumer'],
  heartbeatTimeout: [4408, 'No answer to ping'],
  shuttingDown: [1001, 'Server shutting down']
} as const

/**
 * What ended a connection: a server close frame of the table above; or `normal` (1000,
 * including `client.close()`), `connectionLost` (1006: no close frame, e.g. the server was
 * unreachable or refused the upgrade with an HTTP status), `unknown` (any other frame,
 * including a table code whose reason the app has overridden and that other kinds share).
 */
export type CloseKind = keyof typeof CLOSE_FRAMES | 'normal' | 'connectionLost' | 'unknown'

const ENTRIES = Object.entries(CLOSE_FRAMES) as Array<[keyof typeof CLOSE_FRAMES, readonly [number, string]]>

export function closeKindOf (code: number, reason: string): CloseKind {
  const sameCode = ENTRIES.filter(([, [c]]) => c === code)
  const match = sameCode.find(([, [, r]]) => r === reason) ?? (sameCode.length === 1 ? sameCode[0] : undefined)
  return match !== undefined ? match[0] : code === 1000 ? 'normal' : code === 1006 ? 'connectionLost' : 'unknown'
}

/** Server going away, connection lost, server error, try again later, missed heartbeat: worth another try. */
const TRANSIENT = [1001, 1006, 1011, 1013, 4408]
const AUTHENTICATION = 4401

/**
 * `retry`: reconnect with backoff; `retryOnce`: one more try with a fresh token (4401: the
 * token was refused or expired), then stop; `stop`: retrying cannot help (policy violations
 * such as 1008, logged out or disconnected 4403, message too big, normal closure).
 */
export function closePolicyOf (code: number): 'retry' | 'retryOnce' | 'stop' {
  return code === AUTHENTICATION ? 'retryOnce' : TRANSIENT.includes(code) ? 'retry' : 'stop'
}
