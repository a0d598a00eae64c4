import type { IncomingMessage } from 'node:http'
import type { FastifyRequest } from 'fastify'
import { createVerifier, type Algorithm } from 'fast-jwt'
import { refuseUnknownKeys } from './known-keys.js'
import type { JwtClaims, JwtOptions, SecureWsUser, TokenRefusal, VerifyToken } from './types.js'

/** Where the query-string token waits once it has been cut out of the request URL. */
export const kQueryToken = Symbol('fastify-secure-ws.queryToken')

type RequestWithToken = IncomingMessage & { [kQueryToken]?: string }

/** The subprotocol a client names before its token: `Sec-WebSocket-Protocol: bearer, <token>`. */
export const BEARER_PROTOCOL = 'bearer'

const ALGORITHMS: readonly Algorithm[] = ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']

/** fast-jwt's `clockTolerance` is in ms; more than a few seconds turns expiry into a suggestion. */
export const MAX_CLOCK_TOLERANCE_MS = 5000
const DEFAULT_CACHE_SIZE = 10_000

/**
 * `url` without its `token` query parameter, and the token. A name spelled in any case or
 * percent-encoded counts; if a token-like `token=` is still left inside another value (a
 * second `?` puts it there), the whole query goes, since a URL that odd is no one's to keep.
 * Other parameters are re-encoded, which keeps their meaning.
 */
export function withoutQueryToken (url: string): { url: string, token: string | undefined } {
  const q = url.indexOf('?')
  if (q === -1) return { url, token: undefined }
  const params = new URLSearchParams(url.slice(q + 1))
  let token: string | undefined
  for (const name of [...params.keys()]) {
    if (name.toLowerCase() !== 'token') continue
    if (name === 'token' && token === undefined) token = params.get(name) ?? undefined
    params.delete(name)
  }
  const rest = params.toString()
  const path = url.slice(0, q)
  if (/token(=|%3d)/i.test(rest)) return { url: path, token }
  return { url: rest === '' ? path : `${path}?${rest}`, token }
}

/**
 * Cuts `token` out of the query string of an upgrade request before Fastify logs the URL,
 * and keeps it on the raw request for admission. Every upgrade is scrubbed, whatever its
 * path: a token sent to a mistyped URL must not reach the logs either.
 */
export function takeQueryToken (req: IncomingMessage): void {
  const url = req.url
  if (url === undefined || !url.includes('?')) return
  const scrubbed = withoutQueryToken(url)
  if (scrubbed.url === url) return
  req.url = scrubbed.url
  if (scrubbed.token !== undefined) (req as RequestWithToken)[kQueryToken] = scrubbed.token
}

/** The token from `?token=` or from `Sec-WebSocket-Protocol: bearer, <token>`, if any. */
export function readToken (request: FastifyRequest): string | undefined {
  const fromQuery = (request.raw as RequestWithToken)[kQueryToken]
  if (fromQuery !== undefined && fromQuery !== '') return fromQuery
  const header = request.headers['sec-websocket-protocol']
  if (header === undefined) return undefined
  // The protocol after the first `bearer`, found by scanning rather than splitting: the
  // header is read on every upgrade, and a split builds an array of every protocol in it.
  let start = 0
  for (let comma = header.indexOf(','); comma !== -1; comma = header.indexOf(',', start)) {
    if (header.slice(start, comma).trim() === BEARER_PROTOCOL) {
      const end = header.indexOf(',', comma + 1)
      const token = header.slice(comma + 1, end === -1 ? header.length : end).trim()
      return token === '' ? undefined : token
    }
    start = comma + 1
  }
  return undefined
}

// fast-jwt's error codes, as the refusal reason a log line and an audit event carry.
const FAST_JWT_REFUSALS: Readonly<Record<string, TokenRefusal>> = {
  FAST_JWT_EXPIRED: 'expired',
  FAST_JWT_INACTIVE: 'notYetValid',
  FAST_JWT_INVALID_SIGNATURE: 'badSignature',
  FAST_JWT_INVALID_ALGORITHM: 'algorithm',
  FAST_JWT_MALFORMED: 'malformed',
  FAST_JWT_INVALID_TYPE: 'malformed',
  FAST_JWT_INVALID_PAYLOAD: 'malformed',
  FAST_JWT_MISSING_REQUIRED_CLAIM: 'claims',
  FAST_JWT_INVALID_CLAIM_TYPE: 'claims',
  FAST_JWT_INVALID_CLAIM_VALUE: 'claims',
  FAST_JWT_MISSING_SIGNATURE: 'badSignature'
}

/** The `jwt` option's verifier also says why it refused its last token (it runs synchronously). */
export interface ExplainedVerifier extends VerifyToken {
  refusal?: TokenRefusal
}

/** Why `verifyToken` just refused a token: the `jwt` verifier says, a custom one only "rejected". */
export function refusalOf (verifyToken: VerifyToken): TokenRefusal {
  return (verifyToken as ExplainedVerifier).refusal ?? 'rejected'
}

function scopesOf (claims: JwtClaims): string[] {
  const scope = claims.scope
  if (typeof scope === 'string') {
    const scopes = scope.split(' ')
    return scopes.includes('') ? scopes.filter((s) => s !== '') : scopes
  }
  if (Array.isArray(scope)) return scope.filter((s): s is string => typeof s === 'string')
  return []
}

