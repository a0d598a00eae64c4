import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { memoryStore, type SecureWsOptions, type SecureWsStore, type SecureWsUser } from '../lib/index.js'
import { Client, build, connect, eventually, rawUpgrade, sign, silentPeer, within } from './helpers.js'

const SHUTTING_DOWN = { code: 1001, reason: 'Server shutting down' }
const DISCONNECTED = { code: 4403, reason: 'Disconnected by the server' }
const EXPIRED = { code: 4401, reason: 'Invalid or expired authentication token' }
const RATE_LIMITED = { code: 1008, reason: 'Rate limit exceeded' }

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

function isIdle (app: FastifyInstance): boolean {
  const s = app.secureWs.stats()
  return s.connections === 0 && s.topics === 0 && s.timers === 0 &&
    Object.keys(s.users).length === 0 && Object.keys(s.store.slots).length === 0
}

/** Waits for the plugin to let go of everything, then asserts every count is back to nothing. */
async function expectIdle (t: Test, app: FastifyInstance, message = 'nothing is left behind'): Promise<void> {
  await eventually(() => isIdle(app))
  const s = app.secureWs.stats()
  t.same(
    { connections: s.connections, users: s.users, topics: s.topics, timers: s.timers, slots: s.store.slots },
    { connections: 0, users: {}, topics: 0, timers: 0, slots: {} },
    message
  )
}

function activeTimeouts (): number {
  return process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length
}

/** A memory store that records the slot calls admission makes, so a test can wait for them. */
function recordingStore (): { store: SecureWsStore, acquired: Array<{ id: string, ok: boolean }>, released: string[], onRelease: Promise<string> } {
  const real = memoryStore()
  const acquired: Array<{ id: string, ok: boolean }> = []
  const released: string[] = []
  let signal: (id: string) => void = () => {}
  const onRelease = new Promise<string>((resolve) => { signal = resolve })
  const store: SecureWsStore = {
    recordAuthFailure: (address, limit) => real.recordAuthFailure(address, limit),
    lockedOutUntil: (address) => real.lockedOutUntil(address),
    revokeUser: (userId, before, ttl) => real.revokeUser(userId, before, ttl),
    revokedBefore: (userId) => real.revokedBefore(userId),
    async acquireSlot (key, connectionId, limit) {
      const ok = await real.acquireSlot(key, connectionId, limit)
      acquired.push({ id: connectionId, ok })
      return ok
    },
    async releaseSlot (key, connectionId) {
      await real.releaseSlot(key, connectionId)
      released.push(connectionId)
      signal(connectionId)
    },
    holdCounter: (key, limits) => real.holdCounter(key, limits),
    stats: () => real.stats(),
    close: () => real.close()
  }
  return { store, acquired, released, onRelease }
}

t.test('after clients disconnect, stats() is back to nothing', async (t) => {
  const { app, url } = await build(t)
  const a1 = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const a2 = await connect(url('/ws/alice-1'), { token: sign('alice'), via: 'protocol' })
  const b = await connect(url('/ws/bob-1'), { token: sign('bob') })
  for (const c of [a1, a2, b]) {
    c.send({ type: 'ping' })
    t.same(await c.next(), { type: 'pong' })
  }
  const open = app.secureWs.stats()
  t.equal(open.connections, 3)
  t.same(open.users, { alice: 2, bob: 1 })
  t.equal(open.timers, 3, 'each JWT connection holds an expiry timer while open')
  t.same(open.store.slots, { alice: 2, bob: 1 })

  await Promise.all([a1.close(), a2.close(), b.close()])
  await expectIdle(t, app)
})

t.test('a connection that subscribed to topics leaves no topic behind', async (t) => {
  const { app, url } = await build(t)
  const a = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const b = await connect(url('/ws/bob-1'), { token: sign('bob') })
  for (const topic of ['news', 'prices']) {
    a.send({ type: 'subscribe', payload: { topic } })
    t.same(await a.next(), { type: 'pong' })
  }
  b.send({ type: 'subscribe', payload: { topic: 'news' } })
  t.same(await b.next(), { type: 'pong' })
  t.equal(app.secureWs.stats().topics, 2)

  await a.close()
  await eventually(() => app.secureWs.stats().connections === 1)
  t.equal(app.secureWs.stats().topics, 1, 'the topic only alice held is gone; news still has bob')
  t.equal(await app.secureWs.publish('prices', 'news', { text: 'x' }), 0)
  t.equal(await app.secureWs.publish('news', 'news', { text: 'still here' }), 1)
  t.same(await b.next(), { type: 'news', text: 'still here' })

  await b.close()
  await expectIdle(t, app)
  t.equal(await app.secureWs.publish('news', 'news', { text: 'nobody' }), 0)
})

