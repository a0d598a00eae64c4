import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import t from 'tap'
import { DEFAULT_LIMITS } from '../lib/index.js'
import { Client, type Closed, ORIGIN, SESSIONS, build, connect, eventually, sign, closeOf, refusalLines } from './helpers.js'

const TOO_MANY = { code: 1008, reason: 'Too many connections' }

/** Opens `count` admitted connections of `user` to its own session, one after the other. */
async function openMany (url: string, user: string, count: number): Promise<Client[]> {
  const clients: Client[] = []
  for (let i = 0; i < count; i++) {
    const c = await connect(url, { token: sign(user) })
    c.send({ type: 'whoami' })
    const answer = await c.next()
    if (answer.type !== 'whoami') throw new Error(`connection ${i + 1} of ${user} was not admitted: ${JSON.stringify(answer)}`)
    clients.push(c)
  }
  return clients
}

async function closeAll (clients: Client[]): Promise<void> {
  await Promise.all(clients.map((c) => c.close()))
}

/** Whether an opened client was admitted (answers whoami) or refused (closed first). */
async function outcome (c: Client): Promise<{ admitted: true } | { admitted: false, closed: Closed }> {
  if (!(await c.opened)) throw new Error(`the upgrade was refused with HTTP ${c.status}`)
  const answered = new Promise<{ admitted: true }>((resolve, reject) => {
    c.ws.once('message', (data) => {
      const frame = JSON.parse(data.toString())
      if (frame.type === 'whoami') resolve({ admitted: true })
      else reject(new Error(`unexpected frame ${JSON.stringify(frame)}`))
    })
  })
  c.send({ type: 'whoami' })
  // No timer here: a refused client closes and an admitted one answers, so one of them settles.
  return Promise.race([answered, c.closed.then((closed) => ({ admitted: false as const, closed }))])
}

t.test('the default limit is 5 connections per user', async (t) => {
  t.equal(DEFAULT_LIMITS.connectionsPerUser, 5)
  const { url, app } = await build(t)
  const alice = await openMany(url('/ws/alice-1'), 'alice', 5)
  t.same(app.secureWs.stats().users, { alice: 5 })

  const sixth = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.equal(await sixth.opened, true, 'the upgrade completes so the client can read the reason')
  t.same(await closeOf(sixth), TOO_MANY)
  t.same(app.secureWs.stats().users, { alice: 5 }, 'the refused connection took no slot')
  t.same(app.secureWs.stats().store.slots, { alice: 5 })

  for (const c of alice) {
    c.send({ type: 'ping' })
    t.same(await c.next(), { type: 'pong' }, 'the admitted connections are unaffected')
  }
  await closeAll(alice)
})

t.test('another user is not affected by a user at the limit', async (t) => {
  const { url, app } = await build(t)
  const alice = await openMany(url('/ws/alice-1'), 'alice', 5)
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice') })), TOO_MANY)
  const bob = await openMany(url('/ws/bob-1'), 'bob', 5)
  t.same(app.secureWs.stats().users, { alice: 5, bob: 5 })
  t.same(await closeOf(await connect(url('/ws/bob-1'), { token: sign('bob') })), TOO_MANY, 'bob has his own limit of 5')
  await closeAll([...alice, ...bob])
})

