/**
 * The typed client (`fastify-secure-ws/client`) against a real server: a Fastify app with the
 * plugin on 127.0.0.1, the client driving `ws` as its WebSocket. Each test names a close the
 * server really sends (rate limit, logout, shutdown, refused token, failing verifier) or sends
 * one through the public `disconnectUser`, and checks what the client makes of it.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { Type } from '@sinclair/typebox'
import WebSocket from 'ws'
import t from 'tap'
import secureWs, { DEFAULT_CLOSE_REASONS, defineRoute, type RouteContract, type SecureWsOptions } from '../lib/index.js'
import { createClient, fullJitter, type ClientOptions, type SecureWsClient, type SecureWsCloseError } from '../lib/client/index.js'
import { ORIGIN, SECRET, SESSIONS, build, eventually, sign } from './helpers.js'

const nowS = (): number => Math.floor(Date.now() / 1000)
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** The route the client talks to; `upgrades` records each upgrade's Sec-WebSocket-Protocol header. */
function chatRoute (upgrades: Array<string | undefined> = []) {
  return defineRoute({
    url: '/ws/:sessionId',
    resolveSession: ({ params, request }) => {
      upgrades.push(request.headers['sec-websocket-protocol'])
      return SESSIONS.get(params.sessionId ?? '')
    },
    outbound: {
      said: Type.Object({ text: Type.String(), from: Type.String() }),
      refreshed: Type.Object({ exp: Type.Integer() })
    },
    messages: (message) => ({
      say: message({ payload: Type.Object({ text: Type.String({ maxLength: 100 }) }) }, (conn, { text }) => {
        conn.send('said', { text, from: conn.user.id })
      }),
      refresh: message({ payload: Type.Object({ token: Type.String() }) }, async (conn, { token }) => {
        const user = await conn.refresh(token)
        if (user?.expiresAt !== undefined) conn.send('refreshed', { exp: Math.floor(user.expiresAt / 1000) })
      })
    })
  })
}

type Chat = RouteContract<ReturnType<typeof chatRoute>>

