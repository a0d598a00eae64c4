// The plugin's public types and the types its modules share. Every module imports its types
// from here rather than from the module that uses them, so no module needs another's
// internals and the import graph has no cycle (test/import-graph.test.ts). Types only, and
// nothing imported from lib/: this module is the leaf every other one may lean on.
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { Algorithm } from 'fast-jwt'
import type { TSchema } from '@sinclair/typebox'
import type { TypeCheck } from '@sinclair/typebox/compiler'
import type { WebSocket } from 'ws'

// ---------------------------------------------------------------------------------------------
// TypeBox schemas, by shape

// The public generics take TypeBox schemas by shape, not by TypeBox's own `TSchema`. TypeBox
// ships CommonJS and ESM declarations whose `[Kind]` is a `unique symbol` in each: an ESM app
// gets its schemas' types through `import`, this package's declarations (CommonJS) would see
// TypeBox's through `require`, and no schema would satisfy `TSchema`. Every TypeBox type
// carries the type it describes in `static`, as the same structure in both builds and in
// every 0.34 release, so a constraint on that works wherever the app's TypeBox came from.

/** A TypeBox schema, whichever build or copy of TypeBox made it. */
export interface SchemaLike {
  /** TypeBox's phantom field holding the type the schema describes. */
  static: unknown
  params: unknown[]
}

/** A TypeBox object schema (`Type.Object`). */
export interface ObjectSchemaLike extends SchemaLike {
  type: 'object'
  properties: object
}

/** The TypeScript type a TypeBox schema describes: TypeBox's `Static`, computed the same way. */
export type StaticOf<T extends SchemaLike> = (T & { params: [] })['static']

// ---------------------------------------------------------------------------------------------
// Route parameters, from the route's URL

// Route parameters as find-my-way (Fastify's router) reads them from a URL: `:name` runs to
// the next `/`, `-`, `.` or `(`; `(...)` after it is a regular expression; `::` is a literal
// colon; `:name?` at the end is optional; a trailing `*` is the wildcard.

/** Splits `S` into the parameter name at its start and what follows it. */
type TakeName<S extends string, Name extends string = ''> =
  S extends `${infer C}${infer Rest}`
    ? C extends '/' | '-' | '.' | '(' | '?' ? [Name, S] : TakeName<Rest, `${Name}${C}`>
    : [Name, '']

/** Drops a regular expression (`(...)`) at the start of `S`. */
type SkipPattern<S extends string> = S extends `(${string})${infer Rest}` ? Rest : S

/** `[required, optional]` parameter names in `Url`. */
type ParamNames<Url extends string, Required extends string = never, Optional extends string = never> =
  Url extends `${string}:${infer After}`
    ? After extends `:${infer Rest}`
      ? ParamNames<Rest, Required, Optional>
      : TakeName<After> extends [infer Name extends string, infer Rest extends string]
        ? Rest extends `?${infer Tail}`
          ? ParamNames<Tail, Required, Optional | Name>
          : ParamNames<SkipPattern<Rest>, Required | Name, Optional>
        : never
    : [Required | (Url extends `${string}*` ? '*' : never), Optional]

// `& {}` makes editors and errors show the object itself rather than this alias.
type Flatten<T> = { [K in keyof T]: T[K] } & {}

/**
 * The `params` of a route declared at `Url`: `'/rooms/:roomId'` gives `{ roomId: string }`.
 * A URL that is only known as `string` gives `Record<string, string>`. Parameters that come
 * from a `prefix` of the instance the route is declared on are there at run time but not in
 * this type.
 */
export type RouteParams<Url extends string> = string extends Url
  ? Record<string, string>
  : ParamNames<Url> extends [infer Required extends string, infer Optional extends string]
    ? Flatten<{ [K in Required]: string } & { [K in Optional]?: string }>
    : never

// ---------------------------------------------------------------------------------------------
// Users and tokens

/** Who is on a connection. Returned by `verifyToken`, bound to the connection for its life. */
export interface SecureWsUser {
  /** Stable user id: the key for connection slots and rate limits. */
  id: string
  /** Granted scopes, checked by a message handler's `scopes`. */
  scopes: readonly string[]
  /**
   * When the credential expires, in ms since the epoch: the connection closes with 4401 then
   * (with the `jwt` option, `exp` plus its clock tolerance).
   */
  expiresAt?: number
  /**
   * When the credential was issued, in ms since the epoch (`iat`). A revocation
   * (`revokeUser`) refuses credentials issued at or before it; one without `issuedAt`
   * counts as issued before every revocation.
   */
  issuedAt?: number
}

