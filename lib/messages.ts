import type { TObject, TSchema } from '@sinclair/typebox'
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler'
import fastJson from 'fast-json-stringify'
import secureJson from 'secure-json-parse'
import { InvalidRouteError } from './errors.js'
import type { CompiledMessage, DefineMessage, MessageDefinition, ObjectSchemaLike, OutboundSchemas, OutboundSerializer, SessionBase } from './types.js'

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

function hasOpenObject (schema: unknown): boolean {
  if (typeof schema !== 'object' || schema === null) return false
  const s = schema as Record<string, unknown>
  if (s.additionalProperties !== undefined && s.additionalProperties !== false) return true
  if (s.patternProperties !== undefined) return true
  return Object.values(s).some((child) => typeof child === 'object' && hasOpenObject(child))
}

// A schema with none of these (Type.Any, Type.Unknown) makes fast-json-stringify write the
// value whole, so an object given there would carry every field, secrets included.
const CONSTRAINING_KEYWORDS = ['type', 'const', 'enum', 'anyOf', 'oneOf', 'allOf', '$ref']

/** True when some value the schema writes (a field, an array item, a union member) is unconstrained. */
function hasUnconstrainedValue (schema: unknown, writesValue = true): boolean {
  if (schema === true) return true
  if (typeof schema !== 'object' || schema === null) return false
  const s = schema as Record<string, unknown>
  // allOf members are merged into one schema, so a member alone need not say what it writes.
  if (writesValue && !CONSTRAINING_KEYWORDS.some((keyword) => s[keyword] !== undefined)) return true
  const isArray = s.type === 'array' || (Array.isArray(s.type) && s.type.includes('array'))
  if (writesValue && isArray && s.items === undefined && s.prefixItems === undefined) return true
  const written: unknown[] = []
  if (typeof s.properties === 'object' && s.properties !== null) written.push(...Object.values(s.properties))
  for (const keyword of ['items', 'prefixItems', 'anyOf', 'oneOf']) {
    const child = s[keyword]
    if (Array.isArray(child)) written.push(...child)
    else if (child !== undefined) written.push(child)
  }
  const merged = Array.isArray(s.allOf) ? s.allOf : []
  return written.some((child) => hasUnconstrainedValue(child)) || merged.some((child) => hasUnconstrainedValue(child, false))
}

function compileSerializer (type: string, schema: ObjectSchemaLike): OutboundSerializer {
  // The type is known here, so write it once as a prefix rather than copy every body to add it.
  const prefix = '{"type":' + JSON.stringify(type)
  // `prefix + '}'` as one flat string rather than a concatenation: Node measures and writes a
  // flat one-byte string on its fast path, at every send (twice as fast in a microbenchmark
  // of Buffer.byteLength).
  const bare = JSON.stringify({ type })
  if (Object.keys(schema.properties ?? {}).length === 0) return () => bare
  // The shape was checked by compileOutbound; fast-json-stringify reads it as JSON Schema.
  const body = fastJson(schema as unknown as TObject)
  return (value) => {
    const json = body(value)
    return json.length === 2 ? bare : prefix + ',' + json.slice(1)
  }
}

const ERROR_SCHEMA = { type: 'object', properties: { message: { type: 'string' } }, required: ['message'] } as unknown as ObjectSchemaLike

/** Compiles the outbound serialisers once, at route declaration. */
export function compileOutbound (url: string, outbound: OutboundSchemas | undefined): Map<string, OutboundSerializer> {
  const serializers = new Map<string, OutboundSerializer>([['error', compileSerializer('error', ERROR_SCHEMA)]])
  if (outbound === undefined) return serializers
  if (typeof outbound !== 'object' || outbound === null) throw new InvalidRouteError(`${url}: outbound must be an object of TypeBox object schemas`)
  for (const [type, schema] of Object.entries(outbound)) {
    if (type === 'error') throw new InvalidRouteError(`${url}: outbound.error is built in and cannot be redeclared`)
    if (typeof schema !== 'object' || schema === null || schema.type !== 'object') throw new InvalidRouteError(`${url}: outbound.${type} must be a TypeBox object schema`)
    // Only declared fields may leave; an open object would pass a session's secrets through.
    if (hasOpenObject(schema)) throw new InvalidRouteError(`${url}: outbound.${type} must declare every field (no additionalProperties or patternProperties)`)
    if (hasUnconstrainedValue(schema)) throw new InvalidRouteError(`${url}: outbound.${type} must give every field a type (no Type.Any or Type.Unknown)`)
    serializers.set(type, compileSerializer(type, schema))
  }
  return serializers
}

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
 * Parses a text frame into `{type, payload}`, or returns the error message to answer with.
 *
 * The result is what `secureJson.parse` would give, without its cost on every message (about
 * 1 µs here: it saves and restores `Error.stackTraceLimit`, a slow store, and runs two regular
 * expressions over the text). A key can be `__proto__` or `constructor` only where the text
 * spells it out or uses a `\` escape, so a text with none of the three is plain JSON; any
 * other goes through the library's own scan of the parsed value.
 */
export function parseEnvelope (data: Buffer): Envelope | string {
  let text = data.toString()
  // secure-json-parse accepts a leading byte order mark; so does this.
  if (text.charCodeAt(0) === 0xFEFF) text = text.slice(1)
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return ERROR_MESSAGES.invalidJson
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return ERROR_MESSAGES.invalidEnvelope
  if (text.includes('\\') || text.includes('__proto__') || text.includes('constructor')) {
    try {
      secureJson.scan(value, REFUSE_POISON)
    } catch {
      return ERROR_MESSAGES.forbiddenKey
    }
  }
  const { type, payload } = value as Record<string, unknown>
  if (typeof type !== 'string') return ERROR_MESSAGES.invalidEnvelope
  return { type, payload }
}

/** The first schema violation as `Invalid payload: <path> <message>`; names no value. */
export function describeInvalidPayload (check: TypeCheck<TSchema>, payload: unknown): string {
  const first = check.Errors(payload).First()
  if (first === undefined) return ERROR_MESSAGES.invalidPayload
  return `${ERROR_MESSAGES.invalidPayload}: ${first.path === '' ? '/' : first.path} ${first.message}`
}