t.test('after closing one connection the user can connect again at once', async (t) => {
  const { url, app } = await build(t)
  const alice = await openMany(url('/ws/alice-1'), 'alice', 5)
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice') })), TOO_MANY)

  await alice.shift()!.close()
  // The client's close event can come before the server has processed the TCP close; the
  // slot must be free as soon as the server has seen it, with no cool-down after that.
  t.ok(await eventually(() => app.secureWs.stats().store.slots.alice === 4), 'the server released the slot')
  const again = await connect(url('/ws/alice-1'), { token: sign('alice') })
  again.send({ type: 'whoami' })
  t.same(await again.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  t.same(app.secureWs.stats().users, { alice: 5 })

  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice') })), TOO_MANY, 'the limit still holds')
  await closeAll([...alice, again])
  t.ok(await eventually(() => app.secureWs.stats().connections === 0))
  t.same(app.secureWs.stats().store.slots, {}, 'every slot is released once all are closed')
})

t.test('20 concurrent connection attempts by one user with limit 5 leave exactly 5 open', async (t) => {
  const { url, app, logs } = await build(t)
  const clients = Array.from({ length: 20 }, () => new Client(url('/ws/alice-1'), { token: sign('alice') }))
  const outcomes = await Promise.all(clients.map(outcome))
  const admitted = outcomes.filter((o) => o.admitted)
  const refused = outcomes.flatMap((o) => o.admitted ? [] : [o.closed])
  t.equal(admitted.length, 5, 'exactly 5 admitted')
  t.equal(refused.length, 15, 'the other 15 refused')
  t.same(refused, Array.from({ length: 15 }, () => TOO_MANY), 'every refusal is Too many connections')
  t.equal(app.secureWs.stats().users.alice, 5)
  t.same(app.secureWs.stats().store.slots, { alice: 5 })
  t.equal(refusalLines(logs).filter((line) => line.refusal === 'tooManyConnections').length, 15)
  await closeAll(clients)
  t.ok(await eventually(() => app.secureWs.stats().connections === 0))
  t.same(app.secureWs.stats().store.slots, {})
})

t.test('20 attempts whose admissions are all in flight at once still leave exactly 5 open', async (t) => {
  // resolveSession holds every attempt until all 20 have reached it, so all 20 ask for a
  // slot in the same turn: a check-then-take that is not atomic would admit more than 5.
  const ATTEMPTS = 20
  let arrived = 0
  let releaseAll!: () => void
  const allArrived = new Promise<void>((resolve) => { releaseAll = resolve })
  const fallback = setTimeout(releaseAll, 5000)
  t.teardown(() => clearTimeout(fallback))
  const { url, app } = await build(t, {
    route: {
      resolveSession: async ({ params }) => {
        if (++arrived === ATTEMPTS) releaseAll()
        await allArrived
        return SESSIONS.get(params.sessionId!)
      }
    }
  })
  const clients = Array.from({ length: ATTEMPTS }, () => new Client(url('/ws/alice-1'), { token: sign('alice') }))
  const outcomes = await Promise.all(clients.map(outcome))
  t.equal(arrived, ATTEMPTS, 'all attempts were in flight together')
  t.equal(outcomes.filter((o) => o.admitted).length, 5, 'exactly 5 admitted')
  t.same(outcomes.flatMap((o) => o.admitted ? [] : [o.closed]), Array.from({ length: 15 }, () => TOO_MANY))
  t.equal(app.secureWs.stats().users.alice, 5)
  t.same(app.secureWs.stats().store.slots, { alice: 5 })
  await closeAll(clients)
})

t.test('a route limits.connectionsPerUser override applies to that route', async (t) => {
  const { url, app } = await build(t, { route: { limits: { connectionsPerUser: 2 } } })
  const alice = await openMany(url('/ws/alice-1'), 'alice', 2)
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice') })), TOO_MANY)
  t.same(app.secureWs.stats().users, { alice: 2 })
  const bob = await openMany(url('/ws/bob-1'), 'bob', 2)
  t.same(await closeOf(await connect(url('/ws/bob-1'), { token: sign('bob') })), TOO_MANY)
  await closeAll([...alice, ...bob])
})

t.test('a plugin-wide limits.connectionsPerUser applies to routes without an override', async (t) => {
  const { url } = await build(t, { options: { limits: { connectionsPerUser: 1 } } })
  const alice = await openMany(url('/ws/alice-1'), 'alice', 1)
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice') })), TOO_MANY)
  await closeAll(alice)
})

t.test("rejectWith: 'http' refuses the upgrade with an HTTP status instead of a close frame", async (t) => {
  const { url, app, logs } = await build(t, { options: { rejectWith: 'http' } })

  const badOrigin = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: 'http://evil.test' })
  t.equal(await badOrigin.opened, false)
  t.equal(badOrigin.status, 403, 'origin not allowed: 403')

  const noToken = await connect(url('/ws/alice-1'))
  t.equal(await noToken.opened, false)
  t.equal(noToken.status, 401, 'no token: 401')

  const badToken = await connect(url('/ws/alice-1'), { token: 'garbage', via: 'protocol' })
  t.equal(await badToken.opened, false)
  t.equal(badToken.status, 401, 'invalid token: 401')

  const otherSession = await connect(url('/ws/bob-1'), { token: sign('alice') })
  t.equal(await otherSession.opened, false)
  t.equal(otherSession.status, 403, 'access denied: 403')

  const alice = await openMany(url('/ws/alice-1'), 'alice', 5)
  const sixth = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.equal(await sixth.opened, false)
  t.equal(sixth.status, 429, 'too many connections: 429')
  t.same(app.secureWs.stats().store.slots, { alice: 5 }, 'refused upgrades took no slot')

  t.same(refusalLines(logs).map((line) => line.refusal), ['originNotAllowed', 'invalidToken', 'invalidToken', 'accessDenied', 'tooManyConnections'])
  await closeAll(alice)
})