/**
 * Resolves a token to its user, or null/undefined to refuse it (4401). Throwing or rejecting
 * means the verifier could not decide (an identity provider that is down): the upgrade is
 * refused with 1013 `Try again later`, logged once per outage.
 */
export type VerifyToken = (token: string, request: FastifyRequest) =>
  SecureWsUser | null | undefined | Promise<SecureWsUser | null | undefined>

export interface JwtClaims {
  sub?: unknown
  exp?: unknown
  iat?: unknown
  nbf?: unknown
  scope?: unknown
  [claim: string]: unknown
}

export interface JwtOptions {
  /** HMAC secret, or the PEM public key for RS/PS/ES/EdDSA. */
  key: string | Buffer
  /** Accepted algorithms, pinned: a token signed with any other is refused. */
  algorithms: readonly Algorithm[]
  /** Required `iss` value(s). */
  issuer?: string | readonly string[]
  /** Required `aud` value(s). */
  audience?: string | readonly string[]
  /** Allowed clock skew for `exp`, `nbf` and `iat`, in ms, at most 5000. @default 0 */
  clockToleranceMs?: number
  /** Verified tokens kept to skip re-verification on reconnect; 0 turns the cache off. @default 10000 */
  cacheSize?: number
  /**
   * Maps verified claims to the user; return null to refuse. The default takes `sub` as the
   * id and the space-separated `scope` claim as scopes. `expiresAt` defaults to `exp`.
   */
  user?: (claims: JwtClaims) => SecureWsUser | null
}

/** Why a token was refused: in the refusal's log line and audit event, never in a close frame. */
export type TokenRefusal =
  | 'missing' | 'malformed' | 'badSignature' | 'algorithm' | 'expired' | 'notYetValid'
  | 'issuedInFuture' | 'claims' | 'rejected' | 'revoked' | 'otherUser' | 'invalid'

// ---------------------------------------------------------------------------------------------
// Limits

/** Per-user limits. Every field is a positive integer. */
export interface Limits {
  /** Concurrent connections one user may hold. @default 5 */
  connectionsPerUser: number
  /** Inbound messages per user in any one-second span, all connections together. @default 10 */
  messagesPerSecond: number
  /** Inbound messages per user in any sixty-second span, all connections together. @default 100 */
  messagesPerMinute: number
  /** Largest inbound frame in bytes; a larger one closes the connection with 1009. @default 65536 */
  maxPayloadBytes: number
  /**
   * Outbound bytes that may wait for one client (one that stopped reading); past it the
   * connection is closed with 1013 `Slow consumer` and its socket ended, and what was queued
   * for it is freed. @default 1048576
   */
  maxBufferedBytes: number
}

/** Limits on the whole server and on client addresses; set in the plugin's `limits`, not per route. */
export interface ServerLimits {
  /**
   * Upgrades from one client address refused with 4401 within a minute before that address
   * is locked out: further upgrades from it get HTTP 429 with `Retry-After`, whatever their
   * token, until the oldest of those failures is a minute old. The address is Fastify's
   * `request.ip`, so Fastify's `trustProxy` decides what it is. `0` turns the lockout off.
   * @default 30
   */
  authFailuresPerMinute: number
  /** Upgrades from one address still being checked (token, session, slot) at once; more get HTTP 429. @default 64 */
  pendingUpgradesPerIp: number
  /** Open connections this process accepts, all routes and users together; more are refused with 1013. `0`: no cap. @default 0 */
  maxConnections: number
}

/** Limits a rate counter enforces. */
export interface RateLimits {
  /** Most inbound messages in any one-second span. */
  messagesPerSecond: number
  /** Most inbound messages in any sixty-second span. */
  messagesPerMinute: number
}

// ---------------------------------------------------------------------------------------------
// Close codes

/**
 * Every way the plugin ends or refuses a connection. `DEFAULT_CLOSE_REASONS` (close-codes.ts)
 * gives each its close code, reason and HTTP status, and must list exactly these.
 */
export type CloseKind =
  | 'originNotAllowed' | 'invalidToken' | 'accessDenied' | 'tooManyConnections'
  | 'storeUnavailable' | 'authUnavailable' | 'admissionTimeout' | 'serverFull' | 'tooManyAuthFailures'
  | 'tooManyPendingUpgrades' | 'internalError' | 'rateLimited' | 'messageTooBig'
  | 'tokenExpired' | 'disconnected' | 'loggedOut' | 'slowConsumer' | 'heartbeatTimeout'
  | 'shuttingDown'

