import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import { readToken, refusalOf } from './token.js'
import type { CloseKind, CompiledRoute, SecureWsUser, SessionBase, TokenRefusal } from './types.js'

export interface Admitted {
  readonly admitted: true
  readonly connectionId: string
  readonly user: SecureWsUser
  readonly session: SessionBase
  readonly limitKey: string
  /** Frees the slot; safe to call any number of times, acts once. */
  readonly release: () => void
}

export interface Refused {
  readonly admitted: false
  readonly kind: CloseKind
  readonly userId?: string
  /** What the app's callback threw, for the one log line of the refusal. */
  readonly err?: unknown
  /** Why the token was refused (`invalidToken` only). */
  readonly tokenRefusal?: TokenRefusal
}

export type Admission = Admitted | Refused

let lastConnectionId = 0

function refuse (kind: CloseKind, userId?: string, err?: unknown): Refused {
  return { admitted: false, kind, userId, err }
}

function refuseToken (tokenRefusal: TokenRefusal, userId?: string): Refused {
  return { admitted: false, kind: 'invalidToken', userId, tokenRefusal }
}

/** True for anything with a `then` method: async callbacks may return any promise-like. */
export function isThenable (value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | null)?.then === 'function'
}

export function isUser (value: unknown): value is SecureWsUser {
  if (typeof value !== 'object' || value === null) return false
  const user = value as Partial<SecureWsUser>
  return typeof user.id === 'string' && user.id !== '' && Array.isArray(user.scopes) &&
    (user.expiresAt === undefined || Number.isFinite(user.expiresAt)) &&
    (user.issuedAt === undefined || Number.isFinite(user.issuedAt))
}

/** Runs `step` on a value that may be a promise, synchronously when it is not. */
export function then<T> (value: T | PromiseLike<T>, step: (value: T) => void, failed: (err: unknown) => void): void {
  if (isThenable(value)) value.then(step, failed)
  else step(value)
}

/**
 * Decides whether an upgrade may become a connection, in the order origin, token, session
 * ownership, connection slot; the first failing check names the refusal, given to `done`
 * exactly once. Never throws. Each step continues synchronously unless the app's callback
 * or the store returned a promise, so an upgrade costs no promise round trips it does not need.
 * On success the slot is held until `release` runs, which the caller ties to the socket.
 */
export function admit (request: FastifyRequest, route: CompiledRoute, done: (admission: Admission) => void): void {
  if (!route.isOriginAllowed(request.headers.origin)) return done(refuse('originNotAllowed'))
  const token = readToken(request)
  if (token === undefined) return done(refuseToken('missing'))

  // The verifier could not decide (an identity provider down): the client may try again later.
  const tokenFailed = (err: unknown): void => done(refuse('authUnavailable', undefined, err))
  let verified: ReturnType<CompiledRoute['verifyToken']>
  try {
    verified = route.verifyToken(token, request)
  } catch (err) {
    return tokenFailed(err)
  }
  then(verified, (user) => {
    if (user === null || user === undefined) return done(refuseToken(refusalOf(route.verifyToken)))
    if (!isUser(user)) {
      return done(refuse('internalError', undefined, new TypeError('verifyToken returned a user without a non-empty string id and a scopes array')))
    }
    if (user.expiresAt !== undefined && user.expiresAt + route.expiryGraceMs <= Date.now()) return done(refuseToken('expired', user.id))
    checkRevocation(route.store, user, () => resolveSession(request, route, user, done), (kind, err) => {
      done(kind === 'invalidToken' ? refuseToken('revoked', user.id) : refuse(kind, user.id, err))
    })
  }, tokenFailed)
}

/**
 * Continues with `next` unless `user`'s credential was revoked (logout everywhere): issued at
 * or before the user's latest revocation, or with no issue time while one is in force.
 * Shared by admission and by refresh on an open connection.
 */
export function checkRevocation (store: CompiledRoute['store'], user: SecureWsUser, next: () => void, refused: (kind: 'invalidToken' | 'storeUnavailable', err?: unknown) => void): void {
  let revoked: number | Promise<number>
  try {
    revoked = store.revokedBefore(user.id)
  } catch (err) {
    return refused('storeUnavailable', err)
  }
  then(revoked, (before) => {
    if (before > 0 && (user.issuedAt === undefined || user.issuedAt <= before)) return refused('invalidToken')
    next()
  }, (err) => refused('storeUnavailable', err))
}

function resolveSession (request: FastifyRequest, route: CompiledRoute, user: SecureWsUser, done: (admission: Admission) => void): void {
  const failed = (err: unknown): void => done(refuse('internalError', user.id, err))
  let resolved: ReturnType<CompiledRoute['resolveSession']>
  try {
    resolved = route.resolveSession({ request, user, params: request.params as Record<string, string> })
  } catch (err) {
    return failed(err)
  }
  then(resolved, (session) => {
    if (session === null || session === undefined || session.ownerId !== user.id) return done(refuse('accessDenied', user.id))
    takeSlot(request, route, user, session, done)
  }, failed)
}

function takeSlot (request: FastifyRequest, route: CompiledRoute, user: SecureWsUser, session: SessionBase, done: (admission: Admission) => void): void {
  const connectionId = `c${(++lastConnectionId).toString(36)}`
  const limitKey = route.limitScope + user.id
  // The store logs an outage once; each refusal it causes is one line of its own.
  const unavailable = (): void => done(refuse('storeUnavailable', user.id))
  let acquired: boolean | Promise<boolean>
  try {
    acquired = route.store.acquireSlot(limitKey, connectionId, route.limits.connectionsPerUser)
  } catch {
    return unavailable()
  }
  then(acquired, (ok) => {
    if (!ok) return done(refuse('tooManyConnections', user.id))
    done({ admitted: true, connectionId, user, session, limitKey, release: slotRelease(route.store, limitKey, connectionId, request.log, user.id) })
  }, unavailable)
}

/**
 * The slot's release, made in a scope of its own: a closure keeps its whole enclosing scope
 * alive, and admission's scopes hold the request, the reply and Fastify's hook chain, which
 * would then live as long as the connection.
 */
function slotRelease (store: CompiledRoute['store'], limitKey: string, connectionId: string, log: FastifyBaseLogger, userId: string): () => void {
  let released = false
  return () => {
    if (released) return
    released = true
    const failed = (err: unknown): void => {
      log.error({ err, userId, connectionId }, 'store failed to release a connection slot')
    }
    let result: void | Promise<void>
    try {
      result = store.releaseSlot(limitKey, connectionId)
    } catch (err) {
      return failed(err)
    }
    if (isThenable(result)) result.then(undefined, failed)
  }
}
