import type { IncomingMessage } from 'node:http'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { admit, isThenable, type Admission, type Admitted } from './admission.js'
import { HTTP_ONLY_REFUSALS } from './close-codes.js'
import { Connection } from './connection.js'
import { InvalidRouteError } from './errors.js'
import { compileMessages } from './inbound.js'
import { refuseUnknownKeys } from './known-keys.js'
import { validateLimits } from './options.js'
import { compileOutbound } from './outbound.js'
import type { Registry } from './registry.js'
import type { CompiledRoute, Limits, MessageCounter, OutboundSchemas, ResolvedOptions, SecureWsRouteOptions, SessionBase } from './types.js'
import type { UpgradeGuard } from './upgrade-guard.js'
import { limitInboundMessages } from './ws-internals.js'

/** Marks a raw request as an upgrade to one of our routes, for the subprotocol choice. */
export const kSecuredUpgrade = Symbol('fastify-secure-ws.securedUpgrade')
/** Admission's decision, carried on the raw request from the onRequest hook to the handler. */
const kAdmission = Symbol('fastify-secure-ws.admission')

type UpgradeRequest = IncomingMessage & { [kSecuredUpgrade]?: true, [kAdmission]?: Admission }

export interface RouteContext {
  readonly options: ResolvedOptions
  readonly registry: Registry
  readonly guard: UpgradeGuard
  /** Takes a socket of ours out of ws's client set (see index.ts). */
  readonly untrack: (socket: WebSocket) => void
  /** Called with each declared route's limits, so ws admits its largest frame. */
  readonly onDeclared: (limits: Readonly<Limits>) => void
}

const ROUTE_OPTIONS = ['url', 'resolveSession', 'messages', 'outbound', 'limits', 'onConnect', 'onClose']

// Limits that, once a route changes them, make it count slots and messages on its own.
const SHARED_LIMITS = ['connectionsPerUser', 'messagesPerSecond', 'messagesPerMinute'] as const

export function compileRoute (def: SecureWsRouteOptions<SessionBase, OutboundSchemas>, fullUrl: string, options: ResolvedOptions): CompiledRoute {
  if (typeof def !== 'object' || def === null) throw new InvalidRouteError('route options must be an object')
  if (typeof def.url !== 'string' || def.url === '') throw new InvalidRouteError('url must be a non-empty string')
  refuseUnknownKeys(def, ROUTE_OPTIONS, '', InvalidRouteError, `${def.url}: `)
  if (typeof def.resolveSession !== 'function') throw new InvalidRouteError(`${def.url}: resolveSession is required: every connection must be bound to a session its user owns`)
  if (def.onConnect !== undefined && typeof def.onConnect !== 'function') throw new InvalidRouteError(`${def.url}: onConnect must be a function`)
  if (def.onClose !== undefined && typeof def.onClose !== 'function') throw new InvalidRouteError(`${def.url}: onClose must be a function`)
  let routeLimits: Partial<Limits>
  try {
    routeLimits = validateLimits(def.limits, `${def.url}: limits`)
  } catch (err) {
    throw new InvalidRouteError((err as Error).message)
  }
  const limits = Object.freeze({ ...options.limits, ...routeLimits })
  const ownLimits = SHARED_LIMITS.some((name) => limits[name] !== options.limits[name])
  return {
    url: fullUrl,
    limits,
    limitScope: ownLimits ? `${fullUrl}|` : '',
    store: options.store,
    closeReasons: options.closeReasons,
    isOriginAllowed: options.isOriginAllowed,
    verifyToken: options.verifyToken,
    expiryGraceMs: options.expiryGraceMs,
    resolveSession: def.resolveSession,
    messages: compileMessages(def.url, def.messages),
    serializers: compileOutbound(def.url, def.outbound),
    onConnect: def.onConnect as CompiledRoute['onConnect'],
    onClose: def.onClose as CompiledRoute['onClose']
  }
}

function joinUrl (prefix: string, url: string): string {
  if (prefix === '') return url
  return prefix.endsWith('/') && url.startsWith('/') ? prefix + url.slice(1) : prefix + url
}