export interface CloseReason {
  /** WebSocket close code: 1000-1014 except 1004-1006, or 3000-4999. */
  code: number
  /** Close reason, at most 123 bytes of UTF-8. */
  reason: string
  /** HTTP status used instead of a close frame when `rejectWith` is `'http'`. */
  status: number
}

export type CloseReasons = Readonly<Record<CloseKind, Readonly<CloseReason>>>

// ---------------------------------------------------------------------------------------------
// Audit, metrics and stats

/** Why an inbound message was answered with an error frame; never its payload. */
export type InvalidMessageKind = 'invalidJson' | 'forbiddenKey' | 'binaryFrame' | 'invalidEnvelope' | 'unknownType' | 'invalidPayload'

/**
 * What the `audit` option receives, one event per thing that happened. Events name the user
 * (when known), the client address, the route and the connection; never a token, a payload
 * or a session's data.
 */
export type SecureWsAuditEvent =
  /** `route` is the route's URL pattern, or `*` for a locked-out address answered before routing. */
  | { type: 'refused', kind: CloseKind, userId?: string, ip: string, origin?: string, route: string, tokenRefusal?: TokenRefusal }
  | { type: 'connected', userId: string, connectionId: string, ip: string, origin?: string, route: string }
  | {
    type: 'closed'
    /** What the server closed it for, `app` when the app's code called `close()`, or `client` when the client (or the network) ended it. */
    kind: CloseKind | 'app' | 'client'
    code: number
    userId: string
    connectionId: string
    route: string
    durationMs: number
  }
  | { type: 'rateLimited', userId: string, connectionId: string, route: string }
  | { type: 'forbidden', userId: string, connectionId: string, route: string, messageType: string }
  | { type: 'invalidMessage', userId: string, connectionId: string, route: string, error: InvalidMessageKind, messageType?: string }
  | { type: 'refreshed', userId: string, connectionId: string, route: string }
  | { type: 'lockedOut', ip: string, lockedOutForS: number }

export type AuditHook = (event: SecureWsAuditEvent) => void

/** The part of a prom-client `Registry` the plugin uses (structural, so prom-client stays optional). */
export interface PrometheusRegistry {
  registerMetric (metric: never): void
  getSingleMetric (name: string): unknown
}

/** What `fastify.secureWs.stats()` reports; every count drops back once connections end. */
export interface SecureWsStats {
  /** Open connections in this process. */
  connections: number
  /** Open connections by user id. */
  users: Record<string, number>
  /** Topics with at least one subscriber in this process. */
  topics: number
  /** Connections whose credential expiry is being watched (by one shared timer). */
  timers: number
  /** Sockets the server closed or refused whose peer has not closed its side yet (each gone within `refusalGraceMs`). */
  closing: number
  /** Upgrades refused, by refusal (every kind listed from 0). */
  refusals: Record<string, number>
  /** Admitted connections the server closed, by why (every kind listed from 0); closes the client started are not counted. */
  closes: Record<string, number>
  /** Inbound frames on admitted connections, valid or not (not those refused for their size). */
  messages: number
  /** The store's own holdings. */
  store: StoreStats
}

// ---------------------------------------------------------------------------------------------
// Stores

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

// ---------------------------------------------------------------------------------------------
// Plugin options