function defaultUser (claims: JwtClaims): SecureWsUser | null {
  if (typeof claims.sub !== 'string' || claims.sub === '') return null
  return { id: claims.sub, scopes: scopesOf(claims) }
}

function isStringList (value: unknown): value is string | string[] {
  return typeof value === 'string' || (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string'))
}

/**
 * Builds a `verifyToken` from the `jwt` option, and the grace its users' `expiresAt` get on
 * an open connection (the clock tolerance); `fail` reports a bad option by name.
 */
export function createJwtVerifier (raw: unknown, fail: (message: string) => never): { verifyToken: VerifyToken, expiryGraceMs: number } {
  if (typeof raw !== 'object' || raw === null) fail('jwt must be an object with key and algorithms')
  const jwt = raw as Partial<JwtOptions>
  refuseUnknownKeys(jwt, ['key', 'algorithms', 'issuer', 'audience', 'clockToleranceMs', 'cacheSize', 'user'], 'jwt.')
  if (!(typeof jwt.key === 'string' || Buffer.isBuffer(jwt.key)) || jwt.key.length === 0) fail('jwt.key must be a non-empty string or Buffer')
  // fast-jwt accepts a bare string here and then trusts whatever the key allows, so check it ourselves.
  if (!Array.isArray(jwt.algorithms) || jwt.algorithms.length === 0 || !jwt.algorithms.every((a) => ALGORITHMS.includes(a))) {
    fail(`jwt.algorithms must be a non-empty array of ${ALGORITHMS.join(', ')}`)
  }
  if (jwt.issuer !== undefined && !isStringList(jwt.issuer)) fail('jwt.issuer must be a string or an array of strings')
  if (jwt.audience !== undefined && !isStringList(jwt.audience)) fail('jwt.audience must be a string or an array of strings')
  const tolerance = jwt.clockToleranceMs ?? 0
  if (!Number.isInteger(tolerance) || tolerance < 0 || tolerance > MAX_CLOCK_TOLERANCE_MS) fail(`jwt.clockToleranceMs must be an integer from 0 to ${MAX_CLOCK_TOLERANCE_MS}`)
  const cacheSize = jwt.cacheSize ?? DEFAULT_CACHE_SIZE
  if (!Number.isInteger(cacheSize) || cacheSize < 0) fail('jwt.cacheSize must be a non-negative integer')
  if (jwt.user !== undefined && typeof jwt.user !== 'function') fail('jwt.user must be a function (claims) => user | null')
  const toUser = jwt.user ?? defaultUser

  let verify: (token: string) => JwtClaims
  try {
    verify = createVerifier({
      key: jwt.key,
      algorithms: [...jwt.algorithms],
      requiredClaims: ['exp', 'sub'],
      allowedIss: jwt.issuer as string | string[] | undefined,
      allowedAud: jwt.audience as string | string[] | undefined,
      clockTolerance: tolerance,
      // Cached below, by the whole token: fast-jwt's own cache hashes each token twice.
      cache: false
    }) as (token: string) => JwtClaims
  } catch {
    fail('jwt.key does not fit jwt.algorithms')
  }

  // Verified tokens, oldest first. A hit needs only the expiry re-checked: `nbf` and `iat`
  // held when the token was verified, and time only moves on.
  const verified = new Map<string, { user: SecureWsUser, expiresAt: number }>()

  const explained = verifyJwt as ExplainedVerifier
  return { verifyToken: explained, expiryGraceMs: tolerance }

  function refuse (refusal: TokenRefusal): null {
    explained.refusal = refusal
    return null
  }

  function verifyJwt (token: string): SecureWsUser | null {
    const cached = verified.get(token)
    if (cached !== undefined) {
      if (Date.now() <= cached.expiresAt) return cached.user
      verified.delete(token)
      return refuse('expired')
    }
    let claims: JwtClaims
    try {
      claims = verify(token)
    } catch (err) {
      return refuse(FAST_JWT_REFUSALS[(err as { code?: string }).code ?? ''] ?? 'invalid')
    }
    // fast-jwt checks `iat` only together with maxAge; a token issued in the future is forged or skewed.
    if (claims.iat !== undefined && (typeof claims.iat !== 'number' || claims.iat * 1000 > Date.now() + tolerance)) return refuse('issuedInFuture')
    const mapped = toUser(claims)
    if (mapped === null || mapped === undefined) return refuse('claims')
    // One user object may now serve many connections, so none of them can change it.
    // `expiresAt` is `exp` itself; the clock tolerance is applied where it is checked (expiryGraceMs).
    // Copied by rest destructuring, not by a spread: in optimised code V8 gives every frozen
    // spread copy a hidden class of its own, more memory per cached user. An own `__proto__`
    // (a mapper that copies claims) is left out rather than allowed near the prototype.
    const { __proto__: _prototype, ...copy } = mapped as unknown as Record<string, unknown>
    copy.scopes = Object.freeze([...mapped.scopes])
    copy.expiresAt = mapped.expiresAt ?? (claims.exp as number) * 1000
    if (mapped.issuedAt === undefined && typeof claims.iat === 'number') copy.issuedAt = claims.iat * 1000
    const user = Object.freeze(copy) as unknown as SecureWsUser
    if (cacheSize > 0) {
      if (verified.size >= cacheSize) verified.delete(verified.keys().next().value!)
      verified.set(token, { user, expiresAt: (claims.exp as number) * 1000 + tolerance })
    }
    return user
  }
}
