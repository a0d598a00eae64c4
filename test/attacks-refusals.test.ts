// Attack table, part 1: what a refused or server-closed socket costs, and what stops one
// address or sheer numbers (lockout, pending-upgrade cap, connection cap), verifiers and
// hooks that fail. Each row names the attack and asserts the exact outcome through real sockets.
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { memoryStore, type SecureWsOptions, type SecureWsRouteOptions, type SecureWsStore, type SecureWsUser } from '../lib/index.js'
import { ORIGIN, type Built, type Session, build, closeOf, connect, eventually, parseLogs, refusalLines, sign, within } from './helpers.js'
import { OP, type RawPeer, clientFrame, eventuallyAsync, parsedFrames, peerAnswersPing, rawUpgradePeer, serverConnections, textMessages } from './frames.js'

const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
const TRY_AGAIN = { code: 1013, reason: 'Try again later' }
const RATE_ERROR = { type: 'error', message: 'Rate limit exceeded. Connection closed.' }
const LOCKED_OUT_LINE = 'client address locked out after failed authentications'

/** A memory store whose `acquireSlot` throws, as a store whose backend is down does. */
function storeWithoutSlots (): SecureWsStore {
  const real = memoryStore()
  return {
    acquireSlot: () => { throw new Error('slot backend down') },
    releaseSlot: (key, id) => real.releaseSlot(key, id),
    holdCounter: (key, limits) => real.holdCounter(key, limits),
    recordAuthFailure: (address, limit) => real.recordAuthFailure(address, limit),
    lockedOutUntil: (address) => real.lockedOutUntil(address),
    revokeUser: (userId, before, ttl) => real.revokeUser(userId, before, ttl),
    revokedBefore: (userId) => real.revokedBefore(userId),
    stats: () => real.stats(),
    close: () => real.close()
  }
}

/** A peer admitted as `user` to its session, proven by an answered ping. */
async function admittedPeer (t: Test, built: Built, user: 'alice' | 'bob', token = sign(user)): Promise<RawPeer> {
  const peer = rawUpgradePeer(t, built.app, { path: `/ws/${user}-1`, token })
  t.equal((await peer.head).status, 101)
  t.ok(await peerAnswersPing(peer), `${user} is admitted`)
  return peer
}

interface RefusalRow {
  name: string
  options?: Partial<SecureWsOptions>
  route?: Partial<SecureWsRouteOptions<Session, any>>
  /** Opens what must exist before the refused upgrade (e.g. a connection holding the only slot). */
  before?: (t: Test, built: Built) => Promise<unknown>
  request: { path: string, token?: string, origin?: string }
  expected: { code: number, reason: string }
}

const REFUSALS: RefusalRow[] = [
  { name: 'an origin not allowed', request: { path: '/ws/alice-1', token: sign('alice'), origin: 'http://evil.test' }, expected: { code: 1008, reason: 'Origin not allowed' } },
  { name: 'an invalid token', request: { path: '/ws/alice-1', token: 'garbage' }, expected: INVALID_TOKEN },
  { name: 'no token', request: { path: '/ws/alice-1' }, expected: INVALID_TOKEN },
  { name: 'another user\'s session', request: { path: '/ws/bob-1', token: sign('alice') }, expected: { code: 1008, reason: 'Access denied' } },
  {
    name: 'a user at their connection limit',
    options: { limits: { connectionsPerUser: 1 } },
    before: (t, built) => admittedPeer(t, built, 'alice'),
    request: { path: '/ws/alice-1', token: sign('alice') },
    expected: { code: 1008, reason: 'Too many connections' }
  },
  {
    name: 'a full server (limits.maxConnections)',
    options: { limits: { maxConnections: 1 } },
    before: (t, built) => admittedPeer(t, built, 'bob'),
    request: { path: '/ws/alice-1', token: sign('alice') },
    expected: TRY_AGAIN
  },
  {
    name: 'a verifyToken that throws',
    options: { jwt: undefined, verifyToken: () => { throw new Error('identity provider down') } },
    request: { path: '/ws/alice-1', token: 'alice' },
    expected: TRY_AGAIN
  },
  { name: 'a store that cannot take a slot', options: { store: storeWithoutSlots() }, request: { path: '/ws/alice-1', token: sign('alice') }, expected: TRY_AGAIN },
  {
    name: 'a resolveSession that throws',
    route: { resolveSession: () => { throw new Error('db down') } },
    request: { path: '/ws/alice-1', token: sign('alice') },
    expected: { code: 1011, reason: 'Internal server error' }
  }
]

