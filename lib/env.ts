import { InvalidEnvError } from './errors.js'
import { MAX_TIMER_MS, MIN_HEARTBEAT_INTERVAL_MS, isHeartbeatInterval, isWildcardOrigin } from './options.js'
import { parseOrigin } from './origin.js'
import type { Limits, ServerLimits } from './types.js'

/** Environment variables `optionsFromEnv` reads, and the limit each one sets. */
export const ENV_LIMITS: ReadonlyArray<readonly [string, keyof Limits]> = [
  ['WS_MAX_CONNECTIONS_PER_USER', 'connectionsPerUser'],
  ['WS_MAX_MESSAGES_PER_SECOND', 'messagesPerSecond'],
  ['WS_MAX_MESSAGES_PER_MINUTE', 'messagesPerMinute'],
  ['WS_MAX_PAYLOAD_BYTES', 'maxPayloadBytes'],
  ['WS_MAX_BUFFERED_BYTES', 'maxBufferedBytes']
]

/** Environment variables for server-wide limits where `0` turns the limit off. */
export const ENV_SERVER_LIMITS: ReadonlyArray<readonly [string, keyof ServerLimits]> = [
  ['WS_MAX_AUTH_FAILURES_PER_MINUTE', 'authFailuresPerMinute']
]

export interface EnvOptions {
  /** From `WS_ALLOWED_ORIGINS`; absent when the variable is unset. */
  origins?: string[]
  /** Only the limits whose variables are set. */
  limits: Partial<Limits & ServerLimits>
  /** From `WS_HEARTBEAT_INTERVAL_MS` (0: off); absent when unset. */
  heartbeatIntervalMs?: number
}

function isSet (value: string | undefined): value is string {
  return value !== undefined && value !== ''
}

function integer (value: string): number {
  return /^\d+$/.test(value.trim()) ? Number(value.trim()) : Number.NaN
}

function positiveInteger (name: string, value: string): number {
  const n = integer(value)
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidEnvError(`${name} must be a positive integer, got "${value}"`)
  return n
}

function zeroOrPositiveInteger (name: string, value: string): number {
  const n = integer(value)
  if (!Number.isSafeInteger(n)) throw new InvalidEnvError(`${name} must be 0 (off) or a positive integer, got "${value}"`)
  return n
}

function heartbeatInterval (name: string, value: string): number {
  const n = integer(value)
  if (!isHeartbeatInterval(n)) {
    throw new InvalidEnvError(`${name} must be 0 (off) or an integer from ${MIN_HEARTBEAT_INTERVAL_MS} to ${MAX_TIMER_MS}, got "${value}"`)
  }
  return n
}

function origins (name: string, value: string): string[] {
  return value.split(',').map((entry) => {
    if (isWildcardOrigin(entry)) throw new InvalidEnvError(`${name} must list every origin: wildcards are not supported, got "${entry.trim()}"`)
    const origin = parseOrigin(entry.trim())
    if (origin === null) throw new InvalidEnvError(`${name} must be a comma-separated list of scheme://host[:port] origins, got "${entry.trim()}"`)
    return origin
  })
}

/**
 * Reads the plugin's settings from environment variables. Unset variables are left out so
 * the app's own defaults apply; a malformed one throws an error naming the variable.
 */
export function optionsFromEnv (env: Record<string, string | undefined> = process.env): EnvOptions {
  const result: EnvOptions = { limits: {} }
  const allowed = env.WS_ALLOWED_ORIGINS
  if (isSet(allowed)) result.origins = origins('WS_ALLOWED_ORIGINS', allowed)
  for (const [name, limit] of ENV_LIMITS) {
    const value = env[name]
    if (isSet(value)) result.limits[limit] = positiveInteger(name, value)
  }
  for (const [name, limit] of ENV_SERVER_LIMITS) {
    const value = env[name]
    if (isSet(value)) result.limits[limit] = zeroOrPositiveInteger(name, value)
  }
  const heartbeat = env.WS_HEARTBEAT_INTERVAL_MS
  if (isSet(heartbeat)) result.heartbeatIntervalMs = heartbeatInterval('WS_HEARTBEAT_INTERVAL_MS', heartbeat)
  return result
}
