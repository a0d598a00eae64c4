/**
 * The example's price feed, as /work/shared/example-contract.md words it: `subscribe` to
 * `prices` is answered `subscribed`, then every WS_PRICE_INTERVAL_MS (default 1000) comes a
 * `price` frame with exactly `symbol` 'BTC-USD', `seq` (an integer, +1 each tick), 20 `bids`
 * and 20 `asks` of [price, size] numbers; `unsubscribe` is answered `unsubscribed` and no
 * `price` follows it.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { startExample } from './example-process.js'
import { PONG, admittedClient, tokenSigner, type ExampleClient } from './example-helpers.js'

const SECRET = 'example-prices-test-secret-0123456789abcde'
const sign = tokenSigner(SECRET)
const INTERVAL_MS = 200
const SUBSCRIBE = { type: 'subscribe', payload: { channel: 'prices' } }
const UNSUBSCRIBE = { type: 'unsubscribe', payload: { channel: 'prices' } }

const fast = startExample(t, { WS_JWT_SECRET: SECRET, WS_PRICE_INTERVAL_MS: String(INTERVAL_MS) })

interface Price {
  type: 'price'
  data: { symbol: string, seq: number, bids: unknown[], asks: unknown[] }
}

const isLevel = (level: unknown): boolean => Array.isArray(level) && level.length === 2 && level.every((n) => typeof n === 'number' && Number.isFinite(n))

/** Takes `count` frames, each checked to be a price frame of exactly the contract's shape, and notes when each came. */
async function takePrices (t: Test, client: ExampleClient, count: number): Promise<Array<{ price: Price, at: number }>> {
  const taken: Array<{ price: Price, at: number }> = []
  for (let i = 0; i < count; i++) {
    const frame = await client.next(5000) as Price
    const at = Date.now()
    t.strictSame(Object.keys(frame).sort(), ['data', 'type'], 'a price frame has type and data only')
    t.equal(frame.type, 'price')
    t.strictSame(Object.keys(frame.data ?? {}).sort(), ['asks', 'bids', 'seq', 'symbol'], 'data has symbol, seq, bids and asks only')
    t.equal(frame.data.symbol, 'BTC-USD')
    t.ok(Number.isSafeInteger(frame.data.seq), 'seq is an integer')
    t.ok(Array.isArray(frame.data.bids) && frame.data.bids.length === 20, '20 bids')
    t.ok(Array.isArray(frame.data.asks) && frame.data.asks.length === 20, '20 asks')
    t.ok([...frame.data.bids, ...frame.data.asks].every(isLevel), 'each level is [number, number]')
    taken.push({ price: frame, at })
  }
  return taken
}

/** Asserts that seq goes up by one from each price to the next and that they came about every `intervalMs`. */
function assertTicks (t: Test, taken: Array<{ price: Price, at: number }>, intervalMs: number): void {
  const seqs = taken.map(({ price }) => price.data.seq)
  t.strictSame(seqs, seqs.map((_, i) => seqs[0]! + i), 'seq goes up by one each tick')
  const meanGap = (taken.at(-1)!.at - taken[0]!.at) / (taken.length - 1)
  t.ok(meanGap >= intervalMs * 0.75 && meanGap <= intervalMs * 1.5, `one price about every ${intervalMs} ms (mean gap ${meanGap.toFixed(0)} ms)`)
}

t.test('subscribe to prices: subscribed, then a price frame of the listed fields every WS_PRICE_INTERVAL_MS', async (t) => {
  const example = await fast
  const client = await admittedClient(t, example, '/ws/sessions/alice-1', { token: sign({ sub: 'alice' }) })
  t.strictSame(await client.ask(SUBSCRIBE), { type: 'subscribed', channel: 'prices' })
  assertTicks(t, await takePrices(t, client, 11), INTERVAL_MS)
})

t.test('a connection that has not subscribed gets no price', async (t) => {
  const example = await fast
  const client = await admittedClient(t, example, '/ws/sessions/bob-1', { token: sign({ sub: 'bob' }) })
  await sleep(5 * INTERVAL_MS)
  t.strictSame(client.pending, [], 'nothing arrived unasked')
  t.strictSame(await client.ask({ type: 'ping' }), PONG)
})

t.test('unsubscribe from prices: unsubscribed, and no price after it', async (t) => {
  const example = await fast
  const client = await admittedClient(t, example, '/ws/sessions/alice-1', { token: sign({ sub: 'alice' }) })
  t.strictSame(await client.ask(SUBSCRIBE), { type: 'subscribed', channel: 'prices' })
  await takePrices(t, client, 2)
  client.send(UNSUBSCRIBE)
  // Prices already on their way before the answer are fine; none may follow it.
  t.strictSame(await client.nextExceptPrice(), { type: 'unsubscribed', channel: 'prices' })
  await sleep(5 * INTERVAL_MS)
  client.send({ type: 'ping' })
  t.strictSame(await client.next(), PONG, 'the next frame after unsubscribed, five ticks later, is the pong: no price')
})

t.test('WS_PRICE_INTERVAL_MS defaults to 1000', async (t) => {
  const example = await startExample(t, { WS_JWT_SECRET: SECRET })
  const client = await admittedClient(t, example, '/ws/sessions/bob-1', { token: sign({ sub: 'bob' }) })
  t.strictSame(await client.ask(SUBSCRIBE), { type: 'subscribed', channel: 'prices' })
  assertTicks(t, await takePrices(t, client, 4), 1000)
})
