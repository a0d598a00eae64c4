/// <reference types="@fastify/websocket" preserve="true" />
import type { IncomingMessage } from 'node:http'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { WebSocket } from 'ws'
import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'
import { MAX_CLOSE_REASON_BYTES, isSendableCloseCode, isSendableCloseReason } from './close-codes.js'
import { InvalidOptionError, RegistrationOrderError } from './errors.js'
import { validateOptions } from './options.js'
import { Registry } from './registry.js'
import { connectionOf } from './connection.js'
import { registerPrometheusMetrics } from './prometheus.js'
import { Telemetry } from './telemetry.js'
import { declareRoute, kSecuredUpgrade } from './route.js'
import { BEARER_PROTOCOL, takeQueryToken } from './token.js'
import { UpgradeGuard } from './upgrade-guard.js'
import { answerUpgrade } from './early-answer.js'
import type { Limits, PublishOptions, RevokeOptions, SecureWsApi, SecureWsOptions } from './types.js'

// ws's own default when the app registered @fastify/websocket without a maxPayload.
const WS_DEFAULT_MAX_PAYLOAD = 100 * 1024 * 1024

const DEFAULT_REVOCATION_TTL_MS = 24 * 60 * 60 * 1000

declare module 'fastify' {
  interface FastifyInstance {
    secureWs: SecureWsApi
  }
}

function validateCloseFrame (code: number, reason: string | undefined): void {
  if (!isSendableCloseCode(code)) throw new InvalidOptionError(`disconnectUser: code ${code} is not a close code a server may send`)
  if (reason !== undefined && !isSendableCloseReason(reason)) throw new InvalidOptionError(`disconnectUser: reason must be at most ${MAX_CLOSE_REASON_BYTES} bytes`)
}

function validateRevocation (userId: unknown, options: unknown): void {
  if (typeof userId !== 'string' || userId === '') throw new InvalidOptionError('revokeUser: userId must be a non-empty string')
  if (typeof options !== 'object' || options === null) throw new InvalidOptionError('revokeUser: options must be an object')
  const { issuedBefore, ttlMs } = options as RevokeOptions
  if (issuedBefore !== undefined && !Number.isFinite(issuedBefore)) throw new InvalidOptionError('revokeUser: issuedBefore must be a time in ms since the epoch')
  if (ttlMs !== undefined && !(Number.isSafeInteger(ttlMs) && ttlMs > 0)) throw new InvalidOptionError('revokeUser: ttlMs must be a positive integer')
}

