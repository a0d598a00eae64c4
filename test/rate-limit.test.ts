import t from 'tap'
import { EXACT_LIMIT_MAX, RateCounter, SlidingWindowCounter, MINUTE_MS, SECOND_MS } from '../lib/rate-window.js'
import { memoryStore } from '../lib/index.js'
import { build, connect, eventually, sign, type BuildOptions, type Client } from './helpers.js'

const RATE_ERROR = { type: 'error', message: 'Rate limit exceeded. Connection closed.' }
const RATE_CLOSE = { code: 1008, reason: 'Rate limit exceeded' }
const PONG = { type: 'pong' }

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

async function open (t: tap.Test, url: (path: string) => string, user = 'alice'): Promise<Client> {
  const c = await connect(url(`/ws/${user}-1`), { token: sign(user) })
  t.teardown(() => c.close())
  t.equal(await c.opened, true, `${user} connected`)
  return c
}

async function server (t: tap.Test, options: BuildOptions['options'] = {}): Promise<(path: string) => string> {
  return (await build(t, { options })).url
}

/** Sends `n` pings at once and expects `n` pongs. */
async function pings (t: tap.Test, c: Client, n: number, what: string): Promise<void> {
  for (let i = 0; i < n; i++) c.send({ type: 'ping' })
  for (let i = 0; i < n; i++) t.strictSame(await c.next(), PONG, `${what}: ping ${i + 1} answered`)
}

/** The next frame is the rate-limit error, then the connection closes with 1008. */
async function rateLimited (t: tap.Test, c: Client): Promise<void> {
  t.strictSame(await c.next(), RATE_ERROR, 'the rate-limit error frame')
  t.strictSame(await c.closed, RATE_CLOSE, 'closed with 1008 "Rate limit exceeded"')
}

