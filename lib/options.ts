import { DEFAULT_CLOSE_REASONS, MAX_CLOSE_REASON_BYTES, isSendableCloseCode, isSendableCloseReason } from './close-codes.js'
import { InvalidOptionError } from './errors.js'
import { closestName, refuseUnknownKeys } from './known-keys.js'
import { createOriginCheck, parseOrigin } from './origin.js'
import { memoryStore } from './stores/memory.js'
import { createJwtVerifier } from './token.js'
import type { AuditHook, CloseKind, CloseReason, CloseReasons, Limits, PrometheusRegistry, ResolvedOptions, SecureWsStore, ServerLimits, VerifyToken } from './types.js'

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  connectionsPerUser: 5,
  messagesPerSecond: 10,
  messagesPerMinute: 100,
  maxPayloadBytes: 64 * 1024,
  maxBufferedBytes: 1024 * 1024
})

export const DEFAULT_SERVER_LIMITS: Readonly<ServerLimits> = Object.freeze({
  authFailuresPerMinute: 30,
  pendingUpgradesPerIp: 64,
  maxConnections: 0
})

export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 3000
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 30_000
export const DEFAULT_REFUSAL_GRACE_MS = 1000
export const DEFAULT_ADMISSION_TIMEOUT_MS = 10_000
// Any positive interval is an interval; a short one is the app's trade of traffic for detection.
export const MIN_HEARTBEAT_INTERVAL_MS = 1
// setInterval's own ceiling: a longer delay is silently taken as 1 ms.
export const MAX_TIMER_MS = 2 ** 31 - 1

/** A heartbeat interval the plugin takes: 0 (off), or a timer's range. */
export function isHeartbeatInterval (value: unknown): value is number {
  return value === 0 || (isPositiveInteger(value) && value >= MIN_HEARTBEAT_INTERVAL_MS && value <= MAX_TIMER_MS)
}

/** Origin entries with a `*`: refused with what to do instead, not as malformed. */
export function isWildcardOrigin (entry: string): boolean {
  return entry.includes('*')
}

const KNOWN_OPTIONS = ['origins', 'allowMissingOrigin', 'verifyToken', 'jwt', 'limits', 'store', 'closeReasons', 'rejectWith', 'shutdownTimeoutMs', 'heartbeatIntervalMs', 'refusalGraceMs', 'admissionTimeoutMs', 'audit', 'prometheus']
// Fastify hands its own register options to the plugin with ours.
const FASTIFY_REGISTER_OPTIONS = ['prefix', 'logLevel', 'logSerializers']
const LIMIT_NAMES = Object.keys(DEFAULT_LIMITS) as Array<keyof Limits>
const SERVER_LIMIT_NAMES = Object.keys(DEFAULT_SERVER_LIMITS) as Array<keyof ServerLimits>
// Server limits where 0 means off.
const ZERO_TURNS_OFF: ReadonlySet<string> = new Set(['authFailuresPerMinute', 'maxConnections'])
const STORE_METHODS = ['acquireSlot', 'releaseSlot', 'holdCounter', 'recordAuthFailure', 'lockedOutUntil', 'revokeUser', 'revokedBefore', 'stats', 'close'] as const