/** Declares one secured WebSocket route on `instance`, honouring its prefix and hooks. */
export function declareRoute (instance: FastifyInstance, def: SecureWsRouteOptions<SessionBase, OutboundSchemas>, context: RouteContext): void {
  const { options, registry, guard } = context
  const route = compileRoute(def, joinUrl(instance.prefix, typeof def?.url === 'string' ? def.url : ''), options)

  // Callback style: Fastify then awaits no promise for an upgrade that admission decides at once.
  function admitUpgrade (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    // A plain HTTP request to the route falls through to @fastify/websocket's 404.
    if (!request.ws) return done()
    ;(request.raw as UpgradeRequest)[kSecuredUpgrade] = true
    if (registry.closing) return decided(request, reply, done, { admitted: false, kind: 'shuttingDown' })
    const ip = request.ip
    const early = guard.enter(ip)
    if (early !== undefined) {
      if (HTTP_ONLY_REFUSALS.has(early.kind)) {
        // Not logged: one line went out when the address was locked out, and a flood must
        // not turn into a flood of log lines. Counted, and audited when the app listens.
        registry.telemetry.refused(early.kind, () => ({ type: 'refused', kind: early.kind, ip, origin: request.headers.origin, route: route.url }))
        const { status, reason } = route.closeReasons[early.kind]
        reply.code(status).header('retry-after', String(early.retryAfter ?? 1)).header('connection', 'close').send({ statusCode: status, code: early.kind, message: reason })
        return
      }
      return decided(request, reply, done, { admitted: false, kind: early.kind })
    }
    // The upgrade counts as pending until admission decides, or until admissionTimeoutMs
    // decides for it: a verifier or store that never answers must hold neither the address's
    // count nor the socket. What admission decides after that is let go of.
    let timer: NodeJS.Timeout | undefined
    let settled = false
    const settle = (admission: Admission): void => {
      if (settled) {
        if (admission.admitted) admission.release()
        return
      }
      settled = true
      clearTimeout(timer)
      guard.leave(ip)
      decided(request, reply, done, admission)
    }
    admit(request, route, settle)
    // Only an admission that waits on a promise needs the timer.
    if (!settled) timer = setTimeout(settle, options.admissionTimeoutMs, { admitted: false, kind: 'admissionTimeout' })
  }

  function decided (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void, admission: Admission): void {
    if (!admission.admitted) {
      const kind = admission.kind
      const { userId, tokenRefusal } = admission
      if (kind === 'authUnavailable') {
        guard.verifierFailed(admission.err, request.log)
        request.log.warn({ refusal: kind, ip: request.ip }, 'websocket connection refused')
      } else {
        // Only a refusal that came from the verifier's own answer says it is back.
        if (kind !== 'originNotAllowed' && kind !== 'shuttingDown' && kind !== 'serverFull' && tokenRefusal !== 'missing') guard.verifierAnswered(request.log)
        request.log.warn({ refusal: kind, tokenRefusal, userId, ip: request.ip, err: admission.err }, 'websocket connection refused')
        if (kind === 'invalidToken') guard.authFailed(request.ip, request.log)
      }
      registry.telemetry.refused(kind, () => ({ type: 'refused', kind, userId, ip: request.ip, origin: request.headers.origin, route: route.url, tokenRefusal }))
      if (options.rejectWith === 'http') {
        const { status, reason } = route.closeReasons[kind]
        reply.code(status).send({ statusCode: status, code: kind, message: reason })
        return
      }
    } else {
      guard.verifierAnswered(request.log)
      const socket = request.raw.socket
      if (socket?.destroyed === true) {
        // The client left while we were checking; nobody will ever close this connection.
        admission.release()
        return done()
      }
      // Ties the slot to the TCP socket, so a handshake that never completes frees it too.
      // 'finish' comes when the server has ended its side after the close handshake, before
      // the client can see its own 'close' event; a client that reconnects at once finds
      // the slot free. The upgrade's response emits 'close' when the socket closes: listening
      // there, not on the socket, keeps the socket's 'close' listeners at the two Node and ws
      // put there (a third grows their array, for the connection's life). `release`
      // acts once, so plain `on` listeners do (and cost less).
      socket?.on('finish', admission.release)
      reply.raw.on('close', admission.release)
    }
    // A property rather than a WeakMap entry: cheaper to write and read on every upgrade,
    // and one ephemeron less for the collector to trace.
    ;(request.raw as UpgradeRequest)[kAdmission] = admission
    done()
  }

  function onUpgraded (socket: WebSocket, request: FastifyRequest): void {
    context.untrack(socket)
    const raw = request.raw as UpgradeRequest
    const admission = raw[kAdmission]
    // The connection holds what it needs; the request must not keep the admission alive.
    raw[kAdmission] = undefined
    if (admission === undefined || !admission.admitted) {
      const { code, reason } = route.closeReasons[admission?.kind ?? 'internalError']
      registry.hangUp(socket, code, reason)
      return
    }
    startConnection(socket, request, admission)
  }

  function startConnection (socket: WebSocket, request: FastifyRequest, admission: Admitted): void {
    limitInboundMessages(socket, route.limits.maxPayloadBytes)
    let counter: MessageCounter
    try {
      counter = route.store.holdCounter(admission.limitKey, route.limits)
      if (typeof counter?.consume !== 'function' || typeof counter.release !== 'function') {
        throw new TypeError('holdCounter must return { consume, release } (see the MessageCounter interface)')
      }
    } catch (err) {
      // Only a custom store can fail here; the slot is freed when the socket closes.
      request.log.error({ err, userId: admission.user.id, connectionId: admission.connectionId }, 'store could not hold a message counter')
      const { code, reason } = route.closeReasons.internalError
      registry.hangUp(socket, code, reason)
      return
    }
    const connection = new Connection(socket, route, registry, {
      id: admission.connectionId,
      user: admission.user,
      session: admission.session,
      params: request.params as Record<string, string>,
      counter,
      limitKey: admission.limitKey,
      log: request.log,
      request,
      release: admission.release
    })
    if (registry.closing) {
      connection.closeFor('shuttingDown')
      return
    }
    const telemetry = registry.telemetry
    if (telemetry.auditing) telemetry.emit({ type: 'connected', userId: connection.user.id, connectionId: connection.id, ip: request.ip, origin: request.headers.origin, route: route.url })
    if (route.onConnect !== undefined) {
      const failed = (err: unknown): void => {
        connection.log.error({ err, userId: connection.user.id, connectionId: connection.id }, 'websocket onConnect hook failed')
        connection.closeFor('internalError')
      }
      try {
        const result = route.onConnect(connection)
        if (isThenable(result)) result.then(undefined, failed)
      } catch (err) {
        failed(err)
      }
    }
  }

  instance.route({ method: 'GET', url: def.url, websocket: true, onRequest: admitUpgrade, handler: onUpgraded })
  context.onDeclared(route.limits)
}
