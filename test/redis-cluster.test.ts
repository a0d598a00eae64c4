import t from 'tap'
import { Cluster, Redis } from 'ioredis'
import { redisStore } from '../lib/index.js'
import { keySlot } from '../lib/stores/redis-cluster.js'
import { connect, eventually, parseLogs, sign, type Client } from './helpers.js'
import { adminClient, connectWhenPossible, freshPrefix, instances, ping, redisTargets, requireRedis, sleep } from './redis-server.js'

// What a Redis Cluster asks of the store beyond one Redis: every call within one hash slot,
// renewals and releases per slot, and a `Cluster` client of the app's own.

if (requireRedis(t)) {
  t.test('Redis Cluster', async (t) => {
    const cluster = (await redisTargets(t)).find(([name]) => name === 'Redis Cluster')?.[1]
    if (cluster === undefined) return
    const nodes = cluster.nodes!

    t.test('the store computes hash slots as the cluster does', async (t) => {
      const admin = adminClient(t, cluster) as Cluster
      const keys = ['secure-ws:slots:{alice}', 'secure-ws:rate:{alice}:s', 'plain', '{}', '{}x', 'a{b}c{d}', '{{x}}', 'x{}y', 'prefix:rate:{user-ü-漢}:m', 'p:{route/42:bob}']
      for (const key of keys) t.equal(keySlot(key), await admin.call('CLUSTER', 'KEYSLOT', key) as number, key)
    })

    t.test('one sync carries users of different slots without a cross-slot error, and their counts reach the other instance', async (t) => {
      t.not(keySlot('secure-ws:rate:{alice}:s'), keySlot('secure-ws:rate:{bob}:s'), 'alice and bob live in different slots')
      const [a, b] = await instances(t, cluster, 2)
      const clients: Client[] = []
      for (const user of ['alice', 'bob']) {
        const client = await connect(a!.url(`/ws/${user}-1`), { token: sign(user) })
        clients.push(client)
      }
      // Both users' counts go out in the same sync.
      for (const client of clients) for (let i = 0; i < 6; i++) client.send({ type: 'ping' })
      for (const client of clients) for (let i = 0; i < 6; i++) t.same(await client.next(), { type: 'pong' })
      await sleep(200)
      for (const user of ['alice', 'bob']) {
        const onB = await connect(b!.url(`/ws/${user}-1`), { token: sign(user) })
        await sleep(100)
        const answers: unknown[] = []
        for (let i = 0; i < 5; i++) answers.push(await ping(onB))
        t.same(answers, [...Array(4).fill({ type: 'pong' }), { type: 'error', message: 'Rate limit exceeded. Connection closed.' }], `${user}: B counts A's six`)
      }
      t.equal(parseLogs(a!.logs).filter((line) => (line.level ?? 0) >= 50).length, 0, 'no error logged on A')
      for (const client of clients) await client.close()
    })

    t.test('leases are renewed on the cluster: the limit outlives several lease periods', async (t) => {
      const [a, b] = await instances(t, cluster, 2, { leaseMs: 600 })
      const token = sign('alice')
      const held: Client[] = []
      for (let i = 0; i < 5; i++) {
        const client = await connect(a!.url('/ws/alice-1'), { token })
        t.same(await ping(client), { type: 'pong' })
        held.push(client)
      }
      await sleep(2000)
      const sixth = await connect(b!.url('/ws/alice-1'), { token })
      t.same(await sixth.closed, { code: 1008, reason: 'Too many connections' }, 'three lease periods later, B still sees A\'s five')
      t.same(await ping(held[0]!), { type: 'pong' }, 'and A\'s connections are still open')
      for (const client of held) await client.close()
    })

    t.test('a graceful shutdown frees its slots on the cluster at once', async (t) => {
      const prefix = freshPrefix('shutdown')
      const [a] = await instances(t, cluster, 1, { prefix })
      const [b] = await instances(t, cluster, 1, { prefix })
      for (const user of ['alice', 'bob']) {
        for (let i = 0; i < 5; i++) t.ok(await (await connect(a!.url(`/ws/${user}-1`), { token: sign(user) })).admitted(), `${user}: A holds slot ${i + 1}`)
      }
      await a!.app.close()
      const admin = adminClient(t, cluster)
      t.same([await admin.zcard(`${prefix}slots:{alice}`), await admin.zcard(`${prefix}slots:{bob}`)], [0, 0], 'no slot left in Redis')
      for (const user of ['alice', 'bob']) {
        const client = await connect(b!.url(`/ws/${user}-1`), { token: sign(user) })
        t.same(await ping(client), { type: 'pong' }, `${user} can connect to B at once`)
        await client.close()
      }
    })

    t.test('after a slowdown of every node, new connections are refused (1013) and then accepted again, with no restart', async (t) => {
      const [a] = await instances(t, cluster, 1, { commandTimeoutMs: 300 })
      t.ok(await eventually(() => a!.app.secureWs.stats().store.available), 'the store is connected')
      const admins = nodes.map((node) => {
        const admin = new Redis(`redis://${node}`)
        t.teardown(() => admin.disconnect())
        return admin
      })
      const sleeping = admins.map((admin) => admin.call('DEBUG', 'SLEEP', '1.5'))
      await sleep(50)
      const refused = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
      t.same(await refused.closed, { code: 1013, reason: 'Try again later' }, 'refused while the cluster does not answer')
      t.equal(a!.app.secureWs.stats().store.available, false)
      await Promise.all(sleeping)
      const client = await connectWhenPossible(a!.url('/ws/alice-1'), { token: sign('alice') }, 5000)
      t.ok(client, 'accepted again once it answers')
      t.equal(a!.logs.filter((line) => line.includes('redis store unreachable')).length, 1, 'one line for the outage')
      t.equal(a!.logs.filter((line) => line.includes('redis store reachable again')).length, 1, 'one when it ends')
      await client?.close()
    })

    t.test('client: a Cluster of the app\'s own', async (t) => {
      const client = new Cluster(nodes)
      t.teardown(() => client.disconnect())
      const store = redisStore({ client, prefix: freshPrefix('own') })
      t.equal(await store.acquireSlot('alice', 'c1', 1), true)
      t.equal(await store.acquireSlot('alice', 'c2', 1), false, 'the limit holds')
      await store.releaseSlot('alice', 'c1')
      t.equal(await store.acquireSlot('alice', 'c3', 1), true, 'a released slot is free again')
      await store.close()
      t.equal(client.status, 'ready', 'the store leaves the app\'s client open')
    })
  })
}
