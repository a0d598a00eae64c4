import t from 'tap'
import { Redis } from 'ioredis'
import { memoryStore } from '../lib/index.js'
import { connect, eventually, parseLogs, sign } from './helpers.js'
import { connectWhenPossible, instances, ping, RedisServer, requireRedis, sleep } from './redis-server.js'

const TRY_AGAIN = { code: 1013, reason: 'Try again later' }

t.test('the memory store is always available', async (t) => {
  const store = memoryStore()
  t.equal(store.stats().available, true)
  await store.close()
})

if (requireRedis(t)) {
  t.test('stats().store.available follows Redis: true, false while it is down, true once it is back', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const [a] = await instances(t, redis, 1, { commandTimeoutMs: 300 })
    t.ok(await eventually(() => a!.app.secureWs.stats().store.available), 'available once connected')
    await redis.stop()
    t.ok(await eventually(() => !a!.app.secureWs.stats().store.available), 'not while Redis is down')
    await redis.resume()
    t.ok(await eventually(() => a!.app.secureWs.stats().store.available, 5000), 'available again once it is back')
  })

  t.test('a Redis that stops answering is one outage: one line naming the timeout, 1013 meanwhile, one line when it answers, then connections again without a reconnect', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const admin = new Redis(redis.url)
    t.teardown(() => admin.disconnect())
    const [a] = await instances(t, redis, 1, { commandTimeoutMs: 300 })
    const existing = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    t.same(await ping(existing), { type: 'pong' })

    const sleeping = admin.call('DEBUG', 'SLEEP', '2')
    await sleep(50)
    for (let i = 0; i < 3; i++) {
      const refused = await connect(a!.url('/ws/bob-1'), { token: sign('bob') })
      t.same(await refused.closed, TRY_AGAIN, `connect ${i + 1} while Redis does not answer: 1013`)
    }
    t.equal(a!.app.secureWs.stats().store.available, false, 'the store says Redis is unavailable')
    t.same(await ping(existing), { type: 'pong' }, 'an existing connection keeps working')
    const outage = parseLogs(a!.logs).filter((line) => line.msg?.includes('redis store unreachable') === true)
    t.same(outage.map((line) => [line.level, (line as { reason?: string }).reason]), [[40, 'redis did not answer within 300 ms']], 'one warn line, naming the timeout')

    await sleeping
    const client = await connectWhenPossible(a!.url('/ws/bob-1'), { token: sign('bob') }, 5000)
    t.ok(client, 'connections are accepted again once Redis answers, with no reconnect')
    t.equal(a!.app.secureWs.stats().store.available, true)
    t.equal(a!.logs.filter((line) => line.includes('redis store reachable again')).length, 1, 'one line when it ends')
    t.equal(a!.logs.filter((line) => line.includes('redis store unreachable')).length, 1, 'still one line for the whole outage')
    await client?.close()
    await existing.close()
  })
}
