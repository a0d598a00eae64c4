import { once } from 'node:events'
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { redisStore, type RedisStoreOptions } from '../lib/index.js'
import { build, connect, eventually, parseLogs, sign, type Built, type Client } from './helpers.js'
import { startExample } from './example-process.js'
import { RedisServer, requireRedis } from './redis-server.js'

let prefixes = 0

/** Two or more Fastify instances sharing `redis` under one fresh key prefix. */
async function instances (t: Test, redis: { url: string }, count: number, store: Partial<RedisStoreOptions> = {}, options: Record<string, unknown> = {}): Promise<Built[]> {
  const prefix = `test${++prefixes}:`
  const built: Built[] = []
  for (let i = 0; i < count; i++) {
    built.push(await build(t, { options: { store: redisStore({ url: redis.url, prefix, syncIntervalMs: 20, ...store }), ...options } }))
  }
  return built
}

/** Tries to connect every 100 ms until a connection stays open, for up to `ms`. */
async function connectWhenPossible (url: string, options: Parameters<typeof connect>[1], ms: number): Promise<Client | undefined> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    const client = await connect(url, options)
    if (await client.admitted()) return client
    await client.closed
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return undefined
}

async function ping (client: Client): Promise<unknown> {
  client.send({ type: 'ping' })
  return client.next()
}

