/**
 * Slow consumers in the example, as /work/shared/example-contract.md words it: a connection
 * with more than WS_MAX_BUFFERED_BYTES of outbound data waiting (a client that stopped
 * reading) is closed with 1013 `Slow consumer` and its socket ended right after, so a client
 * that is not reading may see only the connection drop; the server's memory stays bounded;
 * other subscribers are not slowed.
 *
 * The silent clients are raw TCP WebSocket clients that subscribe to `prices` and then never
 * read again; the feed ticks every millisecond, so the kernel's socket buffers (a few MB
 * per connection) fill within seconds and the server's own buffer grows past the limit.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { within } from './helpers.js'
import { startExample } from './example-process.js'
import { PONG, RawPeer, SLOW_CONSUMER, admittedClient, closeOfFrame, rssBytes, scrapeMetrics, tokenSigner } from './example-helpers.js'

const SECRET = 'example-slow-consumer-secret-0123456789abc'
const sign = tokenSigner(SECRET)
const SILENT = 4
const SUBSCRIBE = JSON.stringify({ type: 'subscribe', payload: { channel: 'prices' } })
const SLOW_CONSUMERS = 'secure_ws_closes_total{reason="slowConsumer"}'
// Four silent clients may hold 64 KiB each; a server that kept buffering for them would
// grow by megabytes a second (a price is ~750 B, a thousand a second, per client).
const MEMORY_BOUND = 64 * 1024 * 1024

t.test('a prices subscriber that stops reading is cut off; memory stays bounded; another subscriber keeps getting prices', async (t) => {
  const example = await startExample(t, {
    WS_JWT_SECRET: SECRET,
    WS_PRICE_INTERVAL_MS: '1',
    WS_MAX_BUFFERED_BYTES: '65536',
    WS_MAX_CONNECTIONS_PER_USER: String(SILENT)
  })
  const pid = example.child.pid!

  // The subscriber that reads: every price it gets, with when.
  const reader = await admittedClient(t, example, '/ws/sessions/bob-1', { token: sign({ sub: 'bob' }) })
  const prices: Array<{ seq: number, at: number }> = []
  reader.ws.on('message', (data: Buffer) => {
    const frame = JSON.parse(data.toString()) as { type: string, data: { seq: number } }
    if (frame.type === 'price') prices.push({ seq: frame.data.seq, at: Date.now() })
  })
  t.strictSame(await reader.ask(SUBSCRIBE), { type: 'subscribed', channel: 'prices' })
  await sleep(1000)
  const baselineRss = rssBytes(pid)
  const baselineFrom = prices[0]?.at ?? Date.now()
  const baselineRate = prices.length / ((Date.now() - baselineFrom) / 1000)
  t.ok(prices.length > 100, `the reader gets prices (${baselineRate.toFixed(0)} a second)`)

  const peers: RawPeer[] = []
  for (let i = 0; i < SILENT; i++) {
    const peer = new RawPeer(t, example)
    peer.upgrade('/ws/sessions/alice-1', sign({ sub: 'alice' }), example.origin)
    t.match(await peer.head(), /^HTTP\/1\.1 101 /, `silent client ${i + 1}: upgraded`)
    peer.sendText(SUBSCRIBE)
    peer.socket.pause()
    peers.push(peer)
  }
  const silentFrom = Date.now()
  const fromPrice = prices.length

  // Until the server has cut all of them off (at most 30 s), watching its memory.
  let maxRss = baselineRss
  let page = await scrapeMetrics(example)
  for (const deadline = Date.now() + 30_000; page.values.get(SLOW_CONSUMERS) !== SILENT && Date.now() < deadline; page = await scrapeMetrics(example)) {
    await sleep(250)
    maxRss = Math.max(maxRss, rssBytes(pid))
  }
  const silentFor = Date.now() - silentFrom
  t.equal(page.values.get(SLOW_CONSUMERS), SILENT, `all ${SILENT} silent clients were closed as slow consumers (after ${silentFor} ms)`)
  t.equal(page.values.get('secure_ws_connections'), 1, 'only the reader is still connected')
  // Silent a while longer: nothing is left to buffer for them.
  await sleep(1000)
  maxRss = Math.max(maxRss, rssBytes(pid))
  t.ok(maxRss - baselineRss < MEMORY_BOUND, `the server's memory grew by ${((maxRss - baselineRss) / 1e6).toFixed(1)} MB at most`)

  const during = prices.slice(fromPrice)
  const rateDuring = during.length / ((Date.now() - silentFrom) / 1000)
  t.ok(rateDuring >= baselineRate / 2, `the reader kept getting prices: ${rateDuring.toFixed(0)} a second, ${baselineRate.toFixed(0)} before`)
  const seqs = prices.map(({ seq }) => seq)
  t.strictSame(seqs.filter((seq, i) => i > 0 && seq !== seqs[i - 1]! + 1), [], 'the reader missed no tick')
  reader.send({ type: 'ping' })
  t.strictSame(await reader.nextExceptPrice(), PONG, 'the reader is still served')

  // Reading again, each silent client finds its connection ended, after whatever was written.
  for (const [i, peer] of peers.entries()) {
    peer.socket.resume()
    await within(peer.ended, 10_000, `silent client ${i + 1}: the connection drops`)
    const frames = peer.frames()
    t.strictSame(JSON.parse(frames[0]?.payload.toString() ?? 'null'), { type: 'subscribed', channel: 'prices' }, `silent client ${i + 1}: subscribed first`)
    const close = frames.findIndex((frame) => frame.opcode === 0x8)
    if (close >= 0) {
      t.strictSame(closeOfFrame(frames[close]!), SLOW_CONSUMER, `silent client ${i + 1}: its close frame, if it got one, is 1013 "Slow consumer"`)
      t.equal(close, frames.length - 1, `silent client ${i + 1}: nothing after the close frame`)
    }
  }
})