function fail (message: string): never {
  throw new InvalidOptionError(message)
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

export function isPositiveInteger (value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0
}

/**
 * Validates a partial limits object; `where` names it in errors (`limits`, `<url>: limits`).
 * A route takes only the per-route limits; the plugin's `limits` the server-wide ones too.
 */
export function validateLimits (value: unknown, where: string, serverWide = false): Partial<Limits & ServerLimits> {
  if (value === undefined) return {}
  if (!isPlainObject(value)) fail(`${where} must be an object`)
  const known: string[] = serverWide ? [...LIMIT_NAMES, ...SERVER_LIMIT_NAMES] : LIMIT_NAMES
  for (const name of Object.keys(value)) {
    if (!known.includes(name)) {
      if (SERVER_LIMIT_NAMES.includes(name as keyof ServerLimits)) fail(`${where}.${name} is server-wide: set it in the plugin's limits, not a route's`)
      const hint = closestName(name, known)
      fail(`${where}.${name} is not a known limit (${hint === undefined ? `expected one of ${known.join(', ')}` : `did you mean ${where}.${hint}?`})`)
    }
    const limit = value[name]
    if (ZERO_TURNS_OFF.has(name)) {
      if (limit !== 0 && !isPositiveInteger(limit)) fail(`${where}.${name} must be 0 (off) or a positive integer`)
    } else if (!isPositiveInteger(limit)) {
      fail(`${where}.${name} must be a positive integer`)
    }
  }
  return value as Partial<Limits & ServerLimits>
}

function pick<T extends object> (from: Partial<Record<string, unknown>>, defaults: Readonly<T>): Readonly<T> {
  const picked: Record<string, unknown> = { ...defaults }
  for (const name of Object.keys(defaults)) if (from[name] !== undefined) picked[name] = from[name]
  return Object.freeze(picked) as Readonly<T>
}

function validateOrigins (value: unknown): string[] {
  if (!Array.isArray(value) || value.length === 0) {
    fail('origins is required: a non-empty array of exact origins such as "https://app.example.com"')
  }
  return value.map((entry, i) => {
    if (typeof entry === 'string' && isWildcardOrigin(entry)) fail(`origins[${i}]: wildcards are not supported; list every origin that may connect (for example "https://app.example.com", "https://admin.example.com")`)
    const origin = typeof entry === 'string' ? parseOrigin(entry) : null
    if (origin === null) fail(`origins[${i}] must be an origin of the form scheme://host[:port]`)
    return origin
  })
}

function validateCloseReasons (value: unknown): CloseReasons {
  if (value === undefined) return DEFAULT_CLOSE_REASONS
  if (!isPlainObject(value)) fail('closeReasons must be an object')
  const merged: Record<string, CloseReason> = {}
  for (const kind of Object.keys(DEFAULT_CLOSE_REASONS) as CloseKind[]) {
    merged[kind] = { ...DEFAULT_CLOSE_REASONS[kind] }
  }
  for (const [kind, override] of Object.entries(value)) {
    const entry = merged[kind]
    if (entry === undefined) {
      const hint = closestName(kind, Object.keys(merged))
      fail(`closeReasons.${kind} is not a known refusal (${hint === undefined ? `expected one of ${Object.keys(merged).join(', ')}` : `did you mean closeReasons.${hint}?`})`)
    }
    refuseUnknownKeys(isPlainObject(override) ? override : {}, ['code', 'reason', 'status'], `closeReasons.${kind}.`)
    if (!isPlainObject(override)) fail(`closeReasons.${kind} must be an object`)
    if (override.code !== undefined) {
      if (typeof override.code !== 'number' || !isSendableCloseCode(override.code)) fail(`closeReasons.${kind}.code must be a close code a server may send (1000-1014 except 1004-1006, or 3000-4999)`)
      entry.code = override.code
    }
    if (override.reason !== undefined) {
      if (!isSendableCloseReason(override.reason)) fail(`closeReasons.${kind}.reason must be a string of at most ${MAX_CLOSE_REASON_BYTES} bytes`)
      entry.reason = override.reason
    }
    if (override.status !== undefined) {
      if (typeof override.status !== 'number' || !Number.isInteger(override.status) || override.status < 400 || override.status > 599) fail(`closeReasons.${kind}.status must be an HTTP error status (400-599)`)
      entry.status = override.status
    }
  }
  for (const entry of Object.values(merged)) Object.freeze(entry)
  return Object.freeze(merged) as CloseReasons
}

function validateStore (value: unknown): SecureWsStore {
  if (value === undefined) return memoryStore()
  if (typeof value !== 'object' || value === null) fail('store must be a store object such as memoryStore() or redisStore(...)')
  for (const method of STORE_METHODS) {
    if (typeof (value as Record<string, unknown>)[method] !== 'function') fail(`store.${method} must be a function (see the SecureWsStore interface)`)
  }
  return value as SecureWsStore
}

function validateVerifier (options: Record<string, unknown>): { verifyToken: VerifyToken, expiryGraceMs: number } {
  const { verifyToken, jwt } = options
  if (verifyToken !== undefined && jwt !== undefined) fail('give either verifyToken or jwt, not both')
  if (verifyToken !== undefined) {
    if (typeof verifyToken !== 'function') fail('verifyToken must be a function (token, request) => user | null')
    return { verifyToken: verifyToken as VerifyToken, expiryGraceMs: 0 }
  }
  if (jwt === undefined) fail('verifyToken or jwt is required: every connection must be authenticated')
  return createJwtVerifier(jwt, fail)
}

/** Checks every option once, at registration, and returns the frozen set the plugin runs on. */
export function validateOptions (raw: unknown): ResolvedOptions {
  if (!isPlainObject(raw)) fail('options must be an object')
  refuseUnknownKeys(raw, [...KNOWN_OPTIONS, ...FASTIFY_REGISTER_OPTIONS], '')
  const origins = validateOrigins(raw.origins)
  if (raw.allowMissingOrigin !== undefined && typeof raw.allowMissingOrigin !== 'boolean') fail('allowMissingOrigin must be a boolean')
  if (raw.rejectWith !== undefined && raw.rejectWith !== 'close' && raw.rejectWith !== 'http') fail('rejectWith must be "close" or "http"')
  if (raw.shutdownTimeoutMs !== undefined && !isPositiveInteger(raw.shutdownTimeoutMs)) fail('shutdownTimeoutMs must be a positive integer')
  const heartbeat = raw.heartbeatIntervalMs
  if (heartbeat !== undefined && !isHeartbeatInterval(heartbeat)) {
    fail(`heartbeatIntervalMs must be 0 (off) or an integer from ${MIN_HEARTBEAT_INTERVAL_MS} to ${MAX_TIMER_MS}`)
  }
  for (const name of ['refusalGraceMs', 'admissionTimeoutMs']) {
    const value = raw[name]
    if (value !== undefined && !(isPositiveInteger(value) && value <= MAX_TIMER_MS)) fail(`${name} must be an integer from 1 to ${MAX_TIMER_MS}`)
  }
  if (raw.audit !== undefined && typeof raw.audit !== 'function') fail('audit must be a function (event) => void')
  const prometheus = raw.prometheus as { registry?: unknown } | undefined
  if (prometheus !== undefined && !(isPlainObject(prometheus) && typeof (prometheus.registry as PrometheusRegistry | undefined)?.registerMetric === 'function')) {
    fail('prometheus must be { registry } with a prom-client Registry (for example prom-client\'s register)')
  }
  const { verifyToken, expiryGraceMs } = validateVerifier(raw)
  const allLimits = validateLimits(raw.limits, 'limits', true)
  return Object.freeze({
    isOriginAllowed: createOriginCheck(origins, raw.allowMissingOrigin === true),
    verifyToken,
    expiryGraceMs,
    limits: pick(allLimits, DEFAULT_LIMITS),
    serverLimits: pick(allLimits, DEFAULT_SERVER_LIMITS),
    store: validateStore(raw.store),
    closeReasons: validateCloseReasons(raw.closeReasons),
    rejectWith: (raw.rejectWith ?? 'close') as 'close' | 'http',
    shutdownTimeoutMs: (raw.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS) as number,
    heartbeatIntervalMs: (heartbeat ?? DEFAULT_HEARTBEAT_INTERVAL_MS) as number,
    refusalGraceMs: (raw.refusalGraceMs ?? DEFAULT_REFUSAL_GRACE_MS) as number,
    admissionTimeoutMs: (raw.admissionTimeoutMs ?? DEFAULT_ADMISSION_TIMEOUT_MS) as number,
    audit: raw.audit as AuditHook | undefined,
    prometheus: prometheus?.registry as PrometheusRegistry | undefined
  })
}