if (requireRedis(t)) {
  t.test('Redis store', async (t) => {
    // CI starts one Redis for the tests that leave it running; otherwise start a private one.
    const redis = process.env.REDIS_URL ? { url: process.env.REDIS_URL } : await RedisServer.start()
    if (redis instanceof RedisServer) t.teardown(() => redis.stop())

    t.test('one connection limit holds across instances', async (t) => {
      const [a, b] = await instances(t, redis, 2)
      const token = sign('alice')
      const held: Client[] = []
      for (const target of [a!, a!, a!, b!, b!]) {
        const client = await connect(target.url('/ws/alice-1'), { token })
        t.ok(await ping(client), 'connection is admitted')
        held.push(client)
      }
      for (const target of [a!, b!]) {
        const sixth = await connect(target.url('/ws/alice-1'), { token })
        t.same(await sixth.closed, { code: 1008, reason: 'Too many connections' })
      }
      const bob = await connect(b!.url('/ws/bob-1'), { token: sign('bob') })
      t.same(await ping(bob), { type: 'pong' }, 'another user is not affected')
      await held[0]!.close()
      const again = await connect(b!.url('/ws/alice-1'), { token })
      t.same(await ping(again), { type: 'pong' }, 'a slot freed on one instance is usable on the other at once')
      for (const client of [...held.slice(1), again, bob]) await client.close()
    })

    t.test('concurrent connects on two instances never exceed the limit', async (t) => {
      const [a, b] = await instances(t, redis, 2)
      const token = sign('alice')
      const clients = await Promise.all(Array.from({ length: 20 }, (_, i) => connect((i % 2 === 0 ? a! : b!).url('/ws/alice-1'), { token })))
      const outcomes = await Promise.all(clients.map((c) => c.admitted()))
      const open = clients.filter((_c, i) => outcomes[i])
      const refused = await Promise.all(clients.filter((c) => !open.includes(c)).map((c) => c.closed))
      t.equal(open.length, 5, 'exactly five stay open')
      t.ok(refused.every((r) => r.code === 1008 && r.reason === 'Too many connections'), 'the rest are refused as too many')
      t.equal((a!.app.secureWs.stats().users.alice ?? 0) + (b!.app.secureWs.stats().users.alice ?? 0), 5)
      await Promise.all(open.map((c) => c.close()))
    })

    t.test('message rate limits count across instances', async (t) => {
      const [a, b] = await instances(t, redis, 2)
      const token = sign('alice')
      const onA = await connect(a!.url('/ws/alice-1'), { token })
      const onB = await connect(b!.url('/ws/alice-1'), { token })
      for (let i = 0; i < 6; i++) t.same(await ping(onA), { type: 'pong' })
      // Each instance syncs every 50 ms on a timer of its own: A's counts are in Redis by now.
      await new Promise((resolve) => setTimeout(resolve, 150))
      // B learns A's count at its first sync after its own first message.
      t.same(await ping(onB), { type: 'pong' })
      await new Promise((resolve) => setTimeout(resolve, 150))
      const answers: unknown[] = []
      for (let i = 0; i < 4; i++) {
        onB.send({ type: 'ping' })
        answers.push(await onB.next())
      }
      t.same(answers, [{ type: 'pong' }, { type: 'pong' }, { type: 'pong' }, { type: 'error', message: 'Rate limit exceeded. Connection closed.' }],
        'the eleventh message within the second is refused, though only five reached this instance')
      t.same(await onB.closed, { code: 1008, reason: 'Rate limit exceeded' })
      await onA.close()
    })

    t.test('one sync carries every user, and a minute\'s counts are told from a second\'s', async (t) => {
      const limits = { messagesPerSecond: 10, messagesPerMinute: 8 }
      const [a, b] = await instances(t, redis, 2, {}, { limits })
      const onA = { alice: await connect(a!.url('/ws/alice-1'), { token: sign('alice') }), bob: await connect(a!.url('/ws/bob-1'), { token: sign('bob') }) }
      for (let i = 0; i < 5; i++) t.same(await ping(onA.alice), { type: 'pong' })
      for (let i = 0; i < 2; i++) t.same(await ping(onA.bob), { type: 'pong' })
      // Past the one-second window: these now count in the minute only.
      await new Promise((resolve) => setTimeout(resolve, 1200))
      const onB = { alice: await connect(b!.url('/ws/alice-1'), { token: sign('alice') }), bob: await connect(b!.url('/ws/bob-1'), { token: sign('bob') }) }
      // Both users' first message on B goes out in the same sync.
      onB.alice.send({ type: 'ping' })
      onB.bob.send({ type: 'ping' })
      t.same([await onB.alice.next(), await onB.bob.next()], [{ type: 'pong' }, { type: 'pong' }])
      await new Promise((resolve) => setTimeout(resolve, 150))
      // alice: 5 on A + 1 here leave 2 of her 8; bob: 2 + 1 leave 5.
      for (const [user, left] of [['alice', 2], ['bob', 5]] as const) {
        const client = onB[user]
        const answers: unknown[] = []
        for (let i = 0; i <= left; i++) answers.push(await ping(client))
        t.same(answers, [...Array.from({ length: left }, () => ({ type: 'pong' })), { type: 'error', message: 'Rate limit exceeded. Connection closed.' }], `${user}: ${left} more, then refused for the minute`)
        await client.closed
      }
      await onA.alice.close()
      await onA.bob.close()
    })

    t.test('a user refused on other instances\' counts is let back in once those counts leave the minute', async (t) => {
      // The window is a minute long, so this takes a minute: B's own message must leave it
      // before A's do, and B must then still hear that A's have left.
      const limits = { messagesPerSecond: 100, messagesPerMinute: 6 }
      const [a, b] = await instances(t, redis, 2, {}, { limits })
      const token = sign('alice', { exp: Math.floor(Date.now() / 1000) + 300 })
      const onB = await connect(b!.url('/ws/alice-1'), { token })
      // Holds alice's counter on B throughout, so it is never swept and started afresh.
      const keeper = await connect(b!.url('/ws/alice-1'), { token })
      t.equal(await keeper.opened, true)
      t.same(await ping(onB), { type: 'pong' }, 'B: one message')
      await new Promise((resolve) => setTimeout(resolve, 2000))
      const onA = await connect(a!.url('/ws/alice-1'), { token })
      t.equal(await onA.opened, true)
      // Sent at once, counted before A's first sync: A accepts all six on its own count.
      for (let i = 0; i < 6; i++) onA.send({ type: 'ping' })
      for (let i = 0; i < 6; i++) t.same(await onA.next(), { type: 'pong' }, `A: message ${i + 1} accepted`)
      await onA.close()
      // B's message has left the minute; A's six are still in it (Redis keeps them 61-62 s).
      await new Promise((resolve) => setTimeout(resolve, 60_000))
      t.same(await ping(onB), { type: 'error', message: 'Rate limit exceeded. Connection closed.' }, 'B refuses while A\'s six are in the minute')
      // A's have left by now; B must have heard so, not go on refusing for up to a minute.
      await new Promise((resolve) => setTimeout(resolve, 4000))
      t.same(await ping(keeper), { type: 'pong' }, 'B admits a message once A\'s have left the minute')
      await keeper.close()
    })

    t.test('a rate key holding another type costs only that user the shared count, and is logged once', async (t) => {
      const prefix = `foreign${++prefixes}:`
      const writer = new Redis(redis.url)
      t.teardown(() => writer.quit())
      // Another app sharing the prefix, or a hand-written key: WRONGTYPE for the rate script.
      await writer.set(`${prefix}rate:alice`, 'not a hash')
      const [a, b] = await instances(t, redis, 2, { prefix }, { limits: { messagesPerSecond: 3, messagesPerMinute: 100 } })
      const alice = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
      const bobA = await connect(a!.url('/ws/bob-1'), { token: sign('bob') })
      // Sent in one tick, so alice's and bob's counts go out in the same script call.
      alice.send({ type: 'ping' })
      bobA.send({ type: 'ping' })
      bobA.send({ type: 'ping' })
      t.same([await alice.next(), await bobA.next(), await bobA.next()], [{ type: 'pong' }, { type: 'pong' }, { type: 'pong' }])
      await new Promise((resolve) => setTimeout(resolve, 150))
      const bobB = await connect(b!.url('/ws/bob-1'), { token: sign('bob') })
      t.same(await ping(bobB), { type: 'pong' }, 'B: bob\'s third message within the second')
      await new Promise((resolve) => setTimeout(resolve, 150))
      t.same(await ping(bobB), { type: 'error', message: 'Rate limit exceeded. Connection closed.' },
        'bob\'s two messages on A reached B through Redis, beside alice\'s unusable key')
      t.same(await ping(alice), { type: 'pong' }, 'alice still gets answers, limited on this instance')
      await new Promise((resolve) => setTimeout(resolve, 150))
      t.same(await writer.get(`${prefix}rate:alice`), 'not a hash', 'the other value is left alone')
      const lines = parseLogs(a!.logs).filter((line) => line.msg?.includes('another type of value under a rate key') === true)
      t.same(lines.map((line) => [line.level, line.key]), [[50, `${prefix}rate:alice`]], 'one error line, naming the key')
      await alice.close()
      await bobA.close()
    })

    t.test('disconnectUser and publish reach every instance', async (t) => {
      const [a, b] = await instances(t, redis, 2)
      const aliceA = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
      const aliceB = await connect(b!.url('/ws/alice-1'), { token: sign('alice') })
      const bobB = await connect(b!.url('/ws/bob-1'), { token: sign('bob') })
      for (const client of [aliceA, aliceB]) {
        client.send({ type: 'subscribe', payload: { topic: 'news' } })
        t.same(await client.next(), { type: 'pong' })
      }
      t.equal(await a!.app.secureWs.publish('news', 'news', { text: 'hello', secret: 'never sent' }), 1, 'one local subscriber')
      t.same(await aliceA.next(), { type: 'news', text: 'hello' })
      t.same(await aliceB.next(), { type: 'news', text: 'hello' }, 'the subscriber on the other instance gets it, undeclared fields dropped')

      t.equal(await a!.app.secureWs.disconnectUser('alice'), 1)
      t.same(await aliceA.closed, { code: 4403, reason: 'Disconnected by the server' })
      t.same(await aliceB.closed, { code: 4403, reason: 'Disconnected by the server' }, 'closed on the other instance too')
      t.same(await ping(bobB), { type: 'pong' }, 'other users stay connected')
      await bobB.close()
      t.ok(await eventually(() => b!.app.secureWs.stats().users.alice === undefined), 'slots released')
    })
  })

  t.test('Redis outage: refuse new connections, keep existing ones, recover', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const [a] = await instances(t, redis, 1, { commandTimeoutMs: 300 })
    const existing = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    t.same(await ping(existing), { type: 'pong' })

    await redis.stop()
    t.same(await ping(existing), { type: 'pong' }, 'an existing connection keeps working')
    for (let i = 0; i < 3; i++) {
      const refused = await connect(a!.url('/ws/bob-1'), { token: sign('bob') })
      t.same(await refused.closed, { code: 1013, reason: 'Try again later' }, 'new connections are refused while Redis is away')
    }
    t.equal(a!.logs.filter((line) => line.includes('redis store unreachable')).length, 1, 'one log line for the outage')
    t.equal(a!.logs.filter((line) => line.includes('"refusal":"storeUnavailable"')).length, 3, 'one refusal line per refused connection')
    t.equal(a!.logs.filter((line) => line.includes('"level":50')).length, 0, 'and no error line besides')

    // Local limits still apply during the outage: two pings so far, eight more pass, the eleventh closes.
    const answers: unknown[] = []
    for (let i = 0; i < 9; i++) answers.push(await ping(existing))
    t.same(answers.slice(0, 8), Array(8).fill({ type: 'pong' }), 'existing connection served under local limits')
    t.same(answers[8], { type: 'error', message: 'Rate limit exceeded. Connection closed.' }, 'the local per-second limit still holds')
    t.same(await existing.closed, { code: 1008, reason: 'Rate limit exceeded' })

    await redis.resume()
    const client = await connectWhenPossible(a!.url('/ws/bob-1'), { token: sign('bob') }, 5000)
    t.ok(client, 'connections are accepted again once Redis is back, without a restart')
    if (client !== undefined) t.same(await ping(client), { type: 'pong' })
    t.equal(a!.logs.filter((line) => line.includes('redis store reachable again')).length, 1)
    await client?.close()
  })

  t.test('a sync Redis refuses (out of memory) is logged once until a sync succeeds again', async (t) => {
    // A Redis of its own: maxmemory would refuse every other test's writes too.
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const admin = new Redis(redis.url)
    t.teardown(() => admin.quit())
    const [a] = await instances(t, redis, 1)
    const alice = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    const syncErrors = (): number => a!.logs.filter((line) => line.includes('could not sync message counts')).length
    const refuseWrites = async (pings: number): Promise<void> => {
      await admin.config('SET', 'maxmemory', '1')
      for (let i = 0; i < pings; i++) {
        t.same(await ping(alice), { type: 'pong' }, 'answered under local limits')
        await new Promise((resolve) => setTimeout(resolve, 60))
      }
      await admin.config('SET', 'maxmemory', '0')
    }
    t.same(await ping(alice), { type: 'pong' })
    t.equal(syncErrors(), 0)
    await refuseWrites(4)
    t.equal(syncErrors(), 1, 'four failed syncs, one line')
    t.ok(a!.logs.some((line) => line.includes('could not sync message counts') && line.includes('OOM')), 'the line carries Redis\'s error')
    t.same(await ping(alice), { type: 'pong' })
    await new Promise((resolve) => setTimeout(resolve, 100))
    await refuseWrites(2)
    t.equal(syncErrors(), 2, 'a sync that succeeded in between re-arms the line')
    t.equal(a!.logs.filter((line) => line.includes('redis store unreachable')).length, 0, 'not reported as an outage')
    await alice.close()
  })

  t.test('a slot released while the store is cut off from Redis is freed once it is back, not when its lease runs out', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const [a] = await instances(t, redis, 1, { commandTimeoutMs: 300 }, { limits: { connectionsPerUser: 1 } })
    const first = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    t.ok(await first.admitted())
    // A network cut that Redis survives with its data: drop the store's connections.
    const admin = new Redis(redis.url)
    t.teardown(() => admin.disconnect())
    await admin.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
    await first.close()
    await eventually(() => a!.logs.some((line) => line.includes('redis store reachable again')), 5000)
    const second = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    t.ok(await second.admitted(), 'the user can connect again at once, with the 30 s lease still running')
    await second.close()
  })

  t.test('failOpen: while Redis is away, admit under this instance\'s own limits', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const [a] = await instances(t, redis, 1, { commandTimeoutMs: 300, failOpen: true }, { limits: { connectionsPerUser: 2 } })
    await redis.stop()
    const first = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    const second = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    t.ok(await first.admitted(), 'admitted although Redis is unreachable')
    t.ok(await second.admitted(), 'up to the limit')
    const third = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    t.same(await third.closed, { code: 1008, reason: 'Too many connections' }, 'the local connection limit still holds')
    await first.close()
    await second.close()
    t.ok(await eventually(() => Object.keys(a!.app.secureWs.stats().store.slots).length === 0), 'local slots released')
  })

  t.test('slots of an instance killed with SIGKILL free themselves within the lease', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const secret = 'lease-test-secret-0123456789abcdef'
    const doomed = await startExample(t, { WS_JWT_SECRET: secret, WS_REDIS_URL: redis.url, WS_REDIS_LEASE_MS: '2000' })
    const { port, child } = doomed
    const { createSigner } = await import('fast-jwt')
    const token = createSigner({ key: secret, algorithm: 'HS256', expiresIn: 60_000 })({ sub: 'alice' })
    const origin = `http://127.0.0.1:${port}`
    for (let i = 0; i < 5; i++) {
      const client = await connect(`ws://127.0.0.1:${port}/ws/sessions/alice-1`, { token, origin })
      t.ok(await client.admitted(), 'the doomed instance admits five')
    }
    child.kill('SIGKILL')
    await once(child, 'exit')

    const survivor = await build(t, { options: { store: redisStore({ url: redis.url, syncIntervalMs: 20 }), jwt: { key: secret, algorithms: ['HS256'] }, origins: [origin] }, route: { url: '/ws/sessions/:sessionId' } })
    const early = await connect(survivor.url('/ws/sessions/alice-1'), { token, origin })
    t.same(await early.closed, { code: 1008, reason: 'Too many connections' }, 'the dead instance still holds its leases at first')
    const client = await connectWhenPossible(survivor.url('/ws/sessions/alice-1'), { token, origin }, 6000)
    t.ok(client, 'the slots are free again once the lease has run out')
    await client?.close()
  })
}
