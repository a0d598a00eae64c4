// Regression tests for what a review of the hostile-client work found; each is named after
// the behaviour it pins.
import { Writable } from 'node:stream'
import t from 'tap'
import Fastify from 'fastify'
import WebSocket from 'ws'
import secureWs, { memoryStore, type SecureWsAuditEvent, type SecureWsStore } from '../lib/index.js'
import { ORIGIN, SECRET, build, closeOf, connect, eventually, parseLogs, sign, testRoute, within } from './helpers.js'

/** Opens a ws client with extra headers; resolves with the HTTP status of a refused upgrade, or 101. */
async function statusOf (url: string, headers: Record<string, string>): Promise<number> {
  const ws = new WebSocket(url, ['bearer', sign('alice')], { origin: ORIGIN, headers })
  ws.on('error', () => {})
  try {
    return await within(new Promise<number>((resolve) => {
      ws.once('upgrade', () => resolve(101))
      ws.once('unexpected-response', (_request, response) => { resolve(response.statusCode ?? 0); response.resume() })
    }), 3000, 'the upgrade being answered')
  } finally {
    ws.terminate()
  }
}

t.test('behind a trusted proxy, a client cannot lock out the proxy\'s address by naming it in X-Forwarded-For', async (t) => {
  const app = Fastify({ trustProxy: true })
  await app.register(secureWs, { origins: [ORIGIN], jwt: { key: SECRET, algorithms: ['HS256'] }, limits: { authFailuresPerMinute: 2 } })
  app.secureWs.route(testRoute())
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const url = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws/alice-1`
  // The attacker's failures, forwarded as if they came from the proxy itself.
  for (let i = 0; i < 2; i++) {
    const bad = new WebSocket(`${url}?token=bad`, { origin: ORIGIN, headers: { 'x-forwarded-for': '127.0.0.1' } })
    bad.on('error', () => {})
    await new Promise((resolve) => bad.once('close', resolve))
  }
  t.equal(await statusOf(url, { 'x-forwarded-for': '127.0.0.1' }), 429, 'the address the failures came from is locked out')
  t.equal(await statusOf(url, { 'x-forwarded-for': '203.0.113.9' }), 101, 'a client behind the same proxy is not')
})

t.test('a lockout reached through a store that answers later is announced once, however many failures were in flight', async (t) => {
  const real = memoryStore()
  const later: SecureWsStore = {
    ...Object.fromEntries(['acquireSlot', 'releaseSlot', 'holdCounter', 'lockedOutUntil', 'revokeUser', 'revokedBefore', 'stats', 'close'].map((name) => [name, (real as any)[name].bind(real)])) as unknown as SecureWsStore,
    recordAuthFailure: async (address, limit) => {
      await new Promise((resolve) => setTimeout(resolve, 50))
      return real.recordAuthFailure(address, limit)
    }
  }
  const events: SecureWsAuditEvent[] = []
  const { url, logs } = await build(t, { options: { store: later, limits: { authFailuresPerMinute: 2 }, audit: (event) => { events.push(event) } } })
  const clients = await Promise.all(Array.from({ length: 8 }, () => connect(url('/ws/alice-1'), { token: 'bad' })))
  await Promise.all(clients.map((c) => closeOf(c)))
  await eventually(() => events.some((event) => event.type === 'lockedOut'))
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(events.filter((event) => event.type === 'lockedOut').length, 1, 'one audit event')
  t.equal(parseLogs(logs).filter((line) => line.msg === 'client address locked out after failed authentications').length, 1, 'one log line')
})

t.test('during a verifier outage, an upgrade without a token does not count as the verifier answering', async (t) => {
  let down = true
  const { url, logs } = await build(t, {
    options: {
      jwt: undefined,
      limits: { authFailuresPerMinute: 0 },
      verifyToken: () => {
        if (down) throw new Error('identity provider down')
        return { id: 'alice', scopes: [] }
      }
    }
  })
  await closeOf(await connect(url('/ws/alice-1'), { token: 'x' }))
  await closeOf(await connect(url('/ws/alice-1')))
  await closeOf(await connect(url('/ws/alice-1'), { token: 'x' }))
  const lines = parseLogs(logs)
  t.equal(lines.filter((line) => line.msg?.startsWith('verifyToken failed')).length, 1, 'the outage is logged once')
  t.equal(lines.filter((line) => line.msg === 'verifyToken answers again').length, 0, 'no false recovery')
  down = false
  const c = await connect(url('/ws/alice-1'), { token: 'x' })
  t.ok(await c.admitted())
  await c.close()
})

t.test('an upgrade whose admission does not decide within admissionTimeoutMs is refused with 1013 and stops counting as pending', async (t) => {
  let lateUser: ((user: { id: string, scopes: string[] }) => void) | undefined
  const { url, app } = await build(t, {
    options: {
      jwt: undefined,
      admissionTimeoutMs: 300,
      limits: { pendingUpgradesPerIp: 2 },
      verifyToken: (token) => {
        if (token === 'hang') return new Promise(() => {})
        if (token === 'late') return new Promise((resolve) => { lateUser = resolve })
        return { id: 'alice', scopes: [] }
      }
    }
  })
  const stuck = await Promise.all(['hang', 'late'].map((token) => connect(url('/ws/alice-1'), { token })))
  for (const c of stuck) t.same(await closeOf(c), { code: 1013, reason: 'Try again later' })
  const c = await connect(url('/ws/alice-1'), { token: 'ok' })
  t.ok(await c.admitted(), 'the address is not held at its cap by upgrades that timed out')
  await c.close()
  // The late verifier answers now; the slot admission then takes is let go of at once.
  lateUser!({ id: 'alice', scopes: [] })
  t.ok(await eventually(() => Object.keys(app.secureWs.stats().store.slots).length === 0), 'no slot held for the upgrade that timed out')
  t.equal(app.secureWs.stats().refusals.admissionTimeout, 2)
})

t.test('a connection the app\'s own code closes is audited as closed by the app, with its code', async (t) => {
  const events: SecureWsAuditEvent[] = []
  const route = testRoute()
  const { url } = await build(t, {
    options: { audit: (event) => { events.push(event) } },
    route: { ...route, messages: { ...(route.messages as object), bye: { handler: (conn: { close: (code: number, reason: string) => void }) => { conn.close(4000, 'bye') } } } as never }
  })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  c.send({ type: 'bye' })
  t.same(await closeOf(c), { code: 4000, reason: 'bye' })
  await eventually(() => events.some((event) => event.type === 'closed'))
  t.match(events.find((event) => event.type === 'closed'), { kind: 'app', code: 4000, userId: 'alice' })
})

t.test('the logs of all this hold no token', async (t) => {
  const logs: string[] = []
  const app = Fastify({ logger: { level: 'info', stream: new Writable({ write (chunk, _enc, cb) { logs.push(chunk.toString()); cb() } }) } })
  await app.register(secureWs, { origins: [ORIGIN], jwt: { key: SECRET, algorithms: ['HS256'] } })
  app.secureWs.route(testRoute())
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const token = sign('alice')
  const c = await connect(`ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws/alice-1`, { token })
  await c.close()
  t.notOk(logs.join('\n').includes(token))
})