type StoreFault = 'holdThrows' | 'holdReturnsNothing' | 'consumeThrows' | 'releaseThrows' | 'releaseSlotThrows' | 'none'

/** A memory store that fails in the one way `fault()` names at the time of the call. */
function faultyStore (fault: () => StoreFault): SecureWsStore {
  const real = memoryStore()
  return {
    acquireSlot: (key, id, limit) => real.acquireSlot(key, id, limit),
    recordAuthFailure: (address, limit) => real.recordAuthFailure(address, limit),
    lockedOutUntil: (address) => real.lockedOutUntil(address),
    revokeUser: (userId, before, ttl) => real.revokeUser(userId, before, ttl),
    revokedBefore: (userId) => real.revokedBefore(userId),
    releaseSlot (key, id) {
      real.releaseSlot(key, id)
      if (fault() === 'releaseSlotThrows') throw new Error('slot backend down')
    },
    holdCounter (key, limits) {
      if (fault() === 'holdThrows') throw new Error('counter backend down')
      if (fault() === 'holdReturnsNothing') return undefined as unknown as ReturnType<SecureWsStore['holdCounter']>
      const counter = real.holdCounter(key, limits)
      return {
        consume: () => {
          if (fault() === 'consumeThrows') throw new Error('counter backend down')
          return counter.consume()
        },
        release: () => {
          counter.release()
          if (fault() === 'releaseThrows') throw new Error('release failed')
        }
      }
    },
    stats: () => real.stats(),
    close: () => real.close()
  }
}

t.test('a custom store that fails costs no slot, no counter and no crash', async (t) => {
  let fault: StoreFault = 'none'
  const { app, url, logs } = await build(t, { options: { store: faultyStore(() => fault), limits: { connectionsPerUser: 1 } } })
  const logged = (text: string): number => logs.filter((line) => line.includes(text) && line.includes('"userId":"alice"')).length

  for (const failing of ['holdThrows', 'holdReturnsNothing'] as const) {
    fault = failing
    const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
    t.same(await c.closed, { code: 1011, reason: 'Internal server error' }, `${failing}: closed with 1011`)
    await expectIdle(t, app, `${failing}: the slot taken for it is free again`)
  }
  t.equal(logged('store could not hold a message counter'), 2, 'each logged once, with the user id')

  fault = 'consumeThrows'
  const counting = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.equal(await counting.opened, true, 'the upgrade completes')
  counting.send({ type: 'ping' })
  t.same(await counting.closed, { code: 1011, reason: 'Internal server error' }, 'a frame the store cannot count closes with 1011')
  t.strictSame(counting.pending, [], 'and is not answered')
  await expectIdle(t, app, 'consume throwing: nothing left behind')
  t.equal(logged('store failed to count a message'), 1, 'logged once')

  for (const failing of ['releaseThrows', 'releaseSlotThrows'] as const) {
    fault = 'none'
    const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
    c.send({ type: 'ping' })
    t.same(await c.next(), { type: 'pong' }, `${failing}: the single slot was free, the connection works`)
    fault = failing
    await c.close()
    await expectIdle(t, app, `${failing}: every count is back to nothing`)
  }
  t.equal(logged('store failed to release a message counter'), 1, 'the failed counter release is logged once')
  t.equal(logged('store failed to release a connection slot'), 1, 'the failed slot release is logged once')
  fault = 'none'
  t.equal(app.secureWs.stats().store.rateCounters, 1, 'the counter was released despite the slot release throwing: one counter, kept while idle')
})