export interface SecureWsOptions {
  /**
   * Allowed `Origin` values, each exactly `scheme://host[:port]`. Required: there is no
   * allow-all default. A missing or other origin is refused with 1008 `Origin not allowed`.
   */
  origins: readonly string[]
  /** Admit clients that send no `Origin` (non-browser clients). @default false */
  allowMissingOrigin?: boolean
  /** Resolves a token to a user. Give this or `jwt`, not both. */
  verifyToken?: VerifyToken
  /** Verifies JWTs with fast-jwt; `sub` becomes the user id, `scope` the scopes. */
  jwt?: JwtOptions
  /** Default limits for every route (a route may override these), and the server-wide ones. */
  limits?: Partial<Limits & ServerLimits>
  /** Where slots and message counts live. @default memoryStore() */
  store?: SecureWsStore
  /** Overrides for close codes, reasons and HTTP statuses, by refusal. */
  closeReasons?: Partial<Record<CloseKind, Partial<CloseReason>>>
  /**
   * `'close'` completes the upgrade and sends a close frame a browser can read;
   * `'http'` refuses the upgrade with the HTTP status instead (403/401/403/429).
   * @default 'close'
   */
  rejectWith?: 'close' | 'http'
  /** How long `fastify.close()` waits for clients to answer the 1001 close before cutting them off. @default 3000 */
  shutdownTimeoutMs?: number
  /**
   * How often every connection is pinged, in ms. A connection that has not answered the
   * previous ping when the next one is due is closed with 4408 and cut off, which frees its
   * slot: a client that vanished without closing (a dropped network, a sleeping laptop)
   * would otherwise hold one of its user's `connectionsPerUser` until TCP gives up, often
   * hours later. `0` turns the heartbeat off. @default 30000
   */
  heartbeatIntervalMs?: number
  /**
   * How long a socket the server refused or closed may take to answer the close frame, in ms.
   * The server stops reading it at once (nothing a refused client sends is processed) and
   * ends it after this grace whether or not the client answered: ws alone would hold it for
   * 30 s. @default 1000
   */
  refusalGraceMs?: number
  /**
   * How long an upgrade's checks (`verifyToken`, `resolveSession`, the store) may take, in ms.
   * One that has not decided by then is refused with 1013 `Try again later`, so a verifier or
   * store that never answers cannot hold the client's address at its pending cap, or the
   * socket, forever. @default 10000
   */
  admissionTimeoutMs?: number
  /**
   * Receives one event per refusal, connection, close, rate limit, forbidden or invalid
   * message, refresh and lockout, for a SIEM or an audit log. Events never carry a token or a
   * payload. Called synchronously; a hook that throws is logged and ignored.
   */
  audit?: AuditHook
  /**
   * Exposes the plugin's counters through prom-client (an optional peer dependency): give the
   * prom-client `Registry` to register `secure_ws_connections`, `secure_ws_refusals_total`,
   * `secure_ws_closes_total` and `secure_ws_messages_total` on (`register` for the default one).
   */
  prometheus?: { registry: PrometheusRegistry }
}

/** The options every other module reads: complete, validated, frozen. */
export interface ResolvedOptions {
  readonly isOriginAllowed: (header: string | undefined) => boolean
  readonly verifyToken: VerifyToken
  /** How long past `expiresAt` a credential is still honoured: the JWT clock tolerance, else 0. */
  readonly expiryGraceMs: number
  readonly limits: Readonly<Limits>
  readonly serverLimits: Readonly<ServerLimits>
  readonly store: SecureWsStore
  readonly closeReasons: CloseReasons
  readonly rejectWith: 'close' | 'http'
  readonly shutdownTimeoutMs: number
  /** 0 when the heartbeat is off. */
  readonly heartbeatIntervalMs: number
  readonly refusalGraceMs: number
  readonly admissionTimeoutMs: number
  readonly audit: AuditHook | undefined
  readonly prometheus: PrometheusRegistry | undefined
}

// ---------------------------------------------------------------------------------------------
// Routes, connections and messages

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

// ---------------------------------------------------------------------------------------------
// `fastify.secureWs`

/** What `fastify.secureWs` offers, on the instance (and prefix) it is read from. */
export interface SecureWsApi {
  /**
   * Declares a secured WebSocket route on this instance, under its prefix and hooks. The
   * session type comes from `resolveSession`, `params` from `url`, each payload from its
   * schema and what `send` takes from `outbound`.
   */
  route<S extends SessionBase, O extends OutboundSchemas = Record<never, never>, Url extends string = string>(options: SecureWsRouteOptions<S, O, Url>): void
  /**
   * Sends an outbound message to every subscriber of `topic`, on every instance sharing the
   * store (only this one with `{ local: true }`: a feed every instance produces itself);
   * resolves with how many got it here. Rejects with `StoreUnavailableError` when the other
   * instances could not be told (local subscribers have it already). The body is serialised
   * once per route; a subscriber that has stopped reading is cut off, never queued for
   * past `maxBufferedBytes`.
   *
   * Given the outbound schemas' type, `type` and `body` are checked against them:
   * `publish<typeof outbound>('room:r1', 'said', { text })`.
   */
  publish (topic: string, type: string, body: unknown, options?: PublishOptions): Promise<number>
  publish<O extends OutboundSchemas> (topic: string, ...message: [...OutboundMessage<O>, options?: PublishOptions]): Promise<number>
  /**
   * Closes every connection of `userId` on every instance sharing the store, by default with
   * 4403 `Disconnected by the server`; resolves with how many closed here. Rejects with
   * `StoreUnavailableError` when the other instances could not be told.
   */
  disconnectUser (userId: string, code?: number, reason?: string): Promise<number>
  /**
   * Logs `userId` out everywhere: closes their connections on every instance sharing the
   * store with 4403 `Logged out`, and refuses (4401, at connect and at refresh) every
   * credential of theirs issued at or before `issuedBefore` (default: now), or without an
   * issue time, for `ttlMs` (default 24 h: make it at least your longest token lifetime).
   * Resolves with how many connections closed here. Rejects with `StoreUnavailableError`
   * when the store could not record the revocation (connections here are closed anyway).
   */
  revokeUser (userId: string, options?: RevokeOptions): Promise<number>
  /** Open connections, slots and timers, for monitoring and leak tests. */
  stats (): SecureWsStats
}

