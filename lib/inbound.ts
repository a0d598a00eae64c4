import type { TSchema } from '@sinclair/typebox'
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler'
import secureJson from 'secure-json-parse'
import { InvalidRouteError } from './errors.js'
import type { CompiledMessage, DefineMessage, MessageDefinition, OutboundSchemas, SessionBase } from './types.js'

/** The texts of `{"type":"error","message":...}` frames: fixed strings, never an exception's own text. */
export const ERROR_MESSAGES = {
  invalidJson: 'Invalid JSON',
  forbiddenKey: 'Invalid message: forbidden property name',
  binaryFrame: 'Binary frames are not supported',
  invalidEnvelope: 'A message must be a JSON object with a string "type"',
  unknownType: 'Unknown message type',
  invalidPayload: 'Invalid payload',
  noPayload: 'Invalid payload: this message takes no payload',
  forbidden: 'Forbidden',
  rateLimited: 'Rate limit exceeded. Connection closed.',
  internal: 'Internal server error'
} as const

export const defineMessage: DefineMessage<any, any, any> = (first: unknown, second?: unknown) =>
  (typeof first === 'function' ? { handler: first } : { ...(first as object), handler: second }) as MessageDefinition<any, any, any>

/** Compiles each inbound message's schema once, at route declaration. */
export function compileMessages (url: string, declared: unknown): Map<string, CompiledMessage> {
  const messages = typeof declared === 'function' ? declared(defineMessage) : declared
  if (typeof messages !== 'object' || messages === null) throw new InvalidRouteError(`${url}: messages must be an object of message definitions`)
  const compiled = new Map<string, CompiledMessage>()
  for (const [type, raw] of Object.entries(messages)) {
    const def = raw as Partial<MessageDefinition<TSchema, SessionBase, OutboundSchemas>>
    if (typeof def !== 'object' || def === null || typeof def.handler !== 'function') throw new InvalidRouteError(`${url}: messages.${type}.handler must be a function`)
    if (def.scopes !== undefined && !(Array.isArray(def.scopes) && def.scopes.every((s) => typeof s === 'string'))) throw new InvalidRouteError(`${url}: messages.${type}.scopes must be an array of strings`)
    if (def.authorize !== undefined && typeof def.authorize !== 'function') throw new InvalidRouteError(`${url}: messages.${type}.authorize must be a function`)
    let check: TypeCheck<TSchema> | null = null
    if (def.payload !== undefined) {
      try {
        check = TypeCompiler.Compile(def.payload)
      } catch {
        throw new InvalidRouteError(`${url}: messages.${type}.payload must be a TypeBox schema`)
      }
    }
    compiled.set(type, { check, scopes: def.scopes ?? [], authorize: def.authorize, handler: def.handler })
  }
  return compiled
}

export interface Envelope {
  type: string
  payload: unknown
}

const REFUSE_POISON = { protoAction: 'error', constructorAction: 'error' } as const

/**
 * Parses a text frame into `{type, payload}`, or returns why it is not one (the key of the
 * error message to answer with, and the audit event's kind).
 *
 * The result is what `secureJson.parse` would give, without its cost on every message (it
 * saves and restores `Error.stackTraceLimit`, a slow store, and runs two regular expressions
 * over the text). A key can be `__proto__` or `constructor` only where the text
 * spells it out or uses a `\` escape, so a text with none of the three is plain JSON; any
 * other goes through the library's own scan of the parsed value.
 */
export function parseEnvelope (data: Buffer): Envelope | 'invalidJson' | 'invalidEnvelope' | 'forbiddenKey' {
  let text = data.toString()
  // secure-json-parse accepts a leading byte order mark; so does this.
  if (text.charCodeAt(0) === 0xFEFF) text = text.slice(1)
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return 'invalidJson'
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'invalidEnvelope'
  if (text.includes('\\') || text.includes('__proto__') || text.includes('constructor')) {
    try {
      secureJson.scan(value, REFUSE_POISON)
    } catch {
      return 'forbiddenKey'
    }
  }
  const { type, payload } = value as Record<string, unknown>
  if (typeof type !== 'string') return 'invalidEnvelope'
  return { type, payload }
}

/** The first schema violation as `Invalid payload: <path> <message>`; names no value. */
export function describeInvalidPayload (check: TypeCheck<TSchema>, payload: unknown): string {
  const first = check.Errors(payload).First()
  if (first === undefined) return ERROR_MESSAGES.invalidPayload
  return `${ERROR_MESSAGES.invalidPayload}: ${first.path === '' ? '/' : first.path} ${first.message}`
}
