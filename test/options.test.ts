import t from 'tap'
import Fastify from 'fastify'
import secureWs, { memoryStore, type SecureWsOptions } from '../lib/index.js'
import { ORIGIN, SECRET, build, connect, sign, testRoute } from './helpers.js'

const JWT = { key: SECRET, algorithms: ['HS256'] }
const VALID = { origins: [ORIGIN], jwt: JWT }

interface CodedError {
  code?: unknown
  message: string
}

/**
 * Registers the plugin with `options` on a fresh instance and returns the error that
 * `register()`/`ready()` fail with, or null when registration succeeds.
 */
async function registrationError (t: { teardown: (fn: () => unknown) => void }, options: unknown): Promise<CodedError | null> {
  const app = Fastify()
  t.teardown(() => app.close().catch(() => {}))
  try {
    await app.register(secureWs, options as SecureWsOptions)
    await app.ready()
  } catch (err) {
    return err as CodedError
  }
  return null
}

/** One invalid option: what to register, and the message it must fail with. */
interface BadCase {
  name: string
  options: Record<string, unknown>
  message: string | RegExp
}

function storeWithout (method?: string): Record<string, unknown> {
  const real = memoryStore()
  const store: Record<string, unknown> = {
    acquireSlot: real.acquireSlot.bind(real),
    releaseSlot: real.releaseSlot.bind(real),
    holdCounter: real.holdCounter.bind(real),
    recordAuthFailure: real.recordAuthFailure.bind(real),
    lockedOutUntil: real.lockedOutUntil.bind(real),
    revokeUser: real.revokeUser.bind(real),
    revokedBefore: real.revokedBefore.bind(real),
    stats: real.stats.bind(real),
    close: real.close.bind(real)
  }
  if (method !== undefined) delete store[method]
  return store
}

