import t from 'tap'
import type { MessageDefinition } from '../lib/index.js'
import { Client, SESSIONS, type Session, build, connect, sign, testRoute, closeOf, refusalLines } from './helpers.js'

const ACCESS_DENIED = { code: 1008, reason: 'Access denied' }
const INTERNAL_ERROR = { code: 1011, reason: 'Internal server error' }

/**
 * The fixture route with a `record` message and a `resolveSession` that both note every
 * call, so a test can tell whether anything of a refused client ever ran.
 */
function recordingRoute (): { route: ReturnType<typeof testRoute>, handled: string[], resolved: string[] } {
  const handled: string[] = []
  const resolved: string[] = []
  const route = testRoute()
  const messages = route.messages as Record<string, MessageDefinition<any, Session, any>>
  return {
    handled,
    resolved,
    route: {
      ...route,
      resolveSession: ({ params, user }) => {
        resolved.push(`${user.id}->${params.sessionId}`)
        return SESSIONS.get(params.sessionId!)
      },
      messages: {
        ...messages,
        record: { handler: (conn) => { handled.push(`${conn.user.id}@${conn.session.id}`); conn.send('pong', {}) } }
      }
    }
  }
}

/** A client that sends `record` from inside its own `open` handler, before anything else can happen. */
function clientSendingOnOpen (url: string, options: ConstructorParameters<typeof Client>[1]): Client {
  const client = new Client(url, options)
  client.ws.once('open', () => client.send({ type: 'record' }))
  return client
}

t.test('alice connecting to her own session alice-1 is admitted', async (t) => {
  const { url, app } = await build(t)
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  c.send({ type: 'session' })
  t.same(await c.next(), { type: 'session', data: { id: 'alice-1', ownerId: 'alice' } }, 'the resolved session is bound, secret dropped')
  t.same(app.secureWs.stats().users, { alice: 1 })
  await c.close()
})

t.test("alice connecting to bob's session bob-1 is refused with 1008 Access denied", async (t) => {
  const { url, app } = await build(t)
  for (const via of ['query', 'protocol'] as const) {
    const c = await connect(url('/ws/bob-1'), { token: sign('alice'), via })
    t.equal(await c.opened, true, 'the upgrade completes so the client can read the reason')
    t.same(await closeOf(c), ACCESS_DENIED)
  }
  t.same(app.secureWs.stats().users, {})
  t.same(app.secureWs.stats().store.slots, {}, 'no slot is taken for a refused session')
})

t.test('an unknown session is refused with 1008 Access denied', async (t) => {
  const { url } = await build(t)
  const c = await connect(url('/ws/nope-1'), { token: sign('alice') })
  t.same(await closeOf(c), ACCESS_DENIED)
})