t.test('a refused upgrade is hung up: its close frame, the server\'s FIN right after, nothing it sends parsed, the socket destroyed after refusalGraceMs though the peer never answers', async (t) => {
  for (const row of REFUSALS) {
    t.test(row.name, async (t) => {
      const built = await build(t, { options: { refusalGraceMs: 300, ...row.options }, route: row.route })
      const { app } = built
      await row.before?.(t, built)
      const parsed = parsedFrames(app)
      const socketsBefore = await serverConnections(app)
      const slotsBefore = app.secureWs.stats().store.slots
      const peer = rawUpgradePeer(t, app, row.request)
      // Pipelined behind the request: a ping the server would answer, were it parsed.
      peer.write(Buffer.concat([clientFrame(OP.ping, 'early'), clientFrame(OP.text, '{"type":"ping"}')]))
      t.equal((await peer.head).status, 101, 'the handshake completes, so a browser can read the code')
      t.same(await peer.closeFrame(), row.expected)
      await within(peer.ended, 2000, 'the server ending its side after the close frame')
      // The peer keeps talking and never sends its close: none of it is parsed.
      for (let i = 0; i < 5; i++) peer.write(Buffer.concat([clientFrame(OP.ping, 'late'), clientFrame(OP.text, '{"type":"ping"}')]))
      t.same(peer.frames().map((f) => f.opcode), [OP.close], 'the close frame is all the server sent: no pong, no message')
      t.equal(await eventuallyAsync(async () => await serverConnections(app) === socketsBefore, 5000), true, 'the socket is destroyed after the grace, not after ws\'s 30 s')
      t.equal(await eventually(() => app.secureWs.stats().closing === 0), true, 'the plugin holds nothing for it')
      t.equal(parsed.count, 0, 'ws parsed no frame of the refused peer')
      t.same(app.secureWs.stats().store.slots, slotsBefore, 'the refusal took no slot')
      t.equal(refusalLines(built.logs).length, 1, 'one refusal line')
    })
  }
})

t.test('a flood of 100 bad-token upgrades from one address that never answer holds nothing past the default grace, and another address connects throughout', async (t) => {
  const built = await build(t)
  const { app } = built
  const peers = Array.from({ length: 100 }, () => rawUpgradePeer(t, app, { path: '/ws/alice-1', token: 'garbage' }))
  const statuses = await Promise.all(peers.map(async (peer) => (await peer.head).status))
  const legit = rawUpgradePeer(t, app, { path: '/ws/bob-1', token: sign('bob'), localAddress: '127.0.0.2' })
  t.equal((await legit.head).status, 101)
  t.ok(await peerAnswersPing(legit), 'the user on another address is served during the flood')
  // The JWT check and the memory store answer at once, so the 30th failure is counted before the 31st upgrade is looked at.
  t.same([...statuses].sort(), [...Array(30).fill(101), ...Array(70).fill(429)], '30 get the handshake and 4401, the rest 429')
  for (const peer of peers.filter((_, i) => statuses[i] === 101)) t.same(await peer.closeFrame(), INVALID_TOKEN)
  await within(Promise.all(peers.map((peer) => peer.ended)), 5000, 'every refused socket ended by the server')
  t.equal(await eventuallyAsync(async () => await serverConnections(app) === 1, 5000), true, 'only the legitimate connection is held after refusalGraceMs (1 s by default)')
  t.ok(await eventually(() => app.secureWs.stats().closing === 0), 'the plugin holds nothing for the refused ones')
  t.equal(parseLogs(built.logs).filter((line) => line.msg === LOCKED_OUT_LINE).length, 1)
})

