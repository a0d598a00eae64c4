// Attack table, part 2: admitted clients that try to hold resources: by not reading, by faking
// the heartbeat, by flooding control frames, and by keeping the server from shutting down.
import net from 'node:net'
import { randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { DEFAULT_LIMITS } from '../lib/index.js'
import { type Built, build, closeOf, connect, eventually, parseLogs, sign, silentPeer, within } from './helpers.js'
import { OP, type RawPeer, clientFrame, eventuallyAsync, parsedFrames, peerAnswersPing, portOf, rawUpgradePeer, serverConnections, textMessages } from './frames.js'

const RATE_ERROR = { type: 'error', message: 'Rate limit exceeded. Connection closed.' }
const RATE_LIMITED = { code: 1008, reason: 'Rate limit exceeded' }
const NO_PONG = { code: 4408, reason: 'No answer to ping' }
const SHUTTING_DOWN = { code: 1001, reason: 'Server shutting down' }

/** A peer admitted as `user` and subscribed to `topic`, proven by the answers. */
async function subscribedPeer (t: Test, built: Built, user: 'alice' | 'bob', topic: string): Promise<RawPeer> {
  const peer = rawUpgradePeer(t, built.app, { path: `/ws/${user}-1`, token: sign(user) })
  t.equal((await peer.head).status, 101)
  peer.write(clientFrame(OP.text, JSON.stringify({ type: 'subscribe', payload: { topic } })))
  t.ok(await eventually(() => textMessages(peer).length === 1), 'subscribed')
  return peer
}

/** The most any client of the server has waiting to be sent, right now. */
function largestBacklog (app: FastifyInstance): number {
  let largest = 0
  for (const socket of app.websocketServer.clients) largest = Math.max(largest, socket.bufferedAmount)
  return largest
}

/**
 * Publishes `frameBytes`-sized news until a delivery fails (at most `maxFrames`), recording
 * the largest backlog any client had after each publish.
 */
async function publishUntilCutOff (app: FastifyInstance, subscribers: number, frameBytes: number, maxFrames: number): Promise<{ published: number, largestBacklog: number }> {
  const text = 'x'.repeat(frameBytes)
  let largest = 0
  for (let published = 0; published < maxFrames; published++) {
    const delivered = await app.secureWs.publish('news', 'news', { text })
    largest = Math.max(largest, largestBacklog(app))
    if (delivered < subscribers) return { published, largestBacklog: largest }
    // Let the network take what it can, as a feed's timer would.
    await new Promise((resolve) => setImmediate(resolve))
  }
  return { published: maxFrames, largestBacklog: largest }
}

t.test('slow consumer: a client that stops reading is closed with 1013 Slow consumer past maxBufferedBytes (1 MiB) and its socket ended; others keep up', async (t) => {
  t.equal(DEFAULT_LIMITS.maxBufferedBytes, 1024 * 1024)
  const { app, url, logs } = await build(t)
  const slow = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const reader = await connect(url('/ws/bob-1'), { token: sign('bob') })
  for (const c of [slow, reader]) {
    c.send({ type: 'subscribe', payload: { topic: 'news' } })
    t.same(await c.next(), { type: 'pong' })
  }
  let read = 0
  reader.ws.on('message', () => { read++ })
  slow.ws.pause()

  // Loopback buffers take several MB before anything waits in the server: allow 64 MB.
  const { published, largestBacklog } = await publishUntilCutOff(app, 2, 64 * 1024, 1000)
  t.ok(published < 1000, `cut off after ${published} frames`)
  t.ok(largestBacklog <= DEFAULT_LIMITS.maxBufferedBytes, `no client ever had more than maxBufferedBytes waiting (largest ${largestBacklog})`)
  const lines = parseLogs(logs).filter((line) => line.close === 'slowConsumer')
  t.equal(lines.length, 1)
  t.match(lines[0], { code: 1013, userId: 'alice', msg: 'websocket connection closed by server' })
  t.ok(await eventually(() => app.secureWs.stats().connections === 1), 'the slow connection is gone')
  t.same(app.secureWs.stats().store.slots, { bob: 1 })
  t.equal(await eventuallyAsync(async () => await serverConnections(app) === 1), true, 'and its socket with it')

  // Its close frame sat behind what it never read, and was dropped with it.
  slow.ws.resume()
  t.same(await closeOf(slow), { code: 1006, reason: '' }, 'the slow client sees the connection drop')
  t.ok(await eventually(() => read === published + 1), 'the reading subscriber got every frame, the one the slow client missed included')
  t.equal(reader.ws.readyState, reader.ws.OPEN)
  await reader.close()
})

t.test('slow consumer: a raw peer that never reads is cut off at its maxBufferedBytes and the server holds nothing for it', async (t) => {
  const maxBufferedBytes = 256 * 1024
  const built = await build(t, { options: { limits: { maxBufferedBytes } } })
  const { app } = built
  const peer = await subscribedPeer(t, built, 'alice', 'news')
  peer.socket.pause()
  const { published, largestBacklog } = await publishUntilCutOff(app, 1, 16 * 1024, 5000)
  t.ok(published < 5000, `cut off after ${published} frames`)
  t.ok(largestBacklog <= maxBufferedBytes, `never more than ${maxBufferedBytes} waiting (largest ${largestBacklog})`)
  t.equal(await eventuallyAsync(async () => await serverConnections(app) === 0), true, 'its socket is destroyed')
  t.same(app.secureWs.stats().store.slots, {})
  t.ok(await eventually(() => app.secureWs.stats().connections === 0 && app.secureWs.stats().topics === 0), 'no connection or topic is left')
  t.equal(await app.secureWs.publish('news', 'news', { text: 'x' }), 0, 'publish reaches no one')
})

/** Answers every ping the server sends with a pong whose payload is `answer(ping payload)`. */
function answerPings (peer: RawPeer, answer: (nonce: Buffer) => Buffer): { pings: () => number } {
  let answered = 0
  const onData = (): void => {
    const pings = peer.frames().filter((f) => f.opcode === OP.ping)
    for (; answered < pings.length; answered++) peer.write(clientFrame(OP.pong, answer(pings[answered]!.payload)))
  }
  peer.socket.on('data', onData)
  return { pings: () => answered }
}

t.test('heartbeat: unsolicited pongs from a peer that never answers the ping do not keep it alive', async (t) => {
  const BEAT_MS = 150
  const built = await build(t, { options: { heartbeatIntervalMs: BEAT_MS, limits: { connectionsPerUser: 1 } } })
  const peer = rawUpgradePeer(t, built.app, { path: '/ws/alice-1', token: sign('alice') })
  t.equal((await peer.head).status, 101)
  t.ok(await peerAnswersPing(peer))
  // A pong every 40 ms, each with 8 random bytes: more often than the beat, never the nonce.
  const timer = setInterval(() => { peer.write(clientFrame(OP.pong, randomBytes(8))) }, 40)
  t.teardown(() => { clearInterval(timer) })
  t.same(await peer.closeFrame(20 * BEAT_MS), NO_PONG)
  await within(peer.ended, 2000, 'the server ending the socket')
  t.same(peer.frames().map((f) => [f.opcode, f.payload.length]), [[OP.text, 15], [OP.ping, 8], [OP.close, 2 + NO_PONG.reason.length]], 'one ping with an 8-byte nonce, then the close')
  t.same(built.app.secureWs.stats().store.slots, {})
})

t.test('heartbeat: only a pong that echoes the ping\'s nonce counts', async (t) => {
  const BEAT_MS = 150
  const answers: Record<string, (nonce: Buffer) => Buffer> = {
    'an empty pong': () => Buffer.alloc(0),
    'the nonce reversed': (nonce) => Buffer.from(nonce).reverse(),
    'the nonce with a byte more': (nonce) => Buffer.concat([nonce, Buffer.from([0])]),
    'the previous beat\'s nonce': (() => {
      let previous: Buffer = Buffer.alloc(8)
      return (nonce: Buffer) => { const answer = previous; previous = nonce; return answer }
    })()
  }
  for (const [name, answer] of Object.entries(answers)) {
    t.test(name, async (t) => {
      const built = await build(t, { options: { heartbeatIntervalMs: BEAT_MS } })
      const peer = rawUpgradePeer(t, built.app, { path: '/ws/alice-1', token: sign('alice') })
      t.equal((await peer.head).status, 101)
      answerPings(peer, answer)
      t.same(await peer.closeFrame(20 * BEAT_MS), NO_PONG)
      await within(peer.ended, 2000, 'the server ending the socket')
    })
  }

  t.test('the echo itself keeps a peer alive (control)', async (t) => {
    const ANSWERED_BEAT_MS = 300
    const built = await build(t, { options: { heartbeatIntervalMs: ANSWERED_BEAT_MS } })
    const peer = rawUpgradePeer(t, built.app, { path: '/ws/alice-1', token: sign('alice') })
    t.equal((await peer.head).status, 101)
    const answered = answerPings(peer, (nonce) => nonce)
    t.ok(await eventually(() => answered.pings() >= 4, 20 * ANSWERED_BEAT_MS), 'four beats answered')
    t.same(peer.frames().filter((f) => f.opcode === OP.close), [], 'never closed')
    t.ok(await peerAnswersPing(peer), 'still served')
  })
})

t.test('client pings count against the message limits', async (t) => {
  t.test('per second: the 11th ping gets the rate-limit error and the close', async (t) => {
    const { url, logs } = await build(t, { options: { heartbeatIntervalMs: 0 } })
    const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
    for (let i = 0; i < 11; i++) c.ws.ping()
    t.same(await c.next(), RATE_ERROR)
    t.same(await closeOf(c), RATE_LIMITED)
    t.match(parseLogs(logs).filter((line) => line.close === 'rateLimited'), [{ code: 1008, userId: 'alice' }])
  })

  t.test('per minute, on its own', async (t) => {
    const { url } = await build(t, { options: { heartbeatIntervalMs: 0, limits: { messagesPerSecond: 1000, messagesPerMinute: 20 } } })
    const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
    for (let i = 0; i < 21; i++) c.ws.ping()
    t.same(await c.next(), RATE_ERROR)
    t.same(await closeOf(c), RATE_LIMITED)
  })

  t.test('pings and messages share one count', async (t) => {
    const { url } = await build(t, { options: { heartbeatIntervalMs: 0 } })
    const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
    for (let i = 0; i < 5; i++) c.ws.ping()
    for (let i = 0; i < 5; i++) c.send({ type: 'ping' })
    for (let i = 0; i < 5; i++) t.same(await c.next(), { type: 'pong' })
    c.ws.ping()
    t.same(await c.next(), RATE_ERROR)
    t.same(await closeOf(c), RATE_LIMITED)
  })

  t.test('a flood of 10,000 pings in one burst: 11 pongs, the error, the close, and the socket ended', async (t) => {
    const { app } = await build(t, { options: { heartbeatIntervalMs: 0 } })
    const peer = rawUpgradePeer(t, app, { path: '/ws/alice-1', token: sign('alice') })
    t.equal((await peer.head).status, 101)
    peer.write(Buffer.concat(Array.from({ length: 10_000 }, () => clientFrame(OP.ping, 'p'))))
    t.same(await peer.closeFrame(), RATE_LIMITED)
    await within(peer.ended, 2000, 'the server ending the socket')
    // ws answers a ping before the plugin counts it, so the one over the limit is answered too.
    t.same(peer.frames().map((f) => f.opcode), [...Array(11).fill(OP.pong), OP.text, OP.close])
    t.same(textMessages(peer), [RATE_ERROR])
  })

  t.test('nothing of the flood is parsed once the limit closed the connection', async (t) => {
    const { app } = await build(t, { options: { heartbeatIntervalMs: 0 } })
    const parsed = parsedFrames(app)
    const peer = rawUpgradePeer(t, app, { path: '/ws/alice-1', token: sign('alice') })
    t.equal((await peer.head).status, 101)
    peer.write(Buffer.concat(Array.from({ length: 10_000 }, () => clientFrame(OP.ping, 'p'))))
    t.same(await peer.closeFrame(), RATE_LIMITED)
    await within(peer.ended, 2000, 'the server ending the socket')
    t.equal(parsed.count, 11, 'ws parsed the 11 pings up to the one over the limit, and no more')
  })
})

t.test('a flood of unsolicited pongs counts against the message limits', async (t) => {
  const { app } = await build(t, { options: { heartbeatIntervalMs: 0 } })
  const peer = rawUpgradePeer(t, app, { path: '/ws/alice-1', token: sign('alice') })
  t.equal((await peer.head).status, 101)
  peer.write(Buffer.concat(Array.from({ length: 1000 }, () => clientFrame(OP.pong, 'x'))))
  t.same(await peer.closeFrame(3000), RATE_LIMITED)
  t.same(textMessages(peer), [RATE_ERROR])
})

// Shutdown: fastify.close() must resolve within shutdownTimeoutMs plus a margin, whatever the
// clients do. The margin covers a slow, shared machine; the failures it guards against hang for
// Node's 60 s headersTimeout or ws's 30 s close timeout, or for ever.
const SHUTDOWN_MS = 500
const MARGIN_MS = 2000

t.test('shutdown ends whatever the clients do', async (t) => {
  const shutdown = (t: Test): Promise<Built> => build(t, { options: { shutdownTimeoutMs: SHUTDOWN_MS, refusalGraceMs: 60_000 } })
  const closeWithin = (app: FastifyInstance): Promise<void> => within(app.close(), SHUTDOWN_MS + MARGIN_MS, 'fastify.close()')

  /** A TCP client of `app` that writes `bytes` (maybe nothing) and then only waits. */
  const tcpClient = async (t: Test, app: FastifyInstance, bytes: string): Promise<{ ended: Promise<void> }> => {
    const socket = net.connect({ port: portOf(app), host: '127.0.0.1', allowHalfOpen: true })
    t.teardown(() => { socket.destroy() })
    socket.on('error', () => {})
    await new Promise((resolve) => socket.once('connect', resolve))
    if (bytes !== '') socket.write(bytes)
    const ended = new Promise<void>((resolve) => { socket.once('end', resolve); socket.once('close', resolve) })
    return { ended }
  }

  t.test('an idle TCP connection that sent nothing', async (t) => {
    const { app } = await shutdown(t)
    const idle = await tcpClient(t, app, '')
    t.equal(await eventuallyAsync(async () => await serverConnections(app) === 1), true)
    await closeWithin(app)
    await within(idle.ended, 1000, 'the idle connection ended')
  })

  t.test('half-sent HTTP headers', async (t) => {
    const { app } = await shutdown(t)
    const half = await tcpClient(t, app, 'GET /ws/alice-1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n')
    t.equal(await eventuallyAsync(async () => await serverConnections(app) === 1), true)
    await closeWithin(app)
    await within(half.ended, 1000, 'the half-open request ended')
  })

  t.test('a refused socket that never answers its close', async (t) => {
    const { app } = await shutdown(t)
    const refused = rawUpgradePeer(t, app, { path: '/ws/alice-1', token: 'garbage' })
    t.same(await refused.closeFrame(), { code: 4401, reason: 'Invalid or expired authentication token' })
    t.equal(app.secureWs.stats().closing, 1, 'held for its grace (a minute here)')
    await closeWithin(app)
    t.equal(await serverConnections(app), 0)
  })

  t.test('a client that never answers 1001', async (t) => {
    const { app } = await shutdown(t)
    const silent = await silentPeer(t, app, '/ws/alice-1', sign('alice'))
    await closeWithin(app)
    await within(silent.closed, 1000, 'the silent client cut off')
    const close = silent.frames()
    t.equal(close[0], 0x88)
    t.same({ code: close.readUInt16BE(2), reason: close.subarray(4, 2 + close[1]!).toString() }, SHUTTING_DOWN)
  })

  t.test('an upgrade arriving during the drain is answered 503 and ended', async (t) => {
    const built = await shutdown(t)
    const { app } = built
    // A client that never answers holds the drain open for shutdownTimeoutMs.
    await silentPeer(t, app, '/ws/alice-1', sign('alice'))
    const closing = closeWithin(app)
    await eventually(() => app.secureWs.stats().closing === 1)
    const late = rawUpgradePeer(t, app, { path: '/ws/bob-1', token: sign('bob') })
    const head = await late.head
    t.equal(head.status, 503)
    t.equal(head.headers.connection, 'close')
    t.equal(head.headers['content-length'], '0')
    await within(late.ended, 1000, 'the late upgrade\'s socket ended')
    t.same(late.frames(), [], 'never upgraded')
    await closing
    t.equal(await serverConnections(app), 0)
  })

  t.test('all of them at once', async (t) => {
    const built = await shutdown(t)
    const { app } = built
    const idle = await tcpClient(t, app, '')
    const half = await tcpClient(t, app, 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n')
    const refused = rawUpgradePeer(t, app, { path: '/ws/alice-1', token: 'garbage' })
    await refused.closeFrame()
    await silentPeer(t, app, '/ws/alice-1', sign('alice'))
    const paused = await connect(built.url('/ws/bob-1'), { token: sign('bob') })
    t.ok(await paused.admitted())
    paused.ws.pause()
    t.equal(await eventuallyAsync(async () => await serverConnections(app) === 5), true, 'five connections held')
    const closing = closeWithin(app)
    // The refused socket was hung up already; the drain hangs up the two admitted ones.
    await eventually(() => app.secureWs.stats().closing === 3)
    const late = rawUpgradePeer(t, app, { path: '/ws/bob-1', token: sign('bob') })
    t.equal((await late.head).status, 503)
    await closing
    await within(Promise.all([idle.ended, half.ended, refused.ended, late.ended]), 1000, 'every client ended')
    t.equal(await serverConnections(app), 0)
  })
})
