// Attack table, part 5: an app that turns permessage-deflate on, and a compression bomb: a
// frame that is small on the wire and inflates far past limits.maxPayloadBytes. Its own file,
// as it measures the process's memory.
import { Writable } from 'node:stream'
import zlib from 'node:zlib'
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import websocket from '@fastify/websocket'
import secureWs from '../lib/index.js'
import { ORIGIN, SECRET, connect, parseLogs, sign, testRoute } from './helpers.js'
import { OP, clientFrame, peerAnswersPing, portOf, rawUpgradePeer, textMessages } from './frames.js'

const MAX_PAYLOAD_BYTES = 64 * 1024
const INFLATED_BYTES = 32 * 1024 * 1024
// Far above what inflating maxPayloadBytes costs, far below the bomb's 32 MiB.
const MEMORY_BOUND = 16 * 1024 * 1024

/**
 * A raw-deflate payload (what permessage-deflate sends, less the final 00 00 ff ff) of
 * `inflated` spaces, made from one reused buffer so that the test holds no copy of them.
 */
async function bomb (inflated: number): Promise<Buffer> {
  const deflate = zlib.createDeflateRaw({ level: 9 })
  const chunks: Buffer[] = []
  deflate.on('data', (chunk: Buffer) => { chunks.push(chunk) })
  const spaces = Buffer.alloc(1024 * 1024, 0x20)
  for (let written = 0; written < inflated; written += spaces.length) deflate.write(spaces)
  await new Promise<void>((resolve) => { deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => resolve()) })
  deflate.close()
  const all = Buffer.concat(chunks)
  return all.subarray(0, all.length - 4)
}

/** An app that registers @fastify/websocket itself, with compression on, before the plugin. */
async function deflateApp (t: Test, wsOptions: Record<string, unknown>): Promise<{ app: FastifyInstance, logs: string[] }> {
  const logs: string[] = []
  const app = Fastify({ logger: { level: 'info', stream: new Writable({ write (chunk, _enc, cb) { logs.push(chunk.toString()); cb() } }) } })
  await app.register(websocket, { options: { perMessageDeflate: true, ...wsOptions } })
  await app.register(secureWs, { origins: [ORIGIN], jwt: { key: SECRET, algorithms: ['HS256'] } })
  app.secureWs.route(testRoute())
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  return { app, logs }
}

/** The largest growth of the process's ArrayBuffer memory (where frames live) while `run` runs. */
async function peakGrowth (run: () => Promise<void>): Promise<number> {
  const base = process.memoryUsage().arrayBuffers
  let peak = 0
  const sample = (): void => { peak = Math.max(peak, process.memoryUsage().arrayBuffers - base) }
  const timer = setInterval(sample, 2)
  try {
    await run()
  } finally {
    clearInterval(timer)
  }
  sample()
  return peak
}

/** Sends the bomb over a connection that negotiated permessage-deflate; returns the close and the memory it cost. */
async function detonate (t: Test, app: FastifyInstance, payload: Buffer): Promise<{ close: { code: number, reason: string }, growth: number }> {
  // Without context takeover ws leaves frames under its 1 KiB threshold uncompressed, so this
  // peer can read the server's small answers as they are.
  const peer = rawUpgradePeer(t, app, { path: '/ws/alice-1', token: sign('alice'), extraHeaders: ['Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover'] })
  const head = await peer.head
  t.equal(head.status, 101)
  t.equal(head.headers['sec-websocket-extensions'], 'permessage-deflate; server_no_context_takeover', 'compression negotiated')
  t.ok(await peerAnswersPing(peer), 'admitted')
  let close = { code: 0, reason: '' }
  const growth = await peakGrowth(async () => {
    peer.write(clientFrame(OP.text, payload, { rsv1: true }))
    close = await peer.closeFrame(20_000)
    await peer.ended
  })
  t.same(textMessages(peer), [{ type: 'pong' }], 'the bomb produced no message')
  return { close, growth }
}

t.test('compression bombs', async (t) => {
  const payload = await bomb(INFLATED_BYTES)
  t.ok(payload.length < MAX_PAYLOAD_BYTES, `the bomb is ${payload.length} bytes on the wire, under maxPayloadBytes`)

  t.test('with the app\'s maxPayload at maxPayloadBytes: 1009 from ws, inflation stops at the limit', async (t) => {
    const { app, logs } = await deflateApp(t, { maxPayload: MAX_PAYLOAD_BYTES })
    const { close, growth } = await detonate(t, app, payload)
    t.same(close, { code: 1009, reason: '' })
    t.ok(growth < MEMORY_BOUND, `memory grew ${(growth / 1048576).toFixed(1)} MiB inflating a ${INFLATED_BYTES / 1048576} MiB bomb`)
    t.match(parseLogs(logs).filter((line) => line.msg === 'Max payload size exceeded'), [{ err: { code: 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' } }])

    const c = await connect(`ws://127.0.0.1:${portOf(app)}/ws/bob-1`, { token: sign('bob') })
    t.equal(c.ws.extensions, 'permessage-deflate', 'a well-behaved client still gets compression')
    c.send({ type: 'echo', payload: { text: 'a'.repeat(100) } })
    t.same(await c.next(), { type: 'echo', text: 'a'.repeat(100) }, 'and is served')
    await c.close()
  })

  t.test('with the app leaving ws\'s maxPayload at its default: the bomb is still bounded by maxPayloadBytes', async (t) => {
    const { app } = await deflateApp(t, {})
    const { close, growth } = await detonate(t, app, payload)
    t.equal(close.code, 1009)
    t.ok(growth < MEMORY_BOUND, `memory grew ${(growth / 1048576).toFixed(1)} MiB inflating a ${INFLATED_BYTES / 1048576} MiB bomb`)
  })
})
