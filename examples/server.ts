/**
 * A small "trading session status" service secured by fastify-secure-ws: the project's demo
 * and the target of its black-box tests. See README.md, "Example server".
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Type } from '@sinclair/typebox'
import { createSigner } from 'fast-jwt'
import { Registry as MetricsRegistry } from 'prom-client'
import secureWs, { optionsFromEnv, redisStore, withoutQueryToken, type SecureWsStore } from '../lib/index.js'
import { bundleClient } from '../scripts/build-client.js'

interface TradingSession {
  id: string
  ownerId: string
  state: 'running' | 'stopped'
  /** The exchange API key: the outbound `status` schema has no field for it, so it cannot leave. */
  apiKey: string
}

const DEV_SECRET = 'fastify-secure-ws-example-development-secret'
const TOKEN_LIFETIME_S = 3600
const EXAMPLE_LEASE_MS = 20_000
const DEFAULT_PRICE_INTERVAL_MS = 1000
// A WebSocket server has no business waiting minutes for a request's headers.
const HEADERS_TIMEOUT_MS = 10_000
const REQUEST_TIMEOUT_MS = 15_000

function fatal (message: string): never {
  process.stderr.write(`error: ${message}\n`)
  process.exit(1)
}

function readPriceInterval (value: string | undefined): number {
  if (value === undefined || value === '') return DEFAULT_PRICE_INTERVAL_MS
  const ms = /^\d+$/.test(value.trim()) ? Number(value.trim()) : Number.NaN
  if (!(Number.isSafeInteger(ms) && ms > 0 && ms <= 2 ** 31 - 1)) fatal(`WS_PRICE_INTERVAL_MS must be a positive integer (ms), got "${value}"`)
  return ms
}

function readPort (value: string | undefined): number {
  if (value === undefined || value === '') return 3000
  const port = /^\d+$/.test(value) ? Number(value) : Number.NaN
  if (!(port >= 0 && port <= 65535)) fatal(`PORT must be an integer from 0 to 65535, got "${value}"`)
  return port
}

