/**
 * The example's heartbeat, as /work/shared/example-contract.md words it: every
 * WS_HEARTBEAT_INTERVAL_MS the server pings each connection; one that has not answered the
 * previous ping when the next is due is closed with 4408 `No answer to ping` and its socket
 * ended, which frees its slot; `0` turns the heartbeat off.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { within } from './helpers.js'
import { startExample } from './example-process.js'
import { NO_ANSWER_TO_PING, PONG, RawPeer, admittedClient, closeOfFrame, tokenSigner } from './example-helpers.js'

const SECRET = 'example-heartbeat-test-secret-0123456789ab'
const sign = tokenSigner(SECRET)
const INTERVAL_MS = 300
// The heartbeat that is off must be watched past the 30 s default, which a bug could fall back to.
const OFF_WATCH_MS = 31_000

// One connection per user, so a slot that is not freed shows as a refused reconnection.
const beating = startExample(t, { WS_JWT_SECRET: SECRET, WS_HEARTBEAT_INTERVAL_MS: String(INTERVAL_MS), WS_MAX_CONNECTIONS_PER_USER: '1' })

/** A client that never answers pings stays connected past the default interval; runs beside the other tests. */
async function heartbeatOffScenario (): Promise<{ pings: number, answer: unknown, pending: unknown[] }> {
  const example = await startExample(t, { WS_JWT_SECRET: SECRET, WS_HEARTBEAT_INTERVAL_MS: '0' })
  const client = await admittedClient(t, example, '/ws/sessions/alice-1', { token: sign({ sub: 'alice' }), autoPong: false })
  await sleep(OFF_WATCH_MS)
  const pending = client.pending
  const answer = await client.ask({ type: 'ping' })
  return { pings: client.pings.length, answer, pending }
}
const heartbeatOff = heartbeatOffScenario().then((result) => ({ result }), (error: unknown) => ({ error, result: undefined }))

t.test('every WS_HEARTBEAT_INTERVAL_MS the server pings each connection; one that answers stays open', async (t) => {
  const example = await beating
  const client = await admittedClient(t, example, '/ws/sessions/alice-1', { token: sign({ sub: 'alice' }) })
  const from = Date.now()
  await sleep(10 * INTERVAL_MS)
  const pings = client.pings.filter((at) => at >= from)
  const watchedMs = Date.now() - from
  t.ok(pings.length >= 5, `${pings.length} pings in ${watchedMs} ms: about one every ${INTERVAL_MS} ms`)
  t.ok(pings.length <= Math.ceil(watchedMs / INTERVAL_MS) + 1, `${pings.length} pings in ${watchedMs} ms: not more than one every ${INTERVAL_MS} ms`)
  t.strictSame(await client.ask({ type: 'ping' }), PONG, 'the connection that answers its pings is still open')
  await client.end()
})

t.test('a ws client that does not answer pings is closed 4408 "No answer to ping", and its slot is freed', async (t) => {
  const example = await beating
  const silent = await admittedClient(t, example, '/ws/sessions/bob-1', { token: sign({ sub: 'bob' }), autoPong: false })
  t.strictSame(await silent.nextEvent(), { kind: 'closed', closed: NO_ANSWER_TO_PING })
  t.ok(silent.pings.length >= 1, 'it was pinged first')
  await admittedClient(t, example, '/ws/sessions/bob-1', { token: sign({ sub: 'bob' }) })
  t.pass('the user, limited to one connection, is admitted again right after')
})

t.test('a peer that answers nothing at all is sent 4408 "No answer to ping", its socket is ended and its slot freed', async (t) => {
  const example = await beating
  const peer = new RawPeer(t, example)
  peer.upgrade('/ws/sessions/alice-1', sign({ sub: 'alice' }), example.origin)
  t.match(await peer.head(), /^HTTP\/1\.1 101 /)
  // It never reads its close, never answers; only the server ending the socket frees the slot.
  await within(peer.ended, 10_000, 'the server ending the socket')
  const frames = peer.frames()
  t.ok(frames.some((frame) => frame.opcode === 0x9), 'it was pinged first')
  const close = frames.find((frame) => frame.opcode === 0x8)
  t.ok(close !== undefined, 'a close frame was sent')
  if (close !== undefined) t.strictSame(closeOfFrame(close), NO_ANSWER_TO_PING)
  await admittedClient(t, example, '/ws/sessions/alice-1', { token: sign({ sub: 'alice' }) })
  t.pass('the user, limited to one connection, is admitted again right after')
})

t.test('WS_HEARTBEAT_INTERVAL_MS=0 turns the heartbeat off: no ping, a client that would not answer stays open', async (t) => {
  const outcome = await within(heartbeatOff, OFF_WATCH_MS + 30_000, 'heartbeat-off scenario')
  if (outcome.result === undefined) throw outcome.error
  const { pings, answer, pending } = outcome.result
  t.equal(pings, 0, `no ping in ${OFF_WATCH_MS} ms`)
  t.strictSame(pending, [], 'nothing else arrived either')
  t.strictSame(answer, PONG, 'the connection is still open')
})