t.test('over a real connection', async (t) => {
  t.test('10 pings in a burst are answered; the 11th closes the connection', async (t) => {
    const c = await open(t, await server(t))
    for (let i = 0; i < 11; i++) c.send({ type: 'ping' })
    for (let i = 0; i < 10; i++) t.strictSame(await c.next(), PONG, `ping ${i + 1} answered`)
    await rateLimited(t, c)
    t.strictSame(c.pending, [], 'nothing after the error frame')
  })

  t.test('invalid frames count against the limit too', async (t) => {
    const c = await open(t, await server(t))
    for (let i = 0; i < 11; i++) c.send('{not json')
    for (let i = 0; i < 10; i++) t.strictSame(await c.next(), { type: 'error', message: 'Invalid JSON' }, `frame ${i + 1} refused as Invalid JSON`)
    await rateLimited(t, c)
  })

  t.test('the limit is per user, across connections, and other users are unaffected', async (t) => {
    const url = await server(t)
    const a1 = await open(t, url)
    const a2 = await open(t, url)
    const bob = await open(t, url, 'bob')
    await pings(t, a1, 6, 'first alice connection')
    for (let i = 0; i < 6; i++) a2.send({ type: 'ping' })
    for (let i = 0; i < 4; i++) t.strictSame(await a2.next(), PONG, `second alice connection: ping ${i + 1} answered`)
    await rateLimited(t, a2)
    await pings(t, bob, 10, 'bob')
    t.equal(bob.ws.readyState, bob.ws.OPEN, 'bob still connected')
  })

  t.test('the window slides: 6 + 6 within one second is too many even across a second boundary', async (t) => {
    const c = await open(t, await server(t))
    await pings(t, c, 6, 'first burst')
    await sleep(600)
    for (let i = 0; i < 6; i++) c.send({ type: 'ping' })
    for (let i = 0; i < 4; i++) t.strictSame(await c.next(), PONG, `second burst: ping ${i + 1} answered`)
    await rateLimited(t, c)
  })

  t.test('bursts of 10 more than a second apart are all answered', async (t) => {
    const c = await open(t, await server(t))
    await pings(t, c, 10, 'first burst')
    await sleep(1150)
    await pings(t, c, 10, 'second burst')
    t.equal(c.ws.readyState, c.ws.OPEN, 'still connected')
  })

  t.test('a counter stays while a connection holds it, however idle, and goes once unheld and idle', async (t) => {
    let now = Date.now()
    const store = memoryStore({ now: () => now, sweepIntervalMs: 5 })
    const { app, url } = await build(t, { options: { store, limits: { messagesPerSecond: 3, messagesPerMinute: 100 } } })
    const a1 = await open(t, url)
    t.equal(app.secureWs.stats().store.rateCounters, 1, 'held from the moment alice connects')
    now += 5 * MINUTE_MS
    await sleep(50)
    t.equal(app.secureWs.stats().store.rateCounters, 1, 'kept through sweeps while held, though idle for minutes')
    const a2 = await open(t, url)
    await pings(t, a1, 2, 'first alice connection')
    a2.send({ type: 'ping' })
    a2.send({ type: 'ping' })
    t.strictSame(await a2.next(), PONG, 'second connection: its first ping, the third of this second, is answered')
    // A counter swept while held would give the second connection counts of its own.
    await rateLimited(t, a2)
    await a1.close()
    t.ok(await eventually(() => app.secureWs.stats().connections === 0), 'both connections ended')
    await sleep(50)
    t.equal(app.secureWs.stats().store.rateCounters, 1, 'kept while it still holds this minute\'s counts')
    now += 2 * MINUTE_MS
    t.ok(await eventually(() => app.secureWs.stats().store.rateCounters === 0), 'swept once nobody holds it and it is idle')
  })

  t.test('the per-minute limit applies on its own', async (t) => {
    const c = await open(t, await server(t, { limits: { messagesPerSecond: 100, messagesPerMinute: 15 } }))
    for (let i = 0; i < 16; i++) c.send({ type: 'ping' })
    for (let i = 0; i < 15; i++) t.strictSame(await c.next(), PONG, `ping ${i + 1} answered`)
    await rateLimited(t, c)
  })

  t.end()
})

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32). */
function random (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

/** Most accepted events in any closed span [s, s + windowMs], by brute force. */
function busiestSpan (accepted: number[], windowMs: number): number {
  let most = 0
  for (let i = 0; i < accepted.length; i++) {
    let n = 0
    for (let j = i; j < accepted.length && accepted[j]! <= accepted[i]! + windowMs; j++) n++
    most = Math.max(most, n)
  }
  return most
}

/** Accepted events in (now - span, now]. */
function recent (accepted: number[], now: number, span: number): number {
  return accepted.filter((at) => at > now - span && at <= now).length
}

t.test('a client that keeps to the limit over every one-second window is never refused', async (t) => {
  // One ping every 104 ms: at most 10 in any second, though 11 fall within 1050 ms, which a
  // bucketed window (refusing up to one 50 ms bucket early) would close.
  const url = await server(t)
  const c = await open(t, url)
  for (let i = 0; i < 25; i++) {
    const sent = Date.now()
    c.send({ type: 'ping' })
    t.same(await c.next(), PONG, `ping ${i + 1} answered`)
    await sleep(104 - (Date.now() - sent))
  }
})

t.test('SlidingWindowCounter / RateCounter with explicit clocks', async (t) => {
  // Limits up to EXACT_LIMIT_MAX keep every event's time: never more than the limit in any
  // closed span of the window, and never a refusal while that span has room.
  t.test('never more than the limit within any one-second span, and no early refusal (property, brute force)', async (t) => {
    for (const seed of [1, 2, 3, 42, 2024]) {
      const next = random(seed)
      const limit = 1 + Math.floor(next() * 15)
      const limits = { messagesPerSecond: limit, messagesPerMinute: 1_000_000 }
      const counter = new RateCounter(limits)
      const accepted: number[] = []
      let refusedWithRoom = 0
      let now = 1_700_000_000_000 + Math.floor(next() * 1000)
      for (let i = 0; i < 3000; i++) {
        // Mostly bursts, sometimes pauses longer than the window.
        const r = next()
        now += r < 0.7 ? Math.floor(next() * 20) : r < 0.95 ? Math.floor(next() * 300) : 1000 + Math.floor(next() * 1500)
        if (counter.tryConsume(now)) accepted.push(now)
        else if (recent(accepted, now, SECOND_MS + 1) < limit) refusedWithRoom++
      }
      t.ok(busiestSpan(accepted, SECOND_MS) <= limit, `seed ${seed}: at most ${limit} in any span of 1000 ms (accepted ${accepted.length})`)
      t.equal(refusedWithRoom, 0, `seed ${seed}: never refused while the last second had room`)
      t.ok(accepted.length > limit, `seed ${seed}: the sequence exercised more than one window`)
    }
  })

  // Larger limits use buckets: still never more than the limit in any span, at the price of
  // refusing up to one bucket (50 ms) early.
  t.test('limits above EXACT_LIMIT_MAX: never more than the limit in any one-second span (property, brute force)', async (t) => {
    const next = random(11)
    const limit = EXACT_LIMIT_MAX + 72
    const limits = { messagesPerSecond: limit, messagesPerMinute: 1_000_000 }
    const counter = new RateCounter(limits)
    const accepted: number[] = []
    let refusedWithRoom = 0
    let now = 0
    for (let i = 0; i < 20_000; i++) {
      const r = next()
      now += r < 0.9 ? Math.floor(next() * 4) : 1000 + Math.floor(next() * 1500)
      if (counter.tryConsume(now)) accepted.push(now)
      else if (recent(accepted, now, SECOND_MS + SECOND_MS / 20) < limit) refusedWithRoom++
    }
    t.ok(busiestSpan(accepted, SECOND_MS) <= limit, `at most ${limit} in any span of 1000 ms (accepted ${accepted.length})`)
    t.equal(refusedWithRoom, 0, 'never refused while the last 1050 ms had room')
    t.ok(accepted.length > limit, 'more than one window exercised')
  })

  t.test('never more than the limit within any one-minute span (property, brute force)', async (t) => {
    const next = random(7)
    const limits = { messagesPerSecond: 1_000_000, messagesPerMinute: 40 }
    const counter = new RateCounter(limits)
    const accepted: number[] = []
    let refusedWithRoom = 0
    let now = 0
    for (let i = 0; i < 3000; i++) {
      now += Math.floor(next() * 400)
      if (counter.tryConsume(now)) accepted.push(now)
      else if (recent(accepted, now, MINUTE_MS + 1) < limits.messagesPerMinute) refusedWithRoom++
    }
    t.ok(busiestSpan(accepted, MINUTE_MS) <= limits.messagesPerMinute, `at most 40 in any span of 60 s (accepted ${accepted.length})`)
    t.equal(refusedWithRoom, 0, 'never refused while the window had room')
    t.ok(accepted.length > 40, 'more than one window exercised')
  })

  t.test('limits above EXACT_LIMIT_MAX: never more than the limit within any one-minute span (property, brute force)', async (t) => {
    // One-second buckets: bursts, pauses of a few buckets and gaps longer than the window all
    // move the ring. Ticks count from an hour boundary near when the module loaded, so the
    // clocks start at the epoch, 90 minutes ago (crossing that boundary) and now.
    const clocks = [0, Date.now() - 90 * MINUTE_MS + 137, Date.now() + 137]
    for (const [k, start] of clocks.entries()) {
      const next = random(13 + k)
      const limit = EXACT_LIMIT_MAX + 172
      const limits = { messagesPerSecond: 1_000_000, messagesPerMinute: limit }
      const counter = new RateCounter(limits)
      const accepted: number[] = []
      let refused = 0
      let refusedWithRoom = 0
      let now = start
      for (let i = 0; i < 20_000; i++) {
        const r = next()
        now += r < 0.97 ? Math.floor(next() * 40) : r < 0.998 ? Math.floor(next() * 5000) : MINUTE_MS + Math.floor(next() * 90_000)
        if (counter.tryConsume(now)) {
          accepted.push(now)
        } else {
          refused++
          if (recent(accepted, now, MINUTE_MS + MINUTE_MS / 60) < limit) refusedWithRoom++
        }
      }
      t.ok(busiestSpan(accepted, MINUTE_MS) <= limit, `clock from ${start}: at most ${limit} in any span of 60 s (accepted ${accepted.length})`)
      t.equal(refusedWithRoom, 0, `clock from ${start}: never refused while the last 61 s had room`)
      t.ok(accepted.length > 4 * limit && refused > 1000, `clock from ${start}: several full windows exercised (refused ${refused})`)
    }
  })

  t.test('SlidingWindowCounter counts what a plain tick-by-tick tally counts (property, against a model)', async (t) => {
    // The model keeps every bucket's count by its number from the epoch and sums the newest
    // `buckets + 1`; the counter keeps only the current bucket and a ring. Steps forward, gaps
    // past the window, clocks that step back, and several events at once, on clocks before,
    // across and after the hour boundary ticks count from.
    for (const [windowMs, buckets] of [[SECOND_MS, 20], [MINUTE_MS, 60], [1000, 10]] as const) {
      for (const [k, start] of [0, Date.now() - 70 * MINUTE_MS, Date.now()].entries()) {
        const next = random(101 + k)
        const bucketMs = windowMs / buckets
        const w = new SlidingWindowCounter(windowMs, buckets)
        const tally = new Map<number, number>()
        let newest = Number.NEGATIVE_INFINITY
        let now = start
        let mismatches = 0
        for (let i = 0; i < 5000; i++) {
          const r = next()
          now += r < 0.8 ? Math.floor(next() * bucketMs) : r < 0.9 ? -Math.floor(next() * 2 * bucketMs) : r < 0.97 ? Math.floor(next() * windowMs) : windowMs + Math.floor(next() * 2 * windowMs)
          newest = Math.max(newest, Math.floor(now / bucketMs))
          let expected = 0
          for (let b = newest - buckets; b <= newest; b++) expected += tally.get(b) ?? 0
          if (w.count(now) !== expected) mismatches++
          const n = next() < 0.2 ? 1 + Math.floor(next() * 5) : 1
          w.add(n)
          tally.set(newest, (tally.get(newest) ?? 0) + n)
        }
        t.equal(mismatches, 0, `${windowMs} ms in ${buckets} buckets, clock from ${start}: the same count after every step`)
      }
    }
  })

  t.test('accepts again once the window has passed', async (t) => {
    const limits = { messagesPerSecond: 10, messagesPerMinute: 100 }
    const counter = new RateCounter(limits)
    for (let i = 0; i < 10; i++) t.equal(counter.tryConsume(5000 + i), true, `event ${i + 1} accepted`)
    t.equal(counter.tryConsume(5010), false, 'the 11th in the same second is refused')
    t.equal(counter.tryConsume(5999), false, 'still refused within the second')
    t.equal(counter.tryConsume(6000), false, 'still refused exactly one second after the first event')
    t.equal(counter.tryConsume(6001), true, 'accepted as soon as the first event has left the window')
  })

  t.test('a refused event counts in neither window', async (t) => {
    const limits = { messagesPerSecond: 2, messagesPerMinute: 5 }
    const counter = new RateCounter(limits)
    t.equal(counter.tryConsume(0), true)
    t.equal(counter.tryConsume(1), true)
    for (let i = 0; i < 50; i++) t.equal(counter.tryConsume(2 + i), false)
    t.equal(counter.minute.count(100), 2, 'the minute window holds only the accepted events')
    t.equal(counter.tryConsume(1100), true, 'the next second accepts again')
  })

  t.test('the per-minute limit refuses even when the second has room', async (t) => {
    const limits = { messagesPerSecond: 10, messagesPerMinute: 3 }
    const counter = new RateCounter(limits)
    t.equal(counter.tryConsume(0), true)
    t.equal(counter.tryConsume(2000), true)
    t.equal(counter.tryConsume(4000), true)
    t.equal(counter.tryConsume(6000), false)
    t.equal(counter.tryConsume(59_000), false, 'still refused within the minute')
    t.equal(counter.tryConsume(MINUTE_MS), false, 'refused exactly one minute after the first event')
    t.equal(counter.tryConsume(MINUTE_MS + 1), true, 'accepted once the first event left the window')
  })

  t.test('SlidingWindowCounter counts what was added over the last window', async (t) => {
    const w = new SlidingWindowCounter(1000, 10)
    t.equal(w.count(0), 0)
    w.add(3)
    t.equal(w.count(450), 3)
    w.add(2)
    t.equal(w.count(1000), 5, 'both still counted at the edge of the window')
    t.equal(w.count(1100), 2, 'the first bucket has left')
    t.equal(w.count(1550), 0, 'both have left')
    w.add(1)
    t.equal(w.count(1000), 1, 'a clock that steps back keeps what it has instead of forgetting')
    t.equal(w.count(50_000), 0, 'a long gap clears everything')
  })

  t.test('isIdle reports a counter that can no longer affect a check', async (t) => {
    const limits = { messagesPerSecond: 10, messagesPerMinute: 100 }
    const counter = new RateCounter(limits)
    counter.tryConsume(1000)
    t.equal(counter.isIdle(1000 + MINUTE_MS), false, 'exact window: the event is in it exactly a minute later')
    t.equal(counter.isIdle(1000 + MINUTE_MS + 1), true, 'exact window: idle once it has left')
    const bucketed = new RateCounter({ messagesPerSecond: 1000, messagesPerMinute: 10_000 })
    bucketed.tryConsume(1000)
    t.equal(bucketed.isIdle(1000 + MINUTE_MS), false, 'bucketed window: kept for the extra bucket')
    t.equal(bucketed.isIdle(1000 + MINUTE_MS + MINUTE_MS / 60), true, 'bucketed window: idle once its bucket has left')
    t.equal(new RateCounter(limits).isIdle(5000), true, 'a counter that never counted is idle')
  })

  t.end()
})