t.test('a session resolved to null is refused with 1008 Access denied', async (t) => {
  const { url } = await build(t, { route: { resolveSession: async () => null } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.same(await closeOf(c), ACCESS_DENIED)
})

t.test('an async resolveSession that finds the session admits its owner', async (t) => {
  const { url } = await build(t, { route: { resolveSession: async ({ params }) => SESSIONS.get(params.sessionId!) } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  await c.close()
})

t.test('resolveSession that throws closes with 1011 Internal server error, and the server keeps serving', async (t) => {
  let fail = true
  const { url } = await build(t, {
    route: {
      resolveSession: ({ params }) => {
        if (fail) throw new Error('db connection string postgres://admin:pw@db/internal')
        return SESSIONS.get(params.sessionId!)
      }
    }
  })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.same(await closeOf(c), INTERNAL_ERROR)
  fail = false
  const after = await connect(url('/ws/alice-1'), { token: sign('alice') })
  after.send({ type: 'whoami' })
  t.same(await after.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  await after.close()
})

t.test('resolveSession that rejects closes with 1011 Internal server error', async (t) => {
  const { url } = await build(t, { route: { resolveSession: async () => { throw new Error('db down') } } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.same(await closeOf(c), INTERNAL_ERROR)
})

t.test('messages sent by a refused client are never processed', async (t) => {
  const { route, handled, resolved } = recordingRoute()
  const { url } = await build(t, { route })

  t.test('origin refused: neither resolveSession nor the handler runs', async (t) => {
    const c = clientSendingOnOpen(url('/ws/alice-1'), { token: sign('alice'), origin: 'http://evil.test' })
    t.equal(await c.opened, true)
    t.same(await closeOf(c), { code: 1008, reason: 'Origin not allowed' })
    t.same(resolved, [])
    t.same(handled, [])
  })

  t.test('token refused: neither resolveSession nor the handler runs', async (t) => {
    const c = clientSendingOnOpen(url('/ws/alice-1'), { token: 'garbage', via: 'protocol' })
    t.equal(await c.opened, true)
    t.same(await closeOf(c), { code: 4401, reason: 'Invalid or expired authentication token' })
    t.same(resolved, [])
    t.same(handled, [])
  })

  t.test("another user's session: the handler never runs", async (t) => {
    const c = clientSendingOnOpen(url('/ws/bob-1'), { token: sign('alice') })
    t.equal(await c.opened, true)
    t.same(await closeOf(c), ACCESS_DENIED)
    t.same(resolved, ['alice->bob-1'])
    t.same(handled, [])
  })

  t.test('unknown session: the handler never runs', async (t) => {
    const c = clientSendingOnOpen(url('/ws/nope-1'), { token: sign('alice') })
    t.same(await closeOf(c), ACCESS_DENIED)
    t.same(resolved, ['alice->bob-1', 'alice->nope-1'])
    t.same(handled, [])
  })

  await t.test('an admitted client afterwards is served, and only its message was handled', async (t) => {
    const c = await connect(url('/ws/bob-1'), { token: sign('bob') })
    c.send({ type: 'record' })
    t.same(await c.next(), { type: 'pong' })
    t.same(handled, ['bob@bob-1'])
    await c.close()
  })
})

t.test('a message sent by an admitted client in its open handler is processed', async (t) => {
  const { route, handled } = recordingRoute()
  const { url } = await build(t, { route })
  for (const via of ['query', 'protocol'] as const) {
    const c = clientSendingOnOpen(url('/ws/alice-1'), { token: sign('alice'), via })
    t.equal(await c.opened, true)
    t.same(await c.next(), { type: 'pong' })
    await c.close()
  }
  t.same(handled, ['alice@alice-1', 'alice@alice-1'])
})

t.test('a message sent in the open handler is processed even when resolveSession is slow', async (t) => {
  const handled: string[] = []
  const route = testRoute()
  const messages = route.messages as Record<string, MessageDefinition<any, Session, any>>
  const { url } = await build(t, {
    route: {
      resolveSession: async ({ params }) => {
        await new Promise((resolve) => setTimeout(resolve, 50))
        return SESSIONS.get(params.sessionId!)
      },
      messages: { ...messages, record: { handler: (conn) => { handled.push(conn.user.id); conn.send('pong', {}) } } }
    }
  })
  const c = clientSendingOnOpen(url('/ws/alice-1'), { token: sign('alice') })
  t.same(await c.next(), { type: 'pong' })
  t.same(handled, ['alice'])
  await c.close()
})

t.test('each session refusal writes exactly one log line with the refusal, user id and ip', async (t) => {
  const { url, logs } = await build(t)
  t.same(await closeOf(await connect(url('/ws/bob-1'), { token: sign('alice') })), ACCESS_DENIED)
  t.same(await closeOf(await connect(url('/ws/nope-1'), { token: sign('bob') })), ACCESS_DENIED)
  const lines = refusalLines(logs)
  t.equal(lines.length, 2)
  t.match(lines[0], { refusal: 'accessDenied', userId: 'alice', ip: '127.0.0.1' })
  t.match(lines[1], { refusal: 'accessDenied', userId: 'bob', ip: '127.0.0.1' })
})

t.test('a failing resolveSession is logged once as internalError with the user id', async (t) => {
  const { url, logs } = await build(t, { route: { resolveSession: () => { throw new Error('db down') } } })
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice') })), INTERNAL_ERROR)
  const lines = refusalLines(logs)
  t.equal(lines.length, 1)
  t.match(lines[0], { refusal: 'internalError', userId: 'alice', ip: '127.0.0.1' })
})
