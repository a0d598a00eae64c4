import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { TObject, TSchema } from '@sinclair/typebox'
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler'
import fastJson from 'fast-json-stringify'
import secureJson from 'secure-json-parse'
import { InvalidRouteError } from './errors.js'
import type { Limits, SecureWsUser } from './options.js'
import type { RouteParams } from './route-params.js'
import type { ObjectSchemaLike, SchemaLike, StaticOf } from './schema-shape.js'

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

/** Outbound message bodies by type (TypeBox object schemas): the fields that go beside `type`, and no others. */
export type OutboundSchemas = Record<string, ObjectSchemaLike>

/**
 * The `(type, body)` pairs that outbound schemas `O` allow, for `publish<O>(topic, type, body)`:
 * `OutboundMessage<{ said: TObject<{ text: TString }> }>` is `['said', { text: string }]`.
 */
export type OutboundMessage<O extends OutboundSchemas> = { [K in keyof O & string]: [type: K, body: StaticOf<O[K]>] }[keyof O & string]

/** A route's URL parameters by name; the default when the route's URL is not known. */
export type ParamsBase = Readonly<Record<string, string | undefined>>

/** A session the route resolved; `ownerId` must be the connected user's id. */
export interface SessionBase {
  ownerId: string
}

/** What every message handler gets: the connection, its user and session, and ways to answer. */
export interface SecureWsConnection<S extends SessionBase = SessionBase, O extends OutboundSchemas = OutboundSchemas, Params extends ParamsBase = Record<string, string>> {
  /** Unique within this process; appears in every log line about the connection. */
  readonly id: string
  readonly user: SecureWsUser
  readonly session: S
  /** The route's URL parameters, typed from the route's `url` (`'/rooms/:roomId'`: `{ roomId: string }`). */
  readonly params: Readonly<Params>
  /** Request logger bound to this connection's user and id. */
  readonly log: FastifyBaseLogger
  /** Sends a declared outbound message; fields its schema does not declare are dropped. False once closed. */
  send<K extends keyof O & string>(type: K, body: StaticOf<O[K]>): boolean
  /** Sends `{"type":"error","message":...}`. */
  sendError (message: string): boolean
  /** Receives what `fastify.secureWs.publish(topic, ...)` sends, until unsubscribed or closed. */
  subscribe (topic: string): void
  unsubscribe (topic: string): void
  isSubscribed (topic: string): boolean
  /** Closes the connection; code and reason default to 1000 and an empty reason. */
  close (code?: number, reason?: string): void
  /**
   * Replaces the connection's credential with `token` without reconnecting. The token goes
   * through every check of a connect-time token (`verifyToken` or `jwt`), must name the same
   * user and must not be revoked; then `user` (expiry, scopes) is the new token's, and the
   * promise resolves with it. A token that fails closes the connection with 4401 (a verifier
   * that throws: 1013) and resolves null. Never rejects.
   */
  refresh (token: string): Promise<SecureWsUser | null>
}

/** The payload type a schema describes; `undefined` for a message declared without one. */
export type PayloadOf<P> = P extends SchemaLike ? StaticOf<P> : undefined

export type MessageHandler<P, S extends SessionBase, O extends OutboundSchemas, Params extends ParamsBase = Record<string, string>> =
  (connection: SecureWsConnection<S, O, Params>, payload: PayloadOf<P>) => unknown

/** Who may send a message type and what its payload must look like. */
export interface MessageOptions<P, S extends SessionBase, O extends OutboundSchemas, Params extends ParamsBase = Record<string, string>> {
  /** TypeBox schema of `payload`; without one the message takes no payload. */
  payload?: P
  /** Every scope listed must be among the user's scopes, else `Forbidden`. */
  scopes?: readonly string[]
  /** Further per-message check: false answers `Forbidden`; throwing or rejecting (it could not decide) answers `Internal server error`. */
  authorize?: (connection: SecureWsConnection<S, O, Params>, payload: PayloadOf<P>) => boolean | Promise<boolean>
}