t.test('server-side close paths free the slot', async (t) => {
  t.test('rate limit close', async (t) => {
    const { app, url } = await build(t, { options: { limits: { connectionsPerUser: 1, messagesPerSecond: 2 } } })
    const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
    c.send({ type: 'ping' })
    c.send({ type: 'ping' })
    c.send({ type: 'ping' })
    t.same(await c.next(), { type: 'pong' })
    t.same(await c.next(), { type: 'pong' })
    t.same(await c.next(), { type: 'error', message: 'Rate limit exceeded. Connection closed.' })
    t.same(await c.closed, RATE_LIMITED)
    await expectIdle(t, app)
    const again = await connect(url('/ws/alice-1'), { token: sign('alice') })
    t.ok(await again.admitted(), 'the single slot is free again')
    await again.close()
  })

  t.test('token expiry close', async (t) => {
    const { app, url } = await build(t, { options: { limits: { connectionsPerUser: 1 } } })
    // `exp` has one-second resolution: 1-2 s from now, so admission still accepts it.
    const exp = Math.ceil(Date.now() / 1000) + 1
    const c = await connect(url('/ws/alice-1'), { token: sign('alice', { exp }) })
    t.ok(await c.admitted(), 'admitted while the token is valid')
    t.equal(app.secureWs.stats().timers, 1)
    t.same(await within(c.closed, 5000, 'expiry close'), EXPIRED)
    await expectIdle(t, app)
    const again = await connect(url('/ws/alice-1'), { token: sign('alice') })
    t.ok(await again.admitted(), 'the single slot is free again')
    await again.close()
  })

  t.test('disconnectUser', async (t) => {
    const { app, url } = await build(t, { options: { limits: { connectionsPerUser: 1 } } })
    const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
    t.equal(await app.secureWs.disconnectUser('alice'), 1)
    t.same(await c.closed, DISCONNECTED)
    await expectIdle(t, app)
    const again = await connect(url('/ws/alice-1'), { token: sign('alice') })
    t.ok(await again.admitted(), 'the single slot is free again')
    await again.close()
  })
})

t.test('2000 connect/close cycles leave no slot, connection, timer or listener behind', async (t) => {
  const TOTAL = 2000
  const BATCH = 20
  const { app, url } = await build(t, {
    logLevel: 'warn',
    options: { limits: { connectionsPerUser: BATCH / 2, messagesPerSecond: 1_000_000, messagesPerMinute: 1_000_000 } }
  })
  const tokens = { alice: sign('alice'), bob: sign('bob') }

  // Warm up once, so state that lives for the whole server (rate sweeper, JWT cache) exists before counting.
  const warm = await connect(url('/ws/alice-1'), { token: tokens.alice })
  warm.send({ type: 'ping' })
  t.same(await warm.next(), { type: 'pong' })
  await warm.close()
  await expectIdle(t, app, 'idle after warm-up')

  const events = ['upgrade', 'connection', 'request', 'close', 'error', 'clientError'] as const
  const listenersBefore = Object.fromEntries(events.map((e) => [e, app.server.listenerCount(e)]))
  const wssListenersBefore = app.websocketServer.listenerCount('connection')
  const timeoutsBefore = activeTimeouts()

  let opened = 0
  let answered = 0
  for (let i = 0; i < TOTAL; i += BATCH) {
    const clients = await Promise.all(Array.from({ length: BATCH }, (_, j) => {
      const user = j % 2 === 0 ? 'alice' : 'bob'
      return connect(url(`/ws/${user}-1`), { token: tokens[user] })
    }))
    await Promise.all(clients.map(async (c, j) => {
      if (c.ws.readyState !== c.ws.OPEN) return
      opened++
      c.send({ type: 'subscribe', payload: { topic: `topic-${i + j}` } })
      const frame = await c.next()
      if (frame?.type === 'pong') answered++
    }))
    await Promise.all(clients.map((c) => c.close()))
    // Bounded wait for the server to see every close before the next batch needs the slots.
    await eventually(() => app.secureWs.stats().connections === 0)
  }
  t.equal(opened, TOTAL, 'every connection was admitted')
  t.equal(answered, TOTAL, 'every connection was served')

  await expectIdle(t, app)
  t.same(Object.fromEntries(events.map((e) => [e, app.server.listenerCount(e)])), listenersBefore, 'app.server listener counts unchanged')
  t.equal(app.websocketServer.listenerCount('connection'), wssListenersBefore, 'websocketServer listener count unchanged')
  await eventually(() => activeTimeouts() <= timeoutsBefore)
  const timeoutsAfter = activeTimeouts()
  t.ok(timeoutsAfter <= timeoutsBefore, `active Timeout count ${timeoutsAfter} is not above ${timeoutsBefore}`)
})