/** `ws` as a browser would use it: a browser sends its page's Origin, which the server checks. */
class BrowserLikeWebSocket extends WebSocket {
  constructor (url: string, protocols: string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

interface Harness {
  client: SecureWsClient<Chat>
  /** Tokens handed to the client, in order. */
  tokens: string[]
  opens: number
  closes: SecureWsCloseError[]
  errors: unknown[]
  said: unknown[]
  /** Attempt numbers the client asked the backoff for, and the delays it got. */
  backoffs: Array<[attempt: number, delay: number]>
}

interface StartOptions extends Partial<ClientOptions<Chat>> {
  /** The n-th token the client gets (0 first); alice's, valid a minute, by default. */
  token?: (n: number) => string
  delays?: (attempt: number) => number
}

/** A client of `url` whose every event is recorded; closed in teardown. */
function start (t: tap.Test, url: string, { token = () => sign('alice'), delays = fullJitter(10, 200), ...options }: StartOptions = {}): Harness {
  const h: Harness = { client: undefined!, tokens: [], opens: 0, closes: [], errors: [], said: [], backoffs: [] }
  h.client = createClient<Chat>({
    url,
    WebSocket: BrowserLikeWebSocket,
    getToken: async () => {
      const next = token(h.tokens.length)
      h.tokens.push(next)
      return next
    },
    backoff: (attempt) => {
      const delay = delays(attempt)
      h.backoffs.push([attempt, delay])
      return delay
    },
    onOpen: () => { h.opens++ },
    onClose: (error) => { h.closes.push(error) },
    onError: (error) => { h.errors.push(error) },
    ...options
  })
  h.client.on('said', (frame) => { h.said.push(frame) })
  t.teardown(() => h.client.close())
  return h
}

/** Waits for `predicate`, failing the test with `what` if it does not hold within 5 s. */
async function until (t: tap.Test, what: string, predicate: () => boolean, ms = 5000): Promise<void> {
  if (!(await eventually(predicate, ms))) throw new Error(`${what}: not within ${ms} ms`)
  t.pass(what)
}

/**
 * Sends `say` and waits for the `said` it is answered with: the connection is admitted and
 * usable. A refused connection opens too (and closes at once), so a `say` that the close
 * overtakes is sent again on the next connection.
 */
async function roundTrip (t: tap.Test, h: Harness, text: string): Promise<void> {
  const before = h.said.length
  const deadline = Date.now() + 5000
  while (h.said.length === before && Date.now() < deadline) {
    await until(t, `open before "${text}"`, () => h.client.state === 'open', deadline - Date.now())
    const closes = h.closes.length
    h.client.send('say', { text })
    await eventually(() => h.said.length > before || h.closes.length > closes, deadline - Date.now())
  }
  if (h.said.length === before) throw new Error(`"${text}" not answered within 5 s`)
  t.strictSame(h.said[before], { type: 'said', text, from: 'alice' }, `"${text}" answered`)
}

/** What the tests compare of a close: code, reason, kind, whether the client comes back. */
const closeOf = (e: SecureWsCloseError | undefined) => e && ({ code: e.code, reason: e.reason, kind: e.kind, willReconnect: e.willReconnect })
const frame = (kind: keyof typeof DEFAULT_CLOSE_REASONS) => ({ code: DEFAULT_CLOSE_REASONS[kind].code, reason: DEFAULT_CLOSE_REASONS[kind].reason })

t.test('typed round trip over the bearer subprotocol; error frames reach on("error")', async (t) => {
  const upgrades: Array<string | undefined> = []
  const { url } = await build(t, { route: chatRoute(upgrades) })
  const h = start(t, url('/ws/alice-1'))
  t.equal(h.client.state, 'connecting')
  t.equal(h.client.send('say', { text: 'too early' }), false, 'nothing is sent, or queued, before open')
  await roundTrip(t, h, 'hello')
  t.strictSame(upgrades.map((header) => header?.split(',').map((protocol) => protocol.trim())), [['bearer', h.tokens[0]]], 'the token went in Sec-WebSocket-Protocol, after bearer')

  const errors: unknown[] = []
  const off = h.client.on('error', (frame) => { errors.push(frame) })
  h.client.send('say', { text: 'x'.repeat(101) })
  await until(t, 'error frame', () => errors.length === 1)
  t.strictSame(errors, [{ type: 'error', message: 'Invalid payload: /text Expected string length less or equal to 100' }])
  off()
  h.client.send('say', { text: 'y'.repeat(101) })
  await roundTrip(t, h, 'after the error')
  t.equal(errors.length, 1, 'a removed listener hears nothing more')

  await h.client.close()
  t.equal(h.client.state, 'closed')
  t.strictSame(h.closes.map(closeOf), [{ code: 1000, reason: '', kind: 'normal', willReconnect: false }])
  t.equal(h.client.send('say', { text: 'after close' }), false)
  t.strictSame(h.errors, [])
})

t.test('refused with 1013 while the verifier is down: retried with growing backoff until admitted', async (t) => {
  let verifications = 0
  const { app, url } = await build(t, {
    route: chatRoute(),
    options: {
      jwt: undefined,
      verifyToken: () => {
        if (++verifications <= 3) throw new Error('identity provider unreachable')
        return { id: 'alice', scopes: [] }
      }
    } as Partial<SecureWsOptions>,
    logLevel: 'fatal'
  })
  const h = start(t, url('/ws/alice-1'))
  await roundTrip(t, h, 'admitted at last')
  const tryAgain = { ...frame('authUnavailable'), kind: 'tryAgainLater', willReconnect: true }
  t.strictSame(h.closes.map(closeOf), [tryAgain, tryAgain, tryAgain])
  t.strictSame(h.backoffs.map(([attempt]) => attempt), [0, 1, 2], 'each refusal is a further attempt')
  h.backoffs.forEach(([attempt, delay], i) => {
    t.ok(delay >= 0 && delay < 10 * 2 ** attempt, `delay ${delay} under the cap of attempt ${attempt}`)
    t.equal(h.closes[i]!.retryInMs, delay, 'the close error tells the delay')
  })
  t.equal(h.tokens.length, 4, 'a token per attempt')

  // Admitted and heard from: the next drop starts the backoff over.
  await app.secureWs.disconnectUser('alice', 1013, 'Slow consumer')
  await until(t, 'slow-consumer close', () => h.closes.length === 4)
  await roundTrip(t, h, 'back after the slow-consumer close')
  t.strictSame(closeOf(h.closes[3]), { ...frame('slowConsumer'), kind: 'slowConsumer', willReconnect: true })
  t.strictSame(h.backoffs[3]?.[0], 0, 'backoff restarted at attempt 0')
})

/** The plugin and chat route on 127.0.0.1:`port` (0: any free port). */
async function serve (port = 0): Promise<{ app: FastifyInstance, port: number }> {
  const app = Fastify()
  await app.register(secureWs, { origins: [ORIGIN], jwt: { key: SECRET, algorithms: ['HS256'] } })
  app.secureWs.route(chatRoute())
  await app.listen({ port, host: '127.0.0.1' })
  return { app, port: (app.server.address() as { port: number }).port }
}

t.test('server restart: 1001, then connection refused (1006) with growing backoff, then back', async (t) => {
  const first = await serve()
  t.teardown(() => first.app.close())
  const h = start(t, `ws://127.0.0.1:${first.port}/ws/alice-1`, { delays: fullJitter(20, 200) })
  await roundTrip(t, h, 'before the restart')
  await first.app.close()
  await until(t, 'two refused reconnects', () => h.closes.length >= 3)
  const second = await serve(first.port)
  t.teardown(() => second.app.close())
  await roundTrip(t, h, 'after the restart')

  t.strictSame(closeOf(h.closes[0]), { ...frame('shuttingDown'), kind: 'shuttingDown', willReconnect: true })
  const lost = h.closes.slice(1)
  t.ok(lost.length >= 2)
  t.strictSame(lost.map(closeOf), lost.map(() => ({ code: 1006, reason: '', kind: 'connectionLost', willReconnect: true })), 'nobody listening: 1006')
  t.strictSame(h.backoffs.map(([attempt]) => attempt), h.closes.map((_, i) => i), 'attempts 0, 1, 2, ... until admitted')
  t.equal(h.opens, 2)
})

t.test('no reconnect after 1008: rate limit exceeded', async (t) => {
  const { app, url } = await build(t, { route: chatRoute(), options: { limits: { messagesPerSecond: 2 } } })
  // A retry would come at once: if the client made one, the token count below would show it.
  const h = start(t, url('/ws/alice-1'), { delays: () => 0 })
  const errors: unknown[] = []
  h.client.on('error', (frame) => { errors.push(frame) })
  await until(t, 'open', () => h.client.state === 'open')
  for (const text of ['one', 'two', 'three']) h.client.send('say', { text })
  await until(t, 'closed', () => h.client.state === 'closed')
  t.strictSame(errors, [{ type: 'error', message: 'Rate limit exceeded. Connection closed.' }])
  t.strictSame(h.closes.map(closeOf), [{ ...frame('rateLimited'), kind: 'rateLimited', willReconnect: false }])
  await sleep(300)
  t.equal(h.tokens.length, 1, 'no further attempt')
  t.equal(app.secureWs.stats().connections, 0)
})

t.test('no reconnect after 1008 at connect: origin not allowed', async (t) => {
  const { url } = await build(t, { route: chatRoute() })
  // Plain `ws` sends no Origin: refused like a page from a foreign site.
  const h = start(t, url('/ws/alice-1'), { WebSocket, delays: () => 0 })
  await until(t, 'closed', () => h.client.state === 'closed')
  t.strictSame(h.closes.map(closeOf), [{ ...frame('originNotAllowed'), kind: 'originNotAllowed', willReconnect: false }])
  await sleep(300)
  t.equal(h.tokens.length, 1, 'no further attempt')
})

t.test('no reconnect after 4403: logged out everywhere', async (t) => {
  const { app, url } = await build(t, { route: chatRoute() })
  const h = start(t, url('/ws/alice-1'), { delays: () => 0 })
  await roundTrip(t, h, 'before logout')
  await app.secureWs.revokeUser('alice')
  await until(t, 'closed', () => h.client.state === 'closed')
  t.strictSame(h.closes.map(closeOf), [{ ...frame('loggedOut'), kind: 'loggedOut', willReconnect: false }])
  await sleep(300)
  t.equal(h.tokens.length, 1, 'no further attempt')
})

t.test('every server close through disconnectUser: reconnect or stop as PROTOCOL.md says', async (t) => {
  const cases: Array<[kind: keyof typeof DEFAULT_CLOSE_REASONS, willReconnect: boolean]> = [
    ['shuttingDown', true],
    ['internalError', true],
    ['slowConsumer', true],
    ['heartbeatTimeout', true],
    ['accessDenied', false],
    ['tooManyConnections', false],
    ['messageTooBig', false],
    ['disconnected', false]
  ]
  // One user connects and sends again and again here: limits out of the way.
  const { app, url } = await build(t, { route: chatRoute(), options: { limits: { messagesPerSecond: 1000, messagesPerMinute: 10_000 } } })
  for (const [kind, willReconnect] of cases) {
    const h = start(t, url('/ws/alice-1'), { delays: () => 0 })
    await roundTrip(t, h, kind)
    const { code, reason } = DEFAULT_CLOSE_REASONS[kind]
    await app.secureWs.disconnectUser('alice', code, reason)
    await until(t, `${kind} seen`, () => h.closes.length === 1)
    t.strictSame(closeOf(h.closes[0]), { code, reason, kind, willReconnect })
    if (willReconnect) await roundTrip(t, h, `${kind}: back`)
    else t.equal(h.client.state, 'closed')
    await h.client.close()
  }
})

t.test('4401 at connect: one retry with a fresh token, then stop', async (t) => {
  const { url } = await build(t, { route: chatRoute() })
  const h = start(t, url('/ws/alice-1'), { token: (n) => `not-a-jwt-${n}`, delays: () => 0 })
  await until(t, 'closed', () => h.client.state === 'closed')
  const invalid = { ...frame('invalidToken'), kind: 'invalidToken' }
  t.strictSame(h.closes.map(closeOf), [{ ...invalid, willReconnect: true }, { ...invalid, willReconnect: false }])
  t.strictSame(h.tokens, ['not-a-jwt-0', 'not-a-jwt-1'], 'the retry asked for a fresh token')
  await sleep(300)
  t.equal(h.tokens.length, 2, 'no third attempt')
})

t.test('4401 at connect, then a good fresh token: admitted', async (t) => {
  const { url } = await build(t, { route: chatRoute() })
  const h = start(t, url('/ws/alice-1'), { token: (n) => n === 0 ? sign('alice', { exp: nowS() - 10 }) : sign('alice') })
  await roundTrip(t, h, 'with the fresh token')
  t.strictSame(h.closes.map(closeOf), [{ ...frame('invalidToken'), kind: 'invalidToken', willReconnect: true }])
})

t.test('token expiry on an admitted connection (no refresh): each time one retry with a fresh token', async (t) => {
  const { url } = await build(t, { route: chatRoute() })
  const h = start(t, url('/ws/alice-1'), { token: () => sign('alice', { exp: nowS() + 2 }) })
  await roundTrip(t, h, 'first token')
  await until(t, 'first expiry', () => h.closes.length === 1)
  await roundTrip(t, h, 'second token')
  await until(t, 'second expiry', () => h.closes.length === 2)
  await roundTrip(t, h, 'third token')
  const expired = { ...frame('tokenExpired'), kind: 'invalidToken', willReconnect: true }
  t.strictSame(h.closes.map(closeOf), [expired, expired], 'an admitted connection earns its 4401 retry again')
  t.equal(h.tokens.length, 3)
})

t.test('refresh: the connection outlives its first token without reconnecting', async (t) => {
  const { url } = await build(t, { route: chatRoute() })
  const firstExp = nowS() + 2
  const laterExp = nowS() + 60
  const h = start(t, url('/ws/alice-1'), {
    refresh: true,
    token: (n) => sign('alice', { exp: n === 0 ? firstExp : laterExp })
  })
  const refreshed: unknown[] = []
  h.client.on('refreshed', (frame) => { refreshed.push(frame) })
  await roundTrip(t, h, 'first token')
  await until(t, 'refreshed', () => refreshed.length === 1)
  t.strictSame(refreshed, [{ type: 'refreshed', exp: laterExp }])
  // The server closes at exp (checked every 250 ms, no clock tolerance here): wait past it.
  await until(t, 'past the first token\'s exp', () => Date.now() > firstExp * 1000 + 1000, 4000)
  await roundTrip(t, h, 'past the first exp')
  t.equal(h.opens, 1, 'one connection all along')
  t.strictSame(h.closes, [])
  t.equal(h.tokens.length, 2, 'the connect token and the refresh token')
  t.strictSame(h.errors, [])
})

t.test('a refresh the server refuses closes 4401; the client comes back once with a fresh token', async (t) => {
  const { url } = await build(t, { route: chatRoute() })
  // The refresh token names another user: refused, as any token for the wrong user is.
  const tokens = [sign('alice', { exp: nowS() + 2 }), sign('bob', { exp: nowS() + 60 }), sign('alice', { exp: nowS() + 60 })]
  const h = start(t, url('/ws/alice-1'), { refresh: true, token: (n) => tokens[n] ?? sign('alice') })
  await roundTrip(t, h, 'first token')
  await until(t, 'refused refresh', () => h.closes.length === 1)
  t.strictSame(h.closes.map(closeOf), [{ ...frame('tokenExpired'), kind: 'invalidToken', willReconnect: true }])
  await roundTrip(t, h, 'after the retry')
  t.strictSame(h.tokens, tokens)
})

t.test('a getToken that fails is reported and retried with backoff', async (t) => {
  const { url } = await build(t, { route: chatRoute() })
  let calls = 0
  const h = start(t, url('/ws/alice-1'), {
    getToken: () => {
      if (++calls <= 2) throw new Error('token endpoint down')
      return sign('alice')
    }
  })
  await roundTrip(t, h, 'with the third token')
  t.strictSame(h.errors.map((e) => (e as Error).message), ['token endpoint down', 'token endpoint down'])
  t.strictSame(h.backoffs.map(([attempt]) => attempt), [0, 1])
  t.strictSame(h.closes, [], 'no socket was opened, so none closed')
})

t.test('createClient without a WebSocket to use throws', async (t) => {
  const platform = (globalThis as { WebSocket?: unknown }).WebSocket
  t.teardown(() => { (globalThis as { WebSocket?: unknown }).WebSocket = platform })
  ;(globalThis as { WebSocket?: unknown }).WebSocket = undefined
  t.throws(() => createClient({ url: 'ws://127.0.0.1:1/', getToken: () => 'x' }), { name: 'TypeError', message: 'no WebSocket: pass options.WebSocket (in Node 20, the ws package)' })
})