/** One inbound message type: its payload schema, who may send it, and what it does. */
export interface MessageDefinition<P, S extends SessionBase, O extends OutboundSchemas, Params extends ParamsBase = Record<string, string>> extends MessageOptions<P, S, O, Params> {
  /** Runs for each valid, authorised message. Throwing or rejecting answers `Internal server error`. */
  handler: MessageHandler<P, S, O, Params>
}

/**
 * Declares one message type with its handler's payload type inferred from the schema:
 * `message(handler)` for a message without payload, `message({ payload, scopes }, handler)`.
 */
export interface DefineMessage<S extends SessionBase, O extends OutboundSchemas, Params extends ParamsBase = Record<string, string>> {
  (handler: MessageHandler<undefined, S, O, Params>): MessageDefinition<undefined, S, O, Params>
  // Without a schema there is nothing to infer the payload's type from but the `any` of the
  // message map around the call; this overload says it is `undefined`.
  (options: MessageOptions<undefined, S, O, Params> & { payload?: undefined }, handler: MessageHandler<undefined, S, O, Params>): MessageDefinition<undefined, S, O, Params>
  <P extends SchemaLike | undefined = undefined>(options: MessageOptions<P, S, O, Params>, handler: MessageHandler<P, S, O, Params>): MessageDefinition<P, S, O, Params>
}

export type MessageMap<S extends SessionBase, O extends OutboundSchemas, Params extends ParamsBase = Record<string, string>> = Record<string, MessageDefinition<any, S, O, Params>>

export const defineMessage: DefineMessage<any, any, any> = (first: unknown, second?: unknown) =>
  (typeof first === 'function' ? { handler: first } : { ...(first as object), handler: second }) as MessageDefinition<any, any, any>

export interface ResolveSessionContext<Params extends ParamsBase = Record<string, string>> {
  request: FastifyRequest
  user: SecureWsUser
  params: Readonly<Params>
}

export interface SecureWsRouteOptions<S extends SessionBase, O extends OutboundSchemas, Url extends string = string> {
  /**
   * Route URL, with parameters as in any Fastify route; they type `params`
   * (`'/ws/rooms/:roomId'`: `{ roomId: string }`).
   */
  url: Url
  /** Finds the session the client asks for; nothing, or another owner, refuses with 1008 `Access denied`. */
  resolveSession: (context: ResolveSessionContext<RouteParams<Url>>) => S | null | undefined | Promise<S | null | undefined>
  /**
   * Inbound message types by `type`. The function form hands you `message()`, which infers
   * each handler's payload type from its schema.
   */
  messages: MessageMap<S, O, RouteParams<Url>> | ((message: DefineMessage<S, O, RouteParams<Url>>) => MessageMap<S, O, RouteParams<Url>>)
  /** Outbound message types: the fields beside `type`, and no others. `error` is built in. */
  outbound?: O
  /** Limits for this route; when connection or message limits differ, the route counts them on its own. */
  limits?: Partial<Limits>
  /**
   * Called once an admitted connection is ready, before its first message. Throwing or
   * rejecting closes the connection with 1011 `Internal server error` and is logged.
   */
  onConnect?: (connection: SecureWsConnection<S, O, RouteParams<Url>>) => void | Promise<void>
  /** Called once when the connection ends, whatever ended it. Throwing or rejecting is logged. */
  onClose?: (connection: SecureWsConnection<S, O, RouteParams<Url>>) => void | Promise<void>
}

export interface CompiledMessage {
  readonly check: TypeCheck<TSchema> | null
  readonly scopes: readonly string[]
  readonly authorize: MessageOptions<any, SessionBase, OutboundSchemas>['authorize'] | undefined
  readonly handler: MessageHandler<any, SessionBase, OutboundSchemas>
}

/** Serialises one outbound type to its full frame: `{"type":"<name>",...declared fields}`. */
export type OutboundSerializer = (body: unknown) => string

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
