import type { FastifyRequest } from 'fastify'
import type { CloseKind } from './close-codes.js'
import type { SessionBase } from './messages.js'
import type { SecureWsUser } from './options.js'
import type { CompiledRoute } from './route.js'
import { readToken } from './token.js'

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
}

export type Admission = Admitted | Refused

let lastConnectionId = 0

function refuse (kind: CloseKind, userId?: string): Refused {
  return { admitted: false, kind, userId }
}

function isUser (value: unknown): value is SecureWsUser {
  if (typeof value !== 'object' || value === null) return false
  const user = value as Partial<SecureWsUser>
  return typeof user.id === 'string' && user.id !== '' && Array.isArray(user.scopes) &&
    (user.expiresAt === undefined || Number.isFinite(user.expiresAt))
}

async function authenticate (request: FastifyRequest, route: CompiledRoute): Promise<SecureWsUser | Refused> {
  const token = readToken(request)
  if (token === undefined) return refuse('invalidToken')
  let user: unknown
  try {
    user = await route.verifyToken(token, request)
  } catch (err) {
    request.log.error({ err }, 'verifyToken failed')
    return refuse('invalidToken')
  }
  if (user === null || user === undefined) return refuse('invalidToken')
  if (!isUser(user)) {
    request.log.error('verifyToken returned a user without a non-empty string id and a scopes array')
    return refuse('internalError')
  }
  if (user.expiresAt !== undefined && user.expiresAt <= Date.now()) return refuse('invalidToken', user.id)
  return user
}

/**
 * Decides whether an upgrade may become a connection, in the order origin, token, session
 * ownership, connection slot; the first failing check names the refusal. Never rejects.
 * On success the slot is held until `release` runs, which the caller ties to the socket.
 */
export async function admit (request: FastifyRequest, route: CompiledRoute): Promise<Admission> {
  if (!route.isOriginAllowed(request.headers.origin)) return refuse('originNotAllowed')

  const user = await authenticate(request, route)
  if ('admitted' in user) return user

  const params = request.params as Record<string, string>
  let session: SessionBase | null | undefined
  try {
    session = await route.resolveSession({ request, user, params })
  } catch (err) {
    request.log.error({ err, userId: user.id }, 'resolveSession failed')
    return refuse('internalError', user.id)
  }
  if (session === null || session === undefined || session.ownerId !== user.id) return refuse('accessDenied', user.id)

  const connectionId = `c${(++lastConnectionId).toString(36)}`
  const limitKey = route.limitScope + user.id
  let acquired: boolean
  try {
    acquired = await route.store.acquireSlot(limitKey, connectionId, route.limits.connectionsPerUser)
  } catch (err) {
    request.log.error({ err, userId: user.id }, 'store unavailable while taking a connection slot')
    return refuse('storeUnavailable', user.id)
  }
  if (!acquired) return refuse('tooManyConnections', user.id)

  let released = false
  const release = (): void => {
    if (released) return
    released = true
    route.store.releaseSlot(limitKey, connectionId).catch((err: unknown) => {
      request.log.error({ err, userId: user.id, connectionId }, 'store failed to release a connection slot')
    })
  }
  return { admitted: true, connectionId, user, session, limitKey, release }
}