interface ServerCloseRow {
  name: string
  options?: Partial<SecureWsOptions>
  /** The admitted peer's token, made when the row runs. */
  token?: () => string
  /** Makes the server close the admitted peer of `alice`. */
  provoke: (built: Built, peer: RawPeer) => Promise<unknown> | void
  /** Frames before the close frame, parsed. */
  messages: unknown[]
  expected: { code: number, reason: string }
}

const SERVER_CLOSES: ServerCloseRow[] = [
  {
    name: 'over the message rate',
    options: { limits: { messagesPerSecond: 2 } },
    provoke: (_built, peer) => { peer.write(Buffer.concat([1, 2].map(() => clientFrame(OP.text, '{"type":"ping"}')))) },
    messages: [{ type: 'pong' }, { type: 'pong' }, RATE_ERROR],
    expected: { code: 1008, reason: 'Rate limit exceeded' }
  },
  {
    name: 'disconnectUser',
    provoke: ({ app }) => app.secureWs.disconnectUser('alice'),
    messages: [{ type: 'pong' }],
    expected: { code: 4403, reason: 'Disconnected by the server' }
  },
  {
    name: 'disconnectUser with the app\'s code and reason',
    provoke: ({ app }) => app.secureWs.disconnectUser('alice', 4000, 'Account suspended'),
    messages: [{ type: 'pong' }],
    expected: { code: 4000, reason: 'Account suspended' }
  },
  {
    name: 'its token expiring',
    // `exp` has one-second resolution: 1-2 s from now, so admission still accepts it.
    token: () => sign('alice', { exp: Math.ceil(Date.now() / 1000) + 1 }),
    provoke: () => {},
    messages: [{ type: 'pong' }],
    expected: INVALID_TOKEN
  },
  {
    name: 'revokeUser',
    // Issued before the revocation, so that a token signed now is not revoked with it.
    token: () => sign('alice', { iat: Math.floor(Date.now() / 1000) - 30 }),
    provoke: ({ app }) => app.secureWs.revokeUser('alice', { issuedBefore: Date.now() - 10_000 }),
    messages: [{ type: 'pong' }],
    expected: { code: 4403, reason: 'Logged out' }
  }
]

t.test('a connection the server closes frees its slot at the close decision and is hung up like a refusal', async (t) => {
  for (const row of SERVER_CLOSES) {
    t.test(row.name, async (t) => {
      // A grace longer than the test: whatever frees the slot, it is not the socket closing.
      const built = await build(t, { options: { refusalGraceMs: 60_000, ...row.options, limits: { connectionsPerUser: 1, ...row.options?.limits } } })
      const { app } = built
      const parsed = parsedFrames(app)
      const peer = await admittedPeer(t, built, 'alice', row.token?.())
      await row.provoke(built, peer)
      t.same(await peer.closeFrame(), row.expected)
      t.same(textMessages(peer), row.messages)
      await within(peer.ended, 2000, 'the server ending its side after the close frame')
      const parsedAtClose = parsed.count
      for (let i = 0; i < 5; i++) peer.write(Buffer.concat([clientFrame(OP.ping), clientFrame(OP.text, '{"type":"ping"}')]))
      t.equal(app.secureWs.stats().closing, 1, 'the server still holds the socket, waiting for the peer\'s close')
      t.same(app.secureWs.stats().store.slots, {}, 'yet the slot is free')
      const again = rawUpgradePeer(t, app, { path: '/ws/alice-1', token: sign('alice') })
      t.equal((await again.head).status, 101)
      t.ok(await eventually(() => app.secureWs.stats().users.alice === 1), 'and the user, at a limit of one, is admitted again (the closed one no longer counts)')
      t.same(again.frames(), [], 'not refused')
      // Nothing can answer a peer the server has ended; give ws a moment to (not) parse what it sent.
      await new Promise((resolve) => setTimeout(resolve, 100))
      t.equal(parsed.count, parsedAtClose, 'nothing the closed peer sent after the close was parsed')
    })
  }
})