const secureWs: FastifyPluginAsync<SecureWsOptions> = async function secureWs (fastify, rawOptions) {
  const options = validateOptions(rawOptions)
  const telemetry = new Telemetry(options.audit, fastify.log)
  const registry = new Registry(options.store, options.heartbeatIntervalMs, options.refusalGraceMs, telemetry)
  const store = options.store
  const guard = new UpgradeGuard(options.serverLimits, store, () => registry.size, telemetry)
  if (options.prometheus !== undefined) registerPrometheusMetrics(options.prometheus, () => registry.stats())
  store.init?.({
    log: fastify.log,
    deliver (event) {
      if (event.kind === 'publish') registry.publish(event.topic, event.type, event.body)
      else if (event.kind === 'revoke') registry.revokeUser(event.userId, event.issuedBefore)
      else registry.disconnectUser(event.userId, 'disconnected', event.code, event.reason)
    },
    rateExceeded: (key) => { registry.rateExceeded(key) },
    slotsLost: (slots) => { registry.slotsLost(slots) }
  })
  let largestPayload = options.limits.maxPayloadBytes

  // Added before @fastify/websocket's own preClose, so clients get 1001 rather than 1005.
  fastify.addHook('preClose', async () => {
    const deadline = Date.now() + options.shutdownTimeoutMs
    await registry.closeAll('shuttingDown', options.shutdownTimeoutMs)
    // Fastify closes the HTTP server next and waits for every connection on it: one that sent
    // half its headers, or nothing, would hold close() until Node's headersTimeout (a minute).
    // Whatever is left when the shutdown time is up is cut off.
    const server = fastify.server
    // HTTP/2 servers have no closeAllConnections.
    const cutOff = setTimeout(() => { server.closeAllConnections?.() }, Math.max(0, deadline - Date.now()))
    cutOff.unref()
    server.once('close', () => { clearTimeout(cutOff) })
  })
  fastify.addHook('onClose', async () => {
    await store.close()
  })

  if (!fastify.hasDecorator('websocketServer')) {
    await fastify.register(websocket, {
      options: { maxPayload: largestPayload },
      // ws reports protocol errors (a frame over maxPayload, bad UTF-8) after it has sent its
      // own close; one warn line with the error code is enough, and the socket is done.
      errorHandler (error, socket, request) {
        const code = (error as NodeJS.ErrnoException).code
        request.log.warn({ code, reason: error.message }, 'websocket protocol error; connection closed')
        if (code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') connectionOf(socket)?.markClosedBy('messageTooBig', 1009)
        socket.terminate()
      }
    })
    refuseLaterWebsocketRegistration(fastify)
  }
  // An app's own registration may leave ws's maxPayload above the routes' limits: each secured
  // socket gets its route's limit in ws itself (limitInboundMessages), so nothing is buffered
  // or inflated past it.
  const wss = fastify.websocketServer

  // @fastify/websocket hands every upgrade it receives, on whichever server it listens
  // (Fastify's, or the app's own `options.server`), to `fastify.routing`. Fastify logs the
  // request's URL there before any hook runs, so `?token=` is cut out first. Two answers
  // are given here, before Fastify builds anything for the request: once the plugin is
  // closing (Fastify's own 503 for a closing server would never end an upgrade's socket),
  // and to a locked-out address, whose flood must cost as little as possible. The lockout is
  // keyed on `request.ip`, and without X-Forwarded-For that is the TCP peer whatever
  // `trustProxy` says; with it, only the route's own check (on `request.ip`) may answer, or a
  // client could lock out a proxy's address, and everyone behind the proxy with it.
  const routeRequest = fastify.routing
  const lockedOut = options.closeReasons.tooManyAuthFailures
  const lockedOutBody = JSON.stringify({ statusCode: lockedOut.status, code: 'tooManyAuthFailures', message: lockedOut.reason })
  fastify.routing = function routeUpgrade (this: unknown, request, reply) {
    takeQueryToken(request)
    const socket = request.socket
    // `injectWS` upgrades a request with no socket: no peer to lock out or answer early.
    if (socket === undefined) return routeRequest.call(this, request, reply)
    if (registry.closing) return answerUpgrade(socket, 503, {}, '')
    const address = socket.remoteAddress ?? ''
    const retryAfter = request.headers['x-forwarded-for'] === undefined ? guard.lockedOutFor(address) : 0
    if (retryAfter > 0) {
      telemetry.refused('tooManyAuthFailures', () => ({ type: 'refused', kind: 'tooManyAuthFailures', ip: address, origin: request.headers.origin, route: '*' }))
      return answerUpgrade(socket, lockedOut.status, { 'Retry-After': String(retryAfter), 'Content-Type': 'application/json; charset=utf-8' }, lockedOutBody)
    }
    return routeRequest.call(this, request, reply)
  }

  // The client offers `bearer, <token>`; answering `bearer` completes the handshake even
  // when the token then fails (so the client can read 4401), and never echoes the token.
  // The app's own routes keep its chooser, or ws's default (the first offered); ws stores
  // "no chooser" as null. The chooser is an accessor: code that assigns its own later
  // (graphql-ws's @fastify/websocket adapter does, on every connection) replaces the app's
  // chooser behind ours, never ours.
  let chooseProtocol = wss.options.handleProtocols
  const handleProtocols = (protocols: Set<string>, request: IncomingMessage): string | false => {
    if ((request as unknown as Record<symbol, unknown>)[kSecuredUpgrade] === true) {
      return protocols.has(BEARER_PROTOCOL) ? BEARER_PROTOCOL : false
    }
    if (typeof chooseProtocol === 'function') return chooseProtocol(protocols, request)
    return protocols.values().next().value ?? false
  }
  Object.defineProperty(wss.options, 'handleProtocols', {
    configurable: true,
    enumerable: true,
    get: () => handleProtocols,
    set: (chooser: typeof chooseProtocol) => { chooseProtocol = chooser }
  })

  const context = {
    options,
    registry,
    guard,
    // The plugin closes its own sockets (1001 at shutdown, hang-ups). Out of ws's client set,
    // an app's own @fastify/websocket registration, whose preClose runs first and closes every
    // client in that set with 1005, leaves them to it.
    untrack (socket: WebSocket) { wss.clients?.delete(socket) },
    onDeclared (limits: Readonly<Limits>) {
      // ws holds one maxPayload for all routes; it must admit the largest route limit.
      if (limits.maxPayloadBytes > largestPayload) {
        largestPayload = limits.maxPayloadBytes
        if ((wss.options.maxPayload ?? WS_DEFAULT_MAX_PAYLOAD) < largestPayload) wss.options.maxPayload = largestPayload
      }
    }
  }

  const apis = new WeakMap<FastifyInstance, SecureWsApi>()
  function apiFor (instance: FastifyInstance): SecureWsApi {
    let api = apis.get(instance)
    if (api === undefined) {
      api = {
        route (routeOptions) {
          declareRoute(instance, routeOptions as unknown as Parameters<typeof declareRoute>[1], context)
        },
        async publish (topic: string, type: string, body: unknown, publishOptions?: PublishOptions) {
          const delivered = registry.publish(topic, type, body)
          if (publishOptions?.local !== true) await store.broadcast?.({ kind: 'publish', topic, type, body })
          return delivered
        },
        async disconnectUser (userId, code, reason) {
          if (code !== undefined) validateCloseFrame(code, reason)
          const closed = registry.disconnectUser(userId, 'disconnected', code, reason)
          await store.broadcast?.({ kind: 'disconnect', userId, code, reason })
          return closed
        },
        async revokeUser (userId, revokeOptions = {}) {
          validateRevocation(userId, revokeOptions)
          const issuedBefore = revokeOptions.issuedBefore ?? Date.now()
          const closed = registry.revokeUser(userId, issuedBefore)
          await store.revokeUser(userId, issuedBefore, revokeOptions.ttlMs ?? DEFAULT_REVOCATION_TTL_MS)
          await store.broadcast?.({ kind: 'revoke', userId, issuedBefore })
          return closed
        },
        stats () {
          return registry.stats()
        }
      }
      apis.set(instance, api)
    }
    return api
  }
  // A getter, so `child.secureWs.route()` declares under the child's prefix and hooks.
  fastify.decorate('secureWs', {
    getter (this: FastifyInstance) {
      return apiFor(this)
    }
  })
}

/**
 * After the plugin registered @fastify/websocket itself, a second registration by the app
 * would fail with Fastify's "The decorator 'ws' has already been added!", which names
 * neither plugin nor fix; this says both, at the app's own `register` call.
 */
function refuseLaterWebsocketRegistration (fastify: FastifyInstance): void {
  const register = fastify.register
  const guarded = function (this: FastifyInstance, plugin: unknown, ...rest: unknown[]) {
    const meta = (plugin as Record<symbol, { name?: string } | undefined> | null)?.[Symbol.for('plugin-meta')]
    if (plugin === websocket || meta?.name === '@fastify/websocket') throw new RegistrationOrderError()
    return (register as (...args: unknown[]) => unknown).call(this, plugin, ...rest)
  }
  fastify.register = guarded as unknown as typeof fastify.register
}

const plugin = fp(secureWs, { fastify: '5.x', name: 'fastify-secure-ws' })

export default plugin
export { plugin as secureWs }
export { optionsFromEnv, type EnvOptions } from './env.js'
export { withoutQueryToken } from './token.js'
export { memoryStore, MemoryStore, type MemoryStoreOptions } from './stores/memory.js'
export { redisStore, RedisStore, type RedisStoreOptions } from './stores/redis.js'
export { DEFAULT_LIMITS, DEFAULT_SERVER_LIMITS } from './options.js'
export { defineRoute, type RouteContract, type RouteDefinition } from './contract.js'
export { DEFAULT_CLOSE_REASONS } from './close-codes.js'
export { ERROR_MESSAGES } from './inbound.js'
export { InvalidOptionError, InvalidEnvError, InvalidRouteError, StoreUnavailableError, RegistrationOrderError } from './errors.js'
export type {
  SecureWsApi, PublishOptions, RevokeOptions,
  SecureWsStore, MessageCounter, StoreStats, RateLimits, BroadcastEvent, StoreContext,
  Limits, ServerLimits, SecureWsOptions, SecureWsUser, VerifyToken, PrometheusRegistry,
  SecureWsAuditEvent, AuditHook, TokenRefusal, InvalidMessageKind,
  CloseKind, CloseReason,
  MessageDefinition, MessageOptions, MessageHandler, DefineMessage, PayloadOf, OutboundSchemas, OutboundMessage,
  ParamsBase, SecureWsConnection, SecureWsRouteOptions, SessionBase, ResolveSessionContext,
  RouteParams, SchemaLike, ObjectSchemaLike, StaticOf,
  JwtOptions, JwtClaims,
  SecureWsStats
} from './types.js'