export interface PublishOptions {
  /** Only this instance's subscribers. @default false */
  local?: boolean
}

export interface RevokeOptions {
  /** Credentials issued at or before this time (ms since the epoch) are revoked. @default Date.now() */
  issuedBefore?: number
  /** How long the revocation holds, in ms. @default 86400000 (24 h) */
  ttlMs?: number
}

// ---------------------------------------------------------------------------------------------
// Shared between the plugin's modules (not exported by the package)

/** One inbound message type, compiled at route declaration (inbound.ts). */
export interface CompiledMessage {
  readonly check: TypeCheck<TSchema> | null
  readonly scopes: readonly string[]
  readonly authorize: MessageOptions<any, SessionBase, OutboundSchemas>['authorize'] | undefined
  readonly handler: MessageHandler<any, SessionBase, OutboundSchemas>
}

/** Serialises one outbound type to its full frame: `{"type":"<name>",...declared fields}` (outbound.ts). */
export type OutboundSerializer = (body: unknown) => string

/** Everything the connection path reads about a route, resolved once at declaration (route.ts). */
export interface CompiledRoute {
  readonly url: string
  readonly limits: Readonly<Limits>
  /** Prefix of this route's slot and rate keys: empty when it shares the plugin's limits. */
  readonly limitScope: string
  readonly store: SecureWsStore
  readonly closeReasons: CloseReasons
  readonly isOriginAllowed: (header: string | undefined) => boolean
  readonly verifyToken: VerifyToken
  readonly expiryGraceMs: number
  readonly resolveSession: (context: ResolveSessionContext) => SessionBase | null | undefined | Promise<SessionBase | null | undefined>
  readonly messages: ReadonlyMap<string, CompiledMessage>
  readonly serializers: ReadonlyMap<string, OutboundSerializer>
  readonly onConnect: ((connection: SecureWsConnection) => unknown) | undefined
  readonly onClose: ((connection: SecureWsConnection) => unknown) | undefined
}

/** The counters and the audit hook a connection reports to (telemetry.ts's `Telemetry`). */
export interface TelemetrySink {
  /** Whether anyone listens for events: callers skip building them otherwise. */
  readonly auditing: boolean
  /** Inbound frames on admitted connections, valid or not (not those refused for their size). */
  messages: number
  closedByServer (kind: CloseKind): void
  /** Hands `event` to the audit hook; a hook that throws is logged, never let through. */
  emit (event: SecureWsAuditEvent): void
}

/** What the registry needs from a connection it holds (connection.ts's `Connection`). */
export interface RegisteredConnection {
  readonly id: string
  readonly user: SecureWsUser
  readonly route: CompiledRoute
  /** The key the connection's message counter and slot are held under. */
  readonly limitKey: string
  /** Topics subscribed to, kept by the registry; undefined until the first subscription. */
  topics: Set<string> | undefined
  /** Closes for `kind` with its configured code and reason, or the ones given. */
  closeFor (kind: CloseKind, code?: number, reason?: string): void
  /** Over a message limit: the error frame, then the close. */
  rateLimited (): void
  /** One beat of the heartbeat: pings, or cuts off a peer that did not answer the last ping. */
  heartbeat (nonce: Buffer): void
  /** Sends an already serialised frame; false when the socket is no longer open. */
  sendRaw (json: string): boolean
}

/** What a connection needs from the registry that holds it (registry.ts's `Registry`). */
export interface ConnectionRegistry {
  readonly telemetry: TelemetrySink
  /** The payload of this beat's pings: only a pong that echoes it answers the beat. */
  readonly beatNonce: Buffer
  add (connection: RegisteredConnection): void
  remove (connection: RegisteredConnection): void
  /** A connection's credential was replaced: its expiry, if any, is the new one's. */
  refreshed (connection: RegisteredConnection): void
  subscribe (connection: RegisteredConnection, topic: string): void
  unsubscribe (connection: RegisteredConnection, topic: string): void
  /** Closes a socket the server is done with. */
  hangUp (socket: WebSocket, code: number, reason: string): void
}