t.test('a server-closed connection whose peer never answers is destroyed after refusalGraceMs', async (t) => {
  const built = await build(t, { options: { refusalGraceMs: 300, limits: { messagesPerSecond: 1 } } })
  const peer = await admittedPeer(t, built, 'alice')
  peer.write(clientFrame(OP.text, '{"type":"ping"}'))
  t.same(await peer.closeFrame(), { code: 1008, reason: 'Rate limit exceeded' })
  await within(peer.ended, 2000, 'the FIN')
  t.equal(await eventuallyAsync(async () => await serverConnections(built.app) === 0, 5000), true, 'destroyed without the peer\'s close')
  // ws reports the close a moment after the TCP socket is gone.
  t.ok(await eventually(() => built.app.secureWs.stats().closing === 0 && built.app.secureWs.stats().connections === 0), 'the plugin holds nothing for it')
})

/** Opens a ws client from `localAddress` and reports whether it was admitted, refused with a close, or answered with HTTP. */
function outcomeFrom (url: string, token: string, localAddress: string): Promise<{ status?: number, close?: { code: number, reason: string }, admitted?: true }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${url}?token=${encodeURIComponent(token)}`, { origin: ORIGIN, localAddress })
    ws.on('error', () => {})
    ws.once('unexpected-response', (_req, res) => {
      resolve({ status: res.statusCode })
      res.resume()
      ws.terminate()
    })
    ws.once('open', () => { ws.send('{"type":"ping"}') })
    ws.once('message', () => {
      resolve({ admitted: true })
      ws.close()
    })
    ws.once('close', (code, reason) => { resolve({ close: { code, reason: reason.toString() } }) })
  })
}

t.test('lockout: 30 upgrades refused with 4401 from one address lock it out; then HTTP 429 with Retry-After, whatever the token', async (t) => {
  const { app, url, logs } = await build(t)
  const firstSent = Date.now()
  let firstRefused = 0
  for (let i = 0; i < 30; i++) {
    const c = await connect(url('/ws/alice-1'), { token: `not-a-jwt-${i}` })
    t.same(await closeOf(c), INVALID_TOKEN, `failure ${i + 1} is still a 4401`)
    if (i === 0) firstRefused = Date.now()
  }

  const requestSent = Date.now()
  const peer = rawUpgradePeer(t, app, { path: '/ws/alice-1', token: sign('alice') })
  const head = await peer.head
  const answered = Date.now()
  t.equal(head.status, 429, 'a valid token is refused too, before the upgrade')
  t.match(head.headers['retry-after'], /^\d+$/, 'Retry-After is whole seconds')
  // Whole seconds until the first failure is a minute old, as the server's clock saw it.
  const retryAfter = Number(head.headers['retry-after'])
  t.ok(retryAfter >= Math.ceil((firstSent + 60_000 - answered) / 1000) && retryAfter <= Math.ceil((firstRefused + 60_000 - requestSent) / 1000), `Retry-After ${retryAfter} is the time left until the oldest failure leaves the minute`)
  t.same(JSON.parse(peer.body().toString()), { statusCode: 429, code: 'tooManyAuthFailures', message: 'Too many failed authentications' })
  await within(peer.ended, 2000, 'the server ending the socket after its answer')
  t.equal(await eventuallyAsync(async () => await serverConnections(app) === 0), true, 'and holding nothing for it')

  for (const token of [sign('bob'), 'garbage', '']) {
    const again = await connect(url(`/ws/${token === sign('bob') ? 'bob' : 'alice'}-1`), token === '' ? {} : { token })
    t.equal(again.status, 429, `still 429 with ${token === '' ? 'no token' : token === 'garbage' ? 'a bad token' : 'another user\'s valid token'}`)
  }
  const lockLines = parseLogs(logs).filter((line) => line.msg === LOCKED_OUT_LINE)
  t.equal(lockLines.length, 1, 'one log line for the lockout, not one per attempt')
  t.match(lockLines[0], { level: 40, ip: '127.0.0.1', failures: 30 })
  t.equal(refusalLines(logs).length, 30, 'the 429s write no refusal line each')
  t.same(app.secureWs.stats().users, {})
})

t.test('lockout: another address is unaffected by a locked-out one', async (t) => {
  const { url } = await build(t, { options: { limits: { authFailuresPerMinute: 3 } } })
  for (let i = 0; i < 3; i++) t.same(await outcomeFrom(url('/ws/alice-1'), 'garbage', '127.0.0.1'), { close: INVALID_TOKEN })
  t.same(await outcomeFrom(url('/ws/alice-1'), sign('alice'), '127.0.0.1'), { status: 429 }, '127.0.0.1 is locked out')
  t.same(await outcomeFrom(url('/ws/alice-1'), sign('alice'), '127.0.0.2'), { admitted: true }, '127.0.0.2 connects')
  t.same(await outcomeFrom(url('/ws/alice-1'), 'garbage', '127.0.0.2'), { close: INVALID_TOKEN }, 'and gets its own 4401s')
})

t.test('lockout: refusals other than 4401 do not count', async (t) => {
  const { url } = await build(t, { options: { limits: { authFailuresPerMinute: 3, connectionsPerUser: 1 } } })
  for (let i = 0; i < 5; i++) {
    t.same(await outcomeFrom(url('/ws/alice-1'), sign('alice'), '127.0.0.1').then((o) => o.admitted), true)
    t.same(await outcomeFrom(url('/ws/bob-1'), sign('alice'), '127.0.0.1'), { close: { code: 1008, reason: 'Access denied' } })
    const evil = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: 'http://evil.test' })
    t.same(await closeOf(evil), { code: 1008, reason: 'Origin not allowed' })
  }
  t.same(await outcomeFrom(url('/ws/alice-1'), sign('alice'), '127.0.0.1'), { admitted: true })
})

t.test('lockout: authFailuresPerMinute 0 turns it off', async (t) => {
  const { url, logs } = await build(t, { options: { limits: { authFailuresPerMinute: 0 } } })
  for (let i = 0; i < 40; i++) {
    const c = await connect(url('/ws/alice-1'), { token: 'garbage' })
    t.same(await closeOf(c), INVALID_TOKEN)
  }
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.ok(await c.admitted(), 'the 41st upgrade, with a valid token, is admitted')
  await c.close()
  t.same(parseLogs(logs).filter((line) => line.msg === LOCKED_OUT_LINE), [])
})

t.test('pendingUpgradesPerIp: past 64 upgrades from one address still in admission, more get HTTP 429', async (t) => {
  let openGate: () => void = () => {}
  const gate = new Promise<void>((resolve) => { openGate = resolve })
  let verifying = 0
  const built = await build(t, {
    options: { jwt: undefined, verifyToken: async (token: string): Promise<SecureWsUser> => { verifying++; await gate; return { id: token, scopes: [] } } },
    route: { resolveSession: ({ user }) => ({ id: 'shared', ownerId: user.id, secret: '' }) }
  })
  const { app } = built
  t.teardown(openGate)
  const pending = Array.from({ length: 64 }, (_, i) => rawUpgradePeer(t, app, { path: '/ws/shared', token: `user-${i}` }))
  t.ok(await eventually(() => verifying === 64, 5000), 'all 64 are being verified')

  const extra = rawUpgradePeer(t, app, { path: '/ws/shared', token: 'user-64' })
  const head = await extra.head
  t.equal(head.status, 429)
  t.equal(head.headers['retry-after'], '1')
  t.same(JSON.parse(extra.body().toString()), { statusCode: 429, code: 'tooManyPendingUpgrades', message: 'Try again later' })
  await within(extra.ended, 2000, 'the server ending the refused socket')
  t.equal(verifying, 64, 'the 65th never reached verifyToken')

  const elsewhere = rawUpgradePeer(t, app, { path: '/ws/shared', token: 'from-elsewhere', localAddress: '127.0.0.2' })
  t.ok(await eventually(() => verifying === 65, 5000), 'an upgrade from another address is still let into admission')
  openGate()
  const heads = await Promise.all([...pending, elsewhere].map((peer) => peer.head))
  t.same(new Set(heads.map((h) => h.status)), new Set([101]))
  t.ok(await eventually(() => app.secureWs.stats().connections === 65, 5000), 'the pending ones are admitted once verified')
  const late = rawUpgradePeer(t, app, { path: '/ws/shared', token: 'user-65' })
  t.equal((await late.head).status, 101, 'once they left admission the address may upgrade again')
})

t.test('maxConnections: the process-wide cap refuses with 1013 Try again later, whoever the user', async (t) => {
  const built = await build(t, { options: { limits: { maxConnections: 2 } } })
  const { app, url } = built
  const alice = await admittedPeer(t, built, 'alice')
  await admittedPeer(t, built, 'bob')
  for (const user of ['alice', 'bob']) {
    const refused = await connect(url(`/ws/${user}-1`), { token: sign(user) })
    t.same(await closeOf(refused), TRY_AGAIN, `${user} is refused: the server is full`)
  }
  t.same(refusalLines(built.logs).map((line) => line.refusal), ['serverFull', 'serverFull'])
  t.equal(app.secureWs.stats().connections, 2)
  alice.destroy()
  await eventually(() => app.secureWs.stats().connections === 1)
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.ok(await c.admitted(), 'a freed place is taken again')
  await c.close()
})

t.test('a verifyToken that rejects refuses with 1013 Try again later, logged once per outage; null is 4401', async (t) => {
  let mode: 'down' | 'null' | 'up' = 'down'
  const { url, logs } = await build(t, {
    options: {
      jwt: undefined,
      verifyToken: async (token: string) => {
        if (mode === 'down') throw new Error('identity provider down')
        return mode === 'null' ? null : { id: token, scopes: [] }
      }
    }
  })
  for (let i = 0; i < 3; i++) {
    const c = await connect(url('/ws/alice-1'), { token: 'alice' })
    t.same(await closeOf(c), TRY_AGAIN)
  }
  const outageLines = parseLogs(logs).filter((line) => line.msg === 'verifyToken failed; upgrades are refused with 1013 until it answers again')
  t.equal(outageLines.length, 1, 'the outage is logged once')
  t.equal(outageLines[0]?.level, 50)
  t.same(refusalLines(logs).map((line) => line.refusal), ['authUnavailable', 'authUnavailable', 'authUnavailable'])

  mode = 'null'
  const refused = await connect(url('/ws/alice-1'), { token: 'alice' })
  t.same(await closeOf(refused), INVALID_TOKEN)
  t.equal(parseLogs(logs).filter((line) => line.msg === 'verifyToken answers again').length, 1, 'an answer, even a refusal, ends the outage')

  mode = 'up'
  const admitted = await connect(url('/ws/alice-1'), { token: 'alice' })
  t.ok(await admitted.admitted())
  await admitted.close()
})

t.test('onConnect rejecting closes with 1011 and is logged; onClose rejecting is logged; no unhandled rejection', async (t) => {
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.removeListener('unhandledRejection', onUnhandled) })
  const { url, logs, app } = await build(t, {
    route: {
      onConnect: async (conn) => { if (conn.user.id === 'bob') throw new Error('onConnect failed: /srv/app/hooks.ts') },
      onClose: async () => { throw new Error('onClose failed') }
    }
  })
  const bob = await connect(url('/ws/bob-1'), { token: sign('bob') })
  t.same(await closeOf(bob), { code: 1011, reason: 'Internal server error' })
  const alice = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.ok(await alice.admitted(), 'another connection is served')
  await alice.close()
  const closeFailures = (): number => parseLogs(logs).filter((line) => line.msg === 'websocket onClose hook failed').length
  t.ok(await eventually(() => closeFailures() === 2), 'onClose ran and failed for both')
  const connectFailures = parseLogs(logs).filter((line) => line.msg === 'websocket onConnect hook failed')
  t.equal(connectFailures.length, 1)
  t.match(connectFailures[0], { level: 50, userId: 'bob' })
  // Rejections are reported after the microtask queue drains; give them a macrotask turn or two.
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(unhandled, [], 'no unhandled rejection')
  t.same(app.secureWs.stats().store.slots, {})
})
