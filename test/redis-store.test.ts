import t from 'tap'
import { redisStore, type RedisStoreOptions } from '../lib/index.js'
import { connect, eventually, sign, type Client } from './helpers.js'
import { connectWhenPossible, instances, ping, RedisServer, redisTargets, requireRedis } from './redis-server.js'

t.test('redisStore options are checked before any connection is opened', async (t) => {
  const url = 'redis://127.0.0.1:1'
  const cases: Array<[string, unknown, string]> = [
    ['no target', {}, 'give exactly one of client, url or nodes'],
    ['two targets', { url, nodes: ['127.0.0.1:1'] }, 'give exactly one of client, url or nodes'],
    ['an empty url', { url: '' }, 'url must be a non-empty string'],
    ['no nodes', { nodes: [] }, 'nodes must be a non-empty array of "host:port", redis:// URLs or { host, port }'],
    ['a node without a port', { nodes: [{ host: '127.0.0.1' }] }, 'nodes must be a non-empty array of "host:port", redis:// URLs or { host, port }'],
    ['a client that is not ioredis', { client: {} }, 'client must be an ioredis Redis or Cluster'],
    ['a prefix with a hash tag', { url, prefix: 'app{1}:' }, 'prefix must be a string without "{"'],
    ['a lease of 0', { url, leaseMs: 0 }, 'leaseMs must be a positive integer'],
    ['a fractional sync interval', { url, syncIntervalMs: 2.5 }, 'syncIntervalMs must be a positive integer'],
    ['a clock that is not a function', { url, now: 5 }, 'now must be a function']
  ]
  for (const [name, options, message] of cases) {
    t.throws(() => redisStore(options as RedisStoreOptions), { code: 'FST_SECURE_WS_INVALID_OPTION', message: `redisStore: ${message}` }, name)
  }
})

if (requireRedis(t)) {
  t.test('Redis store', async (t) => {
    for (const [name, redis] of await redisTargets(t)) {
      t.test(name, async (t) => {
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
    }
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
}