const BAD: BadCase[] = [
  { name: 'missing origins', options: { jwt: JWT }, message: /^origins is required/ },
  { name: 'empty origins', options: { origins: [], jwt: JWT }, message: /^origins is required/ },
  { name: 'origins not an array', options: { origins: ORIGIN, jwt: JWT }, message: /^origins is required/ },
  { name: 'an origin with a path', options: { origins: ['https://app.example.com/app'], jwt: JWT }, message: 'origins[0] must be an origin of the form scheme://host[:port]' },
  { name: 'an origin with a trailing slash', options: { origins: [ORIGIN, 'https://app.example.com/'], jwt: JWT }, message: 'origins[1] must be an origin of the form scheme://host[:port]' },
  { name: 'the origin "null"', options: { origins: ['null'], jwt: JWT }, message: 'origins[0] must be an origin of the form scheme://host[:port]' },
  { name: 'a wildcard origin', options: { origins: ['*'], jwt: JWT }, message: 'origins[0]: wildcards are not supported; list every origin that may connect (for example "https://app.example.com", "https://admin.example.com")' },
  { name: 'a wildcard subdomain origin', options: { origins: [ORIGIN, 'https://*.example.com'], jwt: JWT }, message: /^origins\[1\]: wildcards are not supported/ },
  { name: 'a typo inside jwt (iss for issuer)', options: { ...VALID, jwt: { ...JWT, iss: 'https://id.example.com' } }, message: /^jwt\.iss is not a known option \(expected one of key, algorithms, issuer/ },
  { name: 'a near typo inside jwt', options: { ...VALID, jwt: { ...JWT, isuer: 'https://id.example.com' } }, message: 'jwt.isuer is not a known option; did you mean jwt.issuer?' },
  { name: 'a typo in a limit', options: { ...VALID, limits: { messagesPerSecnd: 3 } }, message: 'limits.messagesPerSecnd is not a known limit (did you mean limits.messagesPerSecond?)' },
  { name: 'a typo inside closeReasons', options: { ...VALID, closeReasons: { invalidToken: { reasn: 'x' } } }, message: 'closeReasons.invalidToken.reasn is not a known option; did you mean closeReasons.invalidToken.reason?' },
  { name: 'an origin that is not a string', options: { origins: [42], jwt: JWT }, message: 'origins[0] must be an origin of the form scheme://host[:port]' },
  { name: 'an unknown limit name', options: { ...VALID, limits: { connectionsPerUsr: 3 } }, message: /^limits\.connectionsPerUsr is not a known limit/ },
  { name: 'limits not an object', options: { ...VALID, limits: 5 }, message: 'limits must be an object' },
  { name: 'an unknown top-level option', options: { ...VALID, allowedOrigins: [ORIGIN] }, message: /^allowedOrigins is not a known option \(expected one of origins, allowMissingOrigin/ },
  { name: 'a near typo of an option', options: { ...VALID, heartbeatIntervalMS: 10 }, message: 'heartbeatIntervalMS is not a known option; did you mean heartbeatIntervalMs?' },
  { name: 'neither verifyToken nor jwt', options: { origins: [ORIGIN] }, message: 'verifyToken or jwt is required: every connection must be authenticated' },
  { name: 'both verifyToken and jwt', options: { ...VALID, verifyToken: () => null }, message: 'give either verifyToken or jwt, not both' },
  { name: 'verifyToken not a function', options: { origins: [ORIGIN], verifyToken: 'secret' }, message: /^verifyToken must be a function/ },
  { name: 'jwt.algorithms missing', options: { origins: [ORIGIN], jwt: { key: SECRET } }, message: /^jwt\.algorithms must be a non-empty array/ },
  { name: 'jwt.algorithms a string', options: { origins: [ORIGIN], jwt: { key: SECRET, algorithms: 'HS256' } }, message: /^jwt\.algorithms must be a non-empty array/ },
  { name: 'jwt.algorithms empty', options: { origins: [ORIGIN], jwt: { key: SECRET, algorithms: [] } }, message: /^jwt\.algorithms must be a non-empty array/ },
  { name: 'jwt.algorithms with "none"', options: { origins: [ORIGIN], jwt: { key: SECRET, algorithms: ['none'] } }, message: /^jwt\.algorithms must be a non-empty array/ },
  { name: 'jwt.key missing', options: { origins: [ORIGIN], jwt: { algorithms: ['HS256'] } }, message: 'jwt.key must be a non-empty string or Buffer' },
  { name: 'jwt.clockToleranceMs over 5000', options: { origins: [ORIGIN], jwt: { ...JWT, clockToleranceMs: 5001 } }, message: 'jwt.clockToleranceMs must be an integer from 0 to 5000' },
  { name: 'jwt.clockToleranceMs negative', options: { origins: [ORIGIN], jwt: { ...JWT, clockToleranceMs: -1 } }, message: 'jwt.clockToleranceMs must be an integer from 0 to 5000' },
  { name: 'a closeReasons code that is not sendable (1005)', options: { ...VALID, closeReasons: { originNotAllowed: { code: 1005 } } }, message: /^closeReasons\.originNotAllowed\.code must be a close code a server may send/ },
  { name: 'a closeReasons code outside every range (5000)', options: { ...VALID, closeReasons: { accessDenied: { code: 5000 } } }, message: /^closeReasons\.accessDenied\.code must be a close code a server may send/ },
  { name: 'a closeReasons reason over 123 bytes', options: { ...VALID, closeReasons: { invalidToken: { reason: 'x'.repeat(124) } } }, message: 'closeReasons.invalidToken.reason must be a string of at most 123 bytes' },
  // 62 characters, 124 bytes: the limit is on bytes, not characters.
  { name: 'a closeReasons reason of few characters but over 123 bytes', options: { ...VALID, closeReasons: { rateLimited: { reason: 'é'.repeat(62) } } }, message: 'closeReasons.rateLimited.reason must be a string of at most 123 bytes' },
  { name: 'a closeReasons entry for an unknown refusal', options: { ...VALID, closeReasons: { notARefusal: { code: 4000 } } }, message: /^closeReasons\.notARefusal is not a known refusal/ },
  { name: 'a closeReasons status that is not an HTTP error', options: { ...VALID, closeReasons: { originNotAllowed: { status: 200 } } }, message: 'closeReasons.originNotAllowed.status must be an HTTP error status (400-599)' },
  { name: 'rejectWith "x"', options: { ...VALID, rejectWith: 'x' }, message: 'rejectWith must be "close" or "http"' },
  { name: 'allowMissingOrigin not a boolean', options: { ...VALID, allowMissingOrigin: 'yes' }, message: 'allowMissingOrigin must be a boolean' },
  { name: 'shutdownTimeoutMs zero', options: { ...VALID, shutdownTimeoutMs: 0 }, message: 'shutdownTimeoutMs must be a positive integer' },
  ...[-1, 150.5, 2 ** 31, '30000', Number.NaN, Number.POSITIVE_INFINITY, null].map((value) => ({
    name: `heartbeatIntervalMs = ${JSON.stringify(value) ?? String(value)}`,
    options: { ...VALID, heartbeatIntervalMs: value },
    message: 'heartbeatIntervalMs must be 0 (off) or an integer from 1 to 2147483647'
  })),
  { name: 'a store that is null', options: { ...VALID, store: null }, message: 'store must be a store object such as memoryStore() or redisStore(...)' },
  { name: 'a store that is a string', options: { ...VALID, store: 'redis' }, message: 'store must be a store object such as memoryStore() or redisStore(...)' },
  ...['acquireSlot', 'releaseSlot', 'holdCounter', 'recordAuthFailure', 'lockedOutUntil', 'revokeUser', 'revokedBefore', 'stats', 'close'].map((method) => ({
    name: `a store missing ${method}`,
    options: { ...VALID, store: storeWithout(method) },
    message: `store.${method} must be a function (see the SecureWsStore interface)`
  }))
]

for (const limit of ['connectionsPerUser', 'messagesPerSecond', 'messagesPerMinute', 'maxPayloadBytes', 'maxBufferedBytes', 'pendingUpgradesPerIp']) {
  for (const value of [0, -1, 1.5, 'abc', Number.NaN, Number.POSITIVE_INFINITY]) {
    BAD.push({ name: `limits.${limit} = ${JSON.stringify(value) ?? String(value)}`, options: { ...VALID, limits: { [limit]: value } }, message: `limits.${limit} must be a positive integer` })
  }
}
for (const limit of ['authFailuresPerMinute', 'maxConnections']) {
  for (const value of [-1, 1.5, 'abc', Number.NaN, Number.POSITIVE_INFINITY]) {
    BAD.push({ name: `limits.${limit} = ${JSON.stringify(value) ?? String(value)}`, options: { ...VALID, limits: { [limit]: value } }, message: `limits.${limit} must be 0 (off) or a positive integer` })
  }
}
for (const value of [0, -1, 1.5, 'abc', 2 ** 31]) {
  BAD.push({ name: `refusalGraceMs = ${JSON.stringify(value)}`, options: { ...VALID, refusalGraceMs: value }, message: 'refusalGraceMs must be an integer from 1 to 2147483647' })
}

t.test('valid options register (the baseline every failure below differs from)', async (t) => {
  t.equal(await registrationError(t, VALID), null)
  t.equal(await registrationError(t, {
    origins: [ORIGIN, 'https://app.example.com'],
    allowMissingOrigin: true,
    verifyToken: () => null,
    limits: { connectionsPerUser: 1, messagesPerSecond: 1, messagesPerMinute: 1, maxPayloadBytes: 1 },
    store: storeWithout(),
    closeReasons: { originNotAllowed: { code: 4403, reason: 'é'.repeat(61), status: 451 } },
    rejectWith: 'http',
    shutdownTimeoutMs: 10,
    heartbeatIntervalMs: 0,
    refusalGraceMs: 50
  }), null)
  t.equal(await registrationError(t, { ...VALID, limits: { authFailuresPerMinute: 0, maxConnections: 0, pendingUpgradesPerIp: 1, maxBufferedBytes: 1 } }), null, '0 turns the lockout and the connection cap off')
  t.equal(await registrationError(t, { ...VALID, logLevel: 'warn', prefix: '/x' }), null, 'Fastify\'s own register options are accepted')
  for (const heartbeatIntervalMs of [100, 2 ** 31 - 1]) {
    t.equal(await registrationError(t, { ...VALID, heartbeatIntervalMs }), null, `heartbeatIntervalMs ${heartbeatIntervalMs}`)
  }
})

for (const bad of BAD) {
  t.test(`${bad.name} fails registration with FST_SECURE_WS_INVALID_OPTION`, async (t) => {
    const err = await registrationError(t, bad.options)
    t.ok(err, 'registration fails')
    if (err === null) return
    t.equal(err.code, 'FST_SECURE_WS_INVALID_OPTION')
    if (typeof bad.message === 'string') t.equal(err.message, bad.message)
    else t.match(err.message, bad.message)
  })
}

t.test('options that are not an object fail registration', async (t) => {
  const err = await registrationError(t, 'origins')
  t.equal(err?.code, 'FST_SECURE_WS_INVALID_OPTION')
  t.equal(err?.message, 'options must be an object')
})

t.test('route validation', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(secureWs, VALID as SecureWsOptions)

  t.test('a route without resolveSession is refused', async (t) => {
    const { resolveSession: _omitted, ...rest } = testRoute({ url: '/no-session' })
    t.throws(() => app.secureWs.route(rest as unknown as ReturnType<typeof testRoute>), {
      code: 'FST_SECURE_WS_INVALID_ROUTE',
      message: '/no-session: resolveSession is required: every connection must be bound to a session its user owns'
    })
  })

  t.test('a message without a handler is refused', async (t) => {
    t.throws(() => app.secureWs.route(testRoute({
      url: '/no-handler',
      messages: { ping: { scopes: ['read'] } } as unknown as ReturnType<typeof testRoute>['messages']
    })), {
      code: 'FST_SECURE_WS_INVALID_ROUTE',
      message: '/no-handler: messages.ping.handler must be a function'
    })
  })

  t.test('a route limit that is not a positive integer is refused', async (t) => {
    t.throws(() => app.secureWs.route(testRoute({ url: '/bad-limit', limits: { connectionsPerUser: 0 } })), {
      code: 'FST_SECURE_WS_INVALID_ROUTE',
      message: '/bad-limit: limits.connectionsPerUser must be a positive integer'
    })
  })

  t.test('an unknown route option is refused with the closest known one', async (t) => {
    t.throws(() => app.secureWs.route({ ...testRoute({ url: '/typo' }), onconnect: () => {} } as unknown as ReturnType<typeof testRoute>), {
      code: 'FST_SECURE_WS_INVALID_ROUTE',
      message: '/typo: onconnect is not a known option; did you mean onConnect?'
    })
  })

  t.test('a server-wide limit on a route is refused, saying where it belongs', async (t) => {
    t.throws(() => app.secureWs.route(testRoute({ url: '/server-limit', limits: { maxConnections: 3 } as never })), {
      code: 'FST_SECURE_WS_INVALID_ROUTE',
      message: "/server-limit: limits.maxConnections is server-wide: set it in the plugin's limits, not a route's"
    })
  })

  t.test('a valid route is accepted', async (t) => {
    t.doesNotThrow(() => app.secureWs.route(testRoute({ url: '/fine' })))
  })
})

t.test('a closeReasons override is what the client receives', async (t) => {
  const { url } = await build(t, { options: { closeReasons: { originNotAllowed: { code: 4403, reason: 'nope' } } } })

  const refused = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: 'http://evil.test' })
  t.same(await refused.closed, { code: 4403, reason: 'nope' })

  // Refusals that were not overridden keep their defaults.
  const badToken = await connect(url('/ws/alice-1'), { token: 'garbage' })
  t.same(await badToken.closed, { code: 4401, reason: 'Invalid or expired authentication token' })

  const ok = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.ok(await ok.admitted(), 'an allowed origin is still admitted')
  await ok.close()
})

t.test('a closeReasons status override is what rejectWith "http" answers', async (t) => {
  const { url } = await build(t, { options: { rejectWith: 'http', closeReasons: { originNotAllowed: { status: 451 } } } })
  const refused = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: 'http://evil.test' })
  t.equal(refused.status, 451)
})