function createStore (env: NodeJS.ProcessEnv): SecureWsStore | undefined {
  const url = env.WS_REDIS_URL
  if (url === undefined || url === '') return undefined
  if (!/^rediss?:\/\//.test(url)) fatal(`WS_REDIS_URL must be a redis:// or rediss:// URL, got "${url}"`)
  const lease = env.WS_REDIS_LEASE_MS
  // The contract frees a killed process's slots "within 30 s"; a 20 s lease does so with room
  // to spare, where the library's 30 s default would land right on the limit.
  const leaseMs = lease === undefined || lease === '' ? EXAMPLE_LEASE_MS : Number(lease)
  if (!(Number.isSafeInteger(leaseMs) && leaseMs > 0)) fatal(`WS_REDIS_LEASE_MS must be a positive integer, got "${lease}"`)
  return redisStore({ url, leaseMs })
}

function seedSessions (): Map<string, TradingSession> {
  return new Map([
    ['alice-1', { id: 'alice-1', ownerId: 'alice', state: 'running', apiKey: 'ak_live_alice_9f8e7d6c5b4a' }],
    ['bob-1', { id: 'bob-1', ownerId: 'bob', state: 'running', apiKey: 'ak_live_bob_1a2b3c4d5e6f' }]
  ])
}

// Only these channels exist; any other is refused by the schema with an `error`.
const Channel = Type.Object({ channel: Type.Union([Type.Literal('status'), Type.Literal('prices')]) })
const PRICES_TOPIC = 'prices'
const statusTopic = (sessionId: string): string => `session:${sessionId}:status`
const topicOf = (channel: 'status' | 'prices', sessionId: string): string => channel === 'prices' ? PRICES_TOPIC : statusTopic(sessionId)
const toStatus = (session: TradingSession) => ({ data: { id: session.id, owner: session.ownerId, state: session.state } })

const PriceLevels = Type.Array(Type.Tuple([Type.Number(), Type.Number()]))
const PRICE_LEVELS = 20

/** A made-up BTC-USD order book: 20 bids below and 20 asks above a drifting mid price. */
function priceFeed (): () => { data: { symbol: string, seq: number, bids: Array<[number, number]>, asks: Array<[number, number]> } } {
  let seq = 0
  let mid = 60_000
  return () => {
    seq++
    mid = Math.max(1000, mid + (Math.random() - 0.5) * 20)
    const level = (i: number, side: 1 | -1): [number, number] => [Math.round((mid + side * (i + 1) * 0.5) * 100) / 100, Math.round(Math.random() * 200) / 100 + 0.01]
    return {
      data: {
        symbol: 'BTC-USD',
        seq,
        bids: Array.from({ length: PRICE_LEVELS }, (_, i) => level(i, -1)),
        asks: Array.from({ length: PRICE_LEVELS }, (_, i) => level(i, 1))
      }
    }
  }
}

async function main (): Promise<void> {
  const host = process.env.HOST || '127.0.0.1'
  const port = readPort(process.env.PORT)
  let env
  try {
    env = optionsFromEnv(process.env)
  } catch (err) {
    fatal((err as Error).message)
  }
  let secret = process.env.WS_JWT_SECRET
  if (secret === undefined || secret === '') {
    secret = DEV_SECRET
    process.stderr.write('WARNING: WS_JWT_SECRET is not set; using a publicly known development secret. Anyone can forge tokens. Set WS_JWT_SECRET before exposing this server.\n')
  }
  const store = createStore(process.env)
  const priceIntervalMs = readPriceInterval(process.env.WS_PRICE_INTERVAL_MS)
  const sessions = seedSessions()
  const metrics = new MetricsRegistry()

  const app = Fastify({
    logger: { level: process.env.LOG_LEVEL || 'info' },
    requestTimeout: REQUEST_TIMEOUT_MS,
    // The plugin keeps `?token=` out of the logs for WebSocket upgrades; this does the same for
    // plain HTTP requests (a client that lost its Upgrade header, a mistyped URL), which only
    // the app itself can rewrite.
    rewriteUrl: (request) => withoutQueryToken(request.url ?? '/').url
  })
  await app.register(secureWs, {
    origins: env.origins ?? [`http://localhost:${port}`, `http://127.0.0.1:${port}`],
    jwt: { key: secret, algorithms: ['HS256'], clockToleranceMs: 5000 },
    limits: env.limits,
    ...(env.heartbeatIntervalMs === undefined ? {} : { heartbeatIntervalMs: env.heartbeatIntervalMs }),
    prometheus: { registry: metrics },
    // The contract gives SIGTERM 5 s to exit: 2 s of drain leaves room for a slow machine.
    shutdownTimeoutMs: 2000,
    ...(store === undefined ? {} : { store })
  })
  app.server.headersTimeout = HEADERS_TIMEOUT_MS

  app.get('/health', async () => ({ status: 'ok' }))
  app.get('/metrics', async (_request, reply) => reply.type(metrics.contentType).send(await metrics.metrics()))

  const page = readFileSync(join(__dirname, 'page.html'), 'utf8')
  app.get('/', async (_request, reply) => reply.type('text/html; charset=utf-8').send(page))
  // The page's client, fastify-secure-ws/client, bundled at start so a fresh clone needs no build step.
  const { code: clientBundle } = await bundleClient()
  app.get('/client.mjs', async (_request, reply) => reply.type('text/javascript; charset=utf-8').send(clientBundle))

  // The demo token route exists only outside production, so there it answers 404 like any
  // unknown URL, whatever the body.
  if (process.env.NODE_ENV !== 'production') {
    const signToken = createSigner({ key: secret, algorithm: 'HS256', expiresIn: TOKEN_LIFETIME_S * 1000 })
    app.post('/demo/token', {
      schema: {
        body: Type.Object({
          user: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }),
          scope: Type.Optional(Type.String({ pattern: '^[a-z ]{0,64}$' }))
        })
      }
    }, async (request) => {
      const { user, scope } = request.body as { user: string, scope?: string }
      return { token: signToken({ sub: user, ...(scope === undefined ? {} : { scope }) }) }
    })
  }

  app.secureWs.route({
    url: '/ws/sessions/:sessionId',
    resolveSession: ({ params }) => sessions.get(params.sessionId ?? ''),
    outbound: {
      pong: Type.Object({}),
      status: Type.Object({
        data: Type.Object({ id: Type.String(), owner: Type.String(), state: Type.String() })
      }),
      subscribed: Type.Object({ channel: Type.String() }),
      unsubscribed: Type.Object({ channel: Type.String() }),
      price: Type.Object({
        data: Type.Object({ symbol: Type.String(), seq: Type.Integer(), bids: PriceLevels, asks: PriceLevels })
      }),
      refreshed: Type.Object({ exp: Type.Integer() })
    },
    messages: (message) => ({
      ping: message((conn) => conn.send('pong', {})),
      get_status: message((conn) => conn.send('status', toStatus(conn.session))),
      subscribe: message({ payload: Channel }, (conn, { channel }) => {
        conn.subscribe(topicOf(channel, conn.session.id))
        conn.send('subscribed', { channel })
      }),
      unsubscribe: message({ payload: Channel }, (conn, { channel }) => {
        conn.unsubscribe(topicOf(channel, conn.session.id))
        conn.send('unsubscribed', { channel })
      }),
      // A fresh token on the open connection; one that fails any check closes it with 4401.
      refresh: message({ payload: Type.Object({ token: Type.String() }) }, async (conn, { token }) => {
        const user = await conn.refresh(token)
        if (user?.expiresAt !== undefined) conn.send('refreshed', { exp: Math.floor(user.expiresAt / 1000) })
      }),
      // Logout everywhere: this user's connections close with 4403 on every instance, and
      // their tokens issued until now are refused from now on.
      logout: message(async (conn) => {
        await app.secureWs.revokeUser(conn.user.id).catch((err: unknown) => {
          conn.log.error({ err, userId: conn.user.id }, 'logout not recorded in the store')
        })
      }),
      stop: message({ scopes: ['trade'] }, async (conn) => {
        const session = conn.session
        session.state = 'stopped'
        conn.send('status', toStatus(session))
        // Subscribers here already have it; other instances may be unreachable for a moment.
        await app.secureWs.publish(statusTopic(session.id), 'status', toStatus(session)).catch((err: unknown) => {
          conn.log.warn({ err, userId: conn.user.id }, 'status change not sent to other instances')
        })
      })
    })
  })

  // Every instance runs its own feed for its own subscribers.
  const nextPrice = priceFeed()
  const priceTimer = setInterval(() => {
    app.secureWs.publish(PRICES_TOPIC, 'price', nextPrice(), { local: true }).catch(() => {})
  }, priceIntervalMs)
  priceTimer.unref()

  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    clearInterval(priceTimer)
    app.log.info({ signal }, 'shutting down')
    app.close().then(() => process.exit(0), (err: unknown) => {
      app.log.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  }
  process.once('SIGTERM', () => stop('SIGTERM'))
  process.once('SIGINT', () => stop('SIGINT'))

  await app.listen({
    host,
    port,
    listenTextResolver: (address) => `fastify-secure-ws example listening on ${address}`
  })
}

main().catch((err: unknown) => fatal(err instanceof Error ? err.message : String(err)))
