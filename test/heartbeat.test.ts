import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import type { WebSocket } from 'ws'
import { build, closeOf, connect, eventually, parseLogs, sign, silentPeer, within } from './helpers.js'

const NO_PONG = { code: 4408, reason: 'No answer to ping' }
// Short beats where the client never answers; longer ones where an answering client must not
// be cut off, since its pong has to come back through this loaded process within one beat.
const BEAT_MS = 150
const ANSWERED_BEAT_MS = 500

/** A client close frame (masked, as RFC 6455 requires of clients) with `code`. */
function maskedClose (code: number): Buffer {
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78])
  const payload = Buffer.alloc(2)
  payload.writeUInt16BE(code)
  for (let i = 0; i < payload.length; i++) payload[i] = payload[i]! ^ mask[i % 4]!
  return Buffer.concat([Buffer.from([0x88, 0x80 | payload.length]), mask, payload])
}

/** The server side of every socket @fastify/websocket upgrades from now on (the plugin keeps its own out of ws's client set). */
function serverSocketsOf (app: FastifyInstance): WebSocket[] {
  const sockets: WebSocket[] = []
  app.websocketServer.on('connection', (socket: WebSocket) => { sockets.push(socket) })
  return sockets
}

t.test('a client that never answers pings is closed with 4408 and cut off, and its slot is free again', async (t) => {
  const { app, url, logs } = await build(t, { options: { heartbeatIntervalMs: BEAT_MS, limits: { connectionsPerUser: 1 } } })
  const silent = await connect(url('/ws/alice-1'), { token: sign('alice'), autoPong: false })
  let pings = 0
  silent.ws.on('ping', () => { pings++ })
  silent.send({ type: 'ping' })
  t.same(await silent.next(), { type: 'pong' }, 'admitted')

  t.same(await closeOf(silent, 20 * BEAT_MS), NO_PONG)
  t.equal(pings, 1, 'one ping went unanswered before the close')
  await eventually(() => app.secureWs.stats().connections === 0)
  t.same(app.secureWs.stats().store.slots, {}, 'the slot is released')

  const again = await connect(url('/ws/alice-1'), { token: sign('alice') })
  again.send({ type: 'ping' })
  t.same(await again.next(), { type: 'pong' }, 'the user, at its limit of one, connects again')
  await again.close()

  const lines = parseLogs(logs).filter((line) => line.close === 'heartbeatTimeout')
  t.equal(lines.length, 1, 'logged once')
  t.equal(lines[0]?.userId, 'alice')
  t.equal(lines[0]?.code, 4408)
  t.match(lines[0]?.connectionId, /^c/)
})

t.test('a peer that answers nothing at all, not even the close, is cut off without waiting for it', async (t) => {
  const { app } = await build(t, { options: { heartbeatIntervalMs: BEAT_MS, limits: { connectionsPerUser: 1 } } })
  // What a vanished peer looks like, except that its TCP stack is still there to observe.
  const peer = await silentPeer(t, app, '/ws/alice-1', sign('alice'))
  t.equal(app.secureWs.stats().connections, 1)

  // ws would wait 30 s for the answer to its close frame; the slot must not.
  await within(peer.closed, 20 * BEAT_MS, 'the server ending the silent peer')
  await eventually(() => app.secureWs.stats().connections === 0)
  t.same(app.secureWs.stats().store.slots, {}, 'the slot is released')

  // After the handshake: one ping (0x89) carrying the beat's 8-byte nonce, then the close frame 4408.
  const frames = peer.frames()
  t.same([...frames.subarray(0, 2)], [0x89, 8], 'a ping with a nonce')
  const close = frames.subarray(10)
  t.equal(close[0], 0x88, 'then a close frame')
  t.equal(close.readUInt16BE(2), NO_PONG.code)
  t.equal(close.subarray(4, 2 + close[1]!).toString(), NO_PONG.reason)
})

t.test('a client that answers pings stays open through many beats', async (t) => {
  const { app, url } = await build(t, { options: { heartbeatIntervalMs: ANSWERED_BEAT_MS } })
  const serverSockets = serverSocketsOf(app)
  const client = await connect(url('/ws/alice-1'), { token: sign('alice') })
  let pings = 0
  client.ws.on('ping', () => { pings++ })
  await within(eventually(() => pings >= 4, 10 * ANSWERED_BEAT_MS), 12 * ANSWERED_BEAT_MS, 'four pings')
  t.ok(pings >= 4, `${pings} pings answered`)
  t.same(serverSockets.map((socket) => socket.listenerCount('pong')), [1], 'the server listens for pongs')
  t.equal(client.ws.readyState, client.ws.OPEN, 'still open')
  client.send({ type: 'ping' })
  t.same(await client.next(), { type: 'pong' }, 'and still served')
  await client.close()
})

t.test('only the silent one of a user\'s connections is cut off', async (t) => {
  const { app, url } = await build(t, { options: { heartbeatIntervalMs: ANSWERED_BEAT_MS } })
  const answering = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const silent = await connect(url('/ws/alice-1'), { token: sign('alice'), autoPong: false })
  t.same(await closeOf(silent, 10 * ANSWERED_BEAT_MS), NO_PONG)
  await delay(2 * ANSWERED_BEAT_MS)
  t.equal(answering.ws.readyState, answering.ws.OPEN)
  t.same(app.secureWs.stats().users, { alice: 1 })
  await answering.close()
})

t.test('a client that has sent its close is left to finish it, not cut off as silent', async (t) => {
  const { app, logs } = await build(t, { options: { heartbeatIntervalMs: BEAT_MS } })
  const peer = await silentPeer(t, app, '/ws/alice-1', sign('alice'))
  peer.write(maskedClose(1000))
  // ws answers the close and ends its side; the peer never ends its own, so the connection
  // stays half-closed (until ws's own 30 s close timeout) through many beats.
  await within(peer.closed, 20 * BEAT_MS, 'the server answering the close')
  t.same([...peer.frames().subarray(-4)], [0x88, 2, 0x03, 0xe8], 'the server answered 1000')
  await delay(6 * BEAT_MS)
  t.same(parseLogs(logs).filter((line) => line.close === 'heartbeatTimeout'), [], 'no 4408 for a close the client started')
})

// The default (30 s) cannot show in a short test; this shows that 0 is off rather than a
// zero-length beat, which would cut a silent client off within milliseconds.
t.test('heartbeatIntervalMs: 0 sends no pings', async (t) => {
  const { app, url } = await build(t, { options: { heartbeatIntervalMs: 0 } })
  const serverSockets = serverSocketsOf(app)
  const silent = await connect(url('/ws/alice-1'), { token: sign('alice'), autoPong: false })
  let pings = 0
  silent.ws.on('ping', () => { pings++ })
  await delay(1000)
  t.equal(pings, 0)
  t.same(serverSockets.map((socket) => socket.listenerCount('pong')), [1], 'pongs are still listened for: an unsolicited one counts as a message')
  t.equal(silent.ws.readyState, silent.ws.OPEN, 'a client that never answers stays open')
  await silent.close()
})