t.test('each refusal writes exactly one log line with the refusal, the user id when known, and the ip', async (t) => {
  const { url, logs } = await build(t)
  const alice = await openMany(url('/ws/alice-1'), 'alice', 5)
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice') })), TOO_MANY)
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice'), origin: 'http://evil.test' })), { code: 1008, reason: 'Origin not allowed' })
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: 'garbage' })), { code: 4401, reason: 'Invalid or expired authentication token' })
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('bob') })), { code: 1008, reason: 'Access denied' })
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: sign('alice') })), TOO_MANY)

  const lines = refusalLines(logs)
  t.equal(lines.length, 5, 'one line per refusal, none for the 5 admitted')
  t.same(lines.map((line) => line.refusal), ['tooManyConnections', 'originNotAllowed', 'invalidToken', 'accessDenied', 'tooManyConnections'])
  t.same(lines.map((line) => line.userId), ['alice', undefined, undefined, 'bob', 'alice'])
  t.same(lines.map((line) => line.ip), Array.from({ length: 5 }, () => '127.0.0.1'))
  await closeAll(alice)
})

// Regression: the slot used to be freed only on the server's TCP 'close', which waits for the
// client's FIN; a client that had finished the close handshake but not yet closed TCP (as a
// browser may) kept the user's slot for up to ws's 30 s close timeout.
t.test('the slot is free once the close handshake is done, before the client closes TCP', async (t) => {
  const { url } = await build(t, { options: { limits: { connectionsPerUser: 1 } } })
  const token = sign('alice')
  const { port } = new URL(url('/'))
  const raw = net.connect(Number(port), '127.0.0.1')
  t.teardown(() => raw.destroy())
  await once(raw, 'connect')
  raw.write([
    `GET /ws/alice-1?token=${token} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Upgrade: websocket', 'Connection: Upgrade',
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`, 'Sec-WebSocket-Version: 13', `Origin: ${ORIGIN}`, '', ''
  ].join('\r\n'))
  let received = Buffer.alloc(0)
  const receivedCloseFrame = new Promise<void>((resolve) => {
    raw.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk])
      const head = received.indexOf('\r\n\r\n')
      if (head !== -1 && received[head + 4] === 0x88) resolve()
    })
  })
  await eventually(() => received.includes('101 Switching Protocols'))
  // A masked close frame with code 1000, as a client must send it.
  const mask = randomBytes(4)
  const payload = Buffer.from([0x03, 0xe8]).map((byte, i) => byte ^ mask[i % 4]!)
  raw.write(Buffer.concat([Buffer.from([0x88, 0x80 | 2]), mask, payload]))
  await receivedCloseFrame
  t.equal(raw.destroyed, false, 'the old client still holds its TCP connection open')

  const next = await connect(url('/ws/alice-1'), { token })
  t.ok(await next.admitted(), 'a new connection is admitted right away')
  await next.close()
})
