import { once } from 'node:events'
import t from 'tap'
import { Redis } from 'ioredis'
import { redisStore } from '../lib/index.js'
import { build, connect, eventually, sign, type Client } from './helpers.js'
import { startExample } from './example-process.js'
import { connectWhenPossible, instances, ping, RedisServer, requireRedis, TcpProxy, freshPrefix } from './redis-server.js'

const TRY_AGAIN = { code: 1013, reason: 'Try again later' }
const TOO_MANY = { code: 1008, reason: 'Too many connections' }

if (requireRedis(t)) {
  t.test('a connect that timed out against a slow Redis leaves no slot behind, however late Redis runs it', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const admin = new Redis(redis.url)
    t.teardown(() => admin.disconnect())
    const prefix = freshPrefix('late')
    const store = redisStore({ url: redis.url, prefix, commandTimeoutMs: 200 })
    t.teardown(() => store.close())
    t.equal(await store.acquireSlot('alice', 'warm-up', 1), true, 'Redis answers at first')
    await store.releaseSlot('alice', 'warm-up')
    // Redis stops answering for 600 ms: the next call waits behind it and is given up on.
    const sleeping = admin.call('DEBUG', 'SLEEP', '0.6')
    await new Promise((resolve) => setTimeout(resolve, 50))
    await t.rejects(store.acquireSlot('alice', 'slow', 1), { code: 'FST_SECURE_WS_STORE_UNAVAILABLE' }, 'refused for now')
    await sleeping
    t.equal(await admin.zcard(`${prefix}slots:{alice}`), 0, 'Redis holds no slot for the call it ran late')
    t.equal(await store.acquireSlot('alice', 'next', 1), true, 'the user, who holds nothing, gets their one slot')
    t.same(store.stats().slots, { alice: 1 })
  })

  t.test('an instance cut off from Redis closes its connections (1013) before their leases run out, so the others never admit more than the limit', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const proxy = await TcpProxy.start(t, redis.port)
    const prefix = freshPrefix('partition')
    const store = { prefix, leaseMs: 1500, commandTimeoutMs: 200 }
    const [a] = await instances(t, { url: proxy.url }, 1, store)
    const [b] = await instances(t, { url: redis.url }, 1, store)
    const token = sign('alice')
    const onA: Client[] = []
    for (let i = 0; i < 5; i++) {
      const client = await connect(a!.url('/ws/alice-1'), { token })
      t.same(await ping(client), { type: 'pong' }, `A admits connection ${i + 1}`)
      onA.push(client)
    }
    let closedOnA = 0
    const closes = onA.map((client) => client.closed.then((closed) => { closedOnA++; return closed }))
    proxy.cut()
    const early = await connect(b!.url('/ws/alice-1'), { token })
    t.same(await early.closed, TOO_MANY, 'B: A\'s leases still stand')
    const onB: Client[] = []
    for (let i = 0; i < 5; i++) {
      const client = await connectWhenPossible(b!.url('/ws/alice-1'), { token }, 5000)
      t.ok(client, `B admits connection ${i + 1} once A's leases are gone`)
      if (client === undefined) break
      if (i === 0) t.equal(closedOnA, 5, 'by then A had closed all five of its own')
      onB.push(client)
    }
    t.same(await Promise.all(closes), Array(5).fill(TRY_AGAIN), 'A closed them with 1013')
    t.same(a!.app.secureWs.stats().store.slots, {}, 'A holds nothing')
    proxy.heal()
    const backOnA = await connectWhenPossible(a!.url('/ws/bob-1'), { token: sign('bob') }, 5000)
    t.ok(backOnA, 'A admits again once the link is back')
    const sixth = await connect(a!.url('/ws/alice-1'), { token })
    t.same(await sixth.closed, TOO_MANY, 'and the limit holds: B has alice\'s five')
    for (const client of [...onB, backOnA!]) await client.close()
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
