/**
 * The example's SIGTERM line of /work/shared/example-contract.md ("every open WebSocket gets
 * close code 1001, the process exits 0 within 5 s") with hostile clients connected: one that
 * never answers the close, a TCP connection that sent half its request headers, one that
 * sent nothing.
 */
import t from 'tap'
import { within } from './helpers.js'
import { startExample } from './example-process.js'
import { RawPeer, SHUTTING_DOWN, admittedClient, closeOfFrame, exitOf, scrapeMetrics, tokenSigner, upgradeRequest } from './example-helpers.js'

const SECRET = 'example-shutdown-test-secret-0123456789abc'
const sign = tokenSigner(SECRET)

t.test('SIGTERM with hostile clients connected: 1001 to every open WebSocket, exit 0 within 5 s', async (t) => {
  const example = await startExample(t, { WS_JWT_SECRET: SECRET })
  const polite = await admittedClient(t, example, '/ws/sessions/bob-1', { token: sign({ sub: 'bob' }) })

  // Upgraded, then deaf: it reads what comes but never answers, not even the close or the FIN.
  const deaf = new RawPeer(t, example)
  deaf.upgrade('/ws/sessions/alice-1', sign({ sub: 'alice' }), example.origin)
  t.match(await deaf.head(), /^HTTP\/1\.1 101 /, 'the deaf client is upgraded')

  const halfHeaders = new RawPeer(t, example)
  halfHeaders.socket.write(upgradeRequest('/ws/sessions/alice-1', sign({ sub: 'alice' }), example.origin).slice(0, 60))
  const silent = new RawPeer(t, example)
  await Promise.all([halfHeaders, silent].map(async (peer) => await new Promise((resolve) => {
    if (peer.socket.readyState === 'open') resolve(undefined)
    else peer.socket.once('connect', resolve)
  })))
  t.equal((await scrapeMetrics(example)).values.get('secure_ws_connections'), 2, 'both WebSockets are admitted')
  t.equal(halfHeaders.received.length + silent.received.length, 0, 'the other two got no answer yet')

  const signalledAt = Date.now()
  example.child.kill('SIGTERM')
  const exit = await within(exitOf(example), 5000, 'exit after SIGTERM')
  t.comment(`exited ${Date.now() - signalledAt} ms after SIGTERM`)
  t.strictSame(exit, { code: 0, signal: null }, 'exit code 0 within 5 s')

  t.strictSame(await within(polite.closed, 2000, 'the polite client\'s close'), SHUTTING_DOWN, 'the polite client gets 1001')
  await within(deaf.ended, 2000, 'the deaf client\'s connection ending')
  const close = deaf.frames().find((frame) => frame.opcode === 0x8)
  t.strictSame(close === undefined ? 'no close frame' : closeOfFrame(close), SHUTTING_DOWN, 'the deaf client gets 1001')
  for (const peer of [halfHeaders, silent]) await within(peer.ended, 2000, 'the idle connection ending')
  t.pass('the half-headers and silent connections are ended')
})