t.test('a client that disconnects abruptly frees its slot', async (t) => {
  const { app, url } = await build(t, { options: { limits: { connectionsPerUser: 1 } } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  c.send({ type: 'subscribe', payload: { topic: 'news' } })
  t.same(await c.next(), { type: 'pong' })
  t.same(app.secureWs.stats().store.slots, { alice: 1 })
  c.ws.terminate()
  t.equal((await c.closed).code, 1006, 'the client saw no close frame')
  await expectIdle(t, app)
  const again = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.ok(await again.admitted(), 'the single slot is free again')
  await again.close()
})

/** A server whose verifyToken takes 200 ms and reports when it starts, over a store that records slot calls. */
async function slowAdmission (t: Test): Promise<{ app: FastifyInstance, url: (path: string) => string, inVerify: Promise<void>, recorded: ReturnType<typeof recordingStore> }> {
  let entered: () => void = () => {}
  const inVerify = new Promise<void>((resolve) => { entered = resolve })
  const verifyToken = async (token: string): Promise<SecureWsUser> => {
    entered()
    await delay(200)
    return { id: token, scopes: [] }
  }
  const recorded = recordingStore()
  const { app, url } = await build(t, {
    options: { jwt: undefined, verifyToken, store: recorded.store, limits: { connectionsPerUser: 1 } } as Partial<SecureWsOptions>
  })
  return { app, url, inVerify, recorded }
}

/** Admission went on after the client left: it took one slot and must have given exactly that one back. */
async function expectSlotGivenBack (t: Test, app: FastifyInstance, url: (path: string) => string, recorded: ReturnType<typeof recordingStore>): Promise<void> {
  const releasedId = await within(recorded.onRelease, 3000, 'slot released')
  t.same(recorded.acquired, [{ id: releasedId, ok: true }], 'admission took exactly one slot')
  t.same(recorded.released, [releasedId], 'and released that slot once')
  await expectIdle(t, app)

  const again = await connect(url('/ws/alice-1'), { token: 'alice' })
  t.ok(await again.admitted(), 'the single slot is free again')
  await again.close()
  await expectIdle(t, app)
  t.equal(recorded.acquired.length, 2)
  t.equal(recorded.released.length, 2, 'every slot taken was released exactly once')
}

t.test('a client whose TCP socket closes during admission leaves no slot held', async (t) => {
  const { app, url, inVerify, recorded } = await slowAdmission(t)
  const c = new Client(url('/ws/alice-1'), { token: 'alice' })
  await within(inVerify, 2000, 'verifyToken called')
  c.ws.terminate()
  t.equal((await c.closed).code, 1006)
  t.equal(await c.opened, false, 'the handshake never completed')
  await expectSlotGivenBack(t, app, url, recorded)
})

t.test('a client whose TCP socket is reset during admission leaves no slot held', async (t) => {
  const { app, url, inVerify, recorded } = await slowAdmission(t)
  const socket = rawUpgrade(t, app, '/ws/alice-1', 'alice')
  let received = ''
  socket.on('data', (chunk) => { received += chunk.toString('latin1') })
  await within(inVerify, 2000, 'verifyToken called')
  socket.resetAndDestroy()
  await expectSlotGivenBack(t, app, url, recorded)
  t.equal(received, '', 'the reset client was sent nothing')
})

t.test('fastify.close() sends every open client 1001 and resolves', async (t) => {
  const { app, url } = await build(t)
  const clients = [
    await connect(url('/ws/alice-1'), { token: sign('alice') }),
    await connect(url('/ws/alice-1'), { token: sign('alice'), via: 'protocol' }),
    await connect(url('/ws/bob-1'), { token: sign('bob') })
  ]
  for (const c of clients) t.ok(await c.admitted(), 'admitted')

  const closing = app.close()
  for (const c of clients) t.same(await within(c.closed, 5000, 'client close'), SHUTTING_DOWN)
  await within(closing, 5000, 'fastify.close()')
  t.pass('fastify.close() resolved')
  await expectIdle(t, app)
})

t.test('fastify.close() resolves when a client never answers the close frame', async (t) => {
  const { app } = await build(t, { options: { shutdownTimeoutMs: 300 } })
  const peer = await silentPeer(t, app, '/ws/alice-1', sign('alice'))
  t.equal(app.secureWs.stats().connections, 1)

  await within(app.close(), 5000, 'fastify.close()')
  t.pass('fastify.close() resolved')
  await within(peer.closed, 2000, 'server cut the silent client off')
  t.pass('the silent client was disconnected')

  // What arrived after the handshake is one unmasked close frame: 1001, 'Server shutting down'.
  const frame = peer.frames()
  t.equal(frame[0], 0x88, 'a final close frame')
  t.equal(frame[1], 2 + Buffer.byteLength(SHUTTING_DOWN.reason))
  t.equal(frame.readUInt16BE(2), SHUTTING_DOWN.code)
  t.equal(frame.subarray(4).toString(), SHUTTING_DOWN.reason)
  await expectIdle(t, app)
})

t.test('disconnectUser closes all of one user\'s connections and no one else\'s', async (t) => {
  const { app, url } = await build(t)
  const a1 = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const a2 = await connect(url('/ws/alice-1'), { token: sign('alice'), via: 'protocol' })
  const b = await connect(url('/ws/bob-1'), { token: sign('bob') })

  t.equal(await app.secureWs.disconnectUser('alice'), 2, 'reports how many it closed')
  t.same(await a1.closed, DISCONNECTED)
  t.same(await a2.closed, DISCONNECTED)

  await eventually(() => app.secureWs.stats().connections === 1)
  t.equal(b.ws.readyState, b.ws.OPEN, 'bob stays open')
  b.send({ type: 'ping' })
  t.same(await b.next(), { type: 'pong' }, 'and is still served')
  const s = app.secureWs.stats()
  t.same(s.users, { bob: 1 })
  t.same(s.store.slots, { bob: 1 })
  t.equal(await app.secureWs.disconnectUser('alice'), 0, 'nothing left to close for alice')
  t.equal(await app.secureWs.disconnectUser('nobody'), 0)

  await b.close()
  await expectIdle(t, app)
})

t.test('onConnect and onClose run once each per connection', async (t) => {
  const connects: string[] = []
  const closes: string[] = []
  const { app, url } = await build(t, {
    route: {
      onConnect: (conn) => { connects.push(conn.id) },
      onClose: (conn) => { closes.push(conn.id) }
    }
  })

  // Refused upgrades are not connections: neither hook runs for them.
  const badToken = await connect(url('/ws/alice-1'), { token: 'garbage' })
  t.same(await badToken.closed, EXPIRED)
  const notOwner = await connect(url('/ws/bob-1'), { token: sign('alice') })
  t.same(await notOwner.closed, { code: 1008, reason: 'Access denied' })

  const byClient = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const terminated = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const disconnected = await connect(url('/ws/bob-1'), { token: sign('bob') })
  const atShutdown = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.equal(connects.length, 4, 'onConnect ran for each admitted connection')
  t.equal(closes.length, 0)

  await byClient.close()
  terminated.ws.terminate()
  await terminated.closed
  await app.secureWs.disconnectUser('bob')
  t.same(await disconnected.closed, DISCONNECTED)
  await eventually(() => closes.length === 3)
  t.equal(closes.length, 3)

  await within(app.close(), 5000, 'fastify.close()')
  t.same(await atShutdown.closed, SHUTTING_DOWN)

  // Once the server is closed nothing can run a hook again, so the counts are final.
  t.equal(connects.length, 4, 'onConnect ran once per connection')
  t.equal(closes.length, 4, 'onClose ran once per connection')
  t.equal(new Set(connects).size, 4, 'no connection id repeats in onConnect')
  t.same([...closes].sort(), [...connects].sort(), 'onClose ran for exactly the connections onConnect saw')
})
