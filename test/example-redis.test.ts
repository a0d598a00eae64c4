import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { createSigner } from 'fast-jwt'
import { connect, type Client } from './helpers.js'
import { startExample, type ExampleProcess } from './example-process.js'
import { RedisServer, redisTargets, requireRedis } from './redis-server.js'

// The example's contract lines for WS_REDIS_URL, tried from outside with two example processes.

const SECRET = 'example-redis-test-secret-0123456789'
const signer = createSigner({ key: SECRET, algorithm: 'HS256', expiresIn: 120_000 })
// The example's logout message is being added on main; until this branch has it, its check is a todo.
const EXAMPLE_HAS_LOGOUT = readFileSync(join(__dirname, '..', 'examples', 'server.ts'), 'utf8').includes('logout:')

async function startRedisExample (t: { teardown: (fn: () => unknown) => void }, env: Record<string, string>): Promise<ExampleProcess> {
  return startExample(t, { WS_JWT_SECRET: SECRET, ...env })
}

function open (example: ExampleProcess, user: string, scope?: string): Promise<Client> {
  const token = signer({ sub: user, ...(scope === undefined ? {} : { scope }) })
  return connect(example.url(`/ws/sessions/${user}-1`), { token, origin: example.origin })
}

async function connectWhenPossible (example: ExampleProcess, user: string, ms: number): Promise<Client | undefined> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    const client = await open(example, user)
    if (await client.admitted()) return client
    await client.closed
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  return undefined
}

const RATE_ERROR = { type: 'error', message: 'Rate limit exceeded. Connection closed.' }

/** The contract lines that hold alike on one Redis and on a cluster. */
function sharedContract (t: Test, a: ExampleProcess, b: ExampleProcess): void {
  t.test('enforce one connection limit together', async (t) => {
    const held = [await open(a, 'alice'), await open(a, 'alice'), await open(b, 'alice'), await open(b, 'alice')]
    t.same(await Promise.all(held.map((c) => c.admitted())), [true, true, true, true], 'four connections over two processes')
    for (const example of [a, b]) {
      const extra = await open(example, 'alice')
      t.same(await extra.closed, { code: 1008, reason: 'Too many connections' })
    }
    await held[0]!.close()
    const again = await open(b, 'alice')
    t.ok(await again.admitted(), 'a slot freed on one process is free on the other at once')
    for (const c of [...held.slice(1), again]) await c.close()
  })

  t.test('status pushes reach a subscriber on the other process', async (t) => {
    const watcher = await open(a, 'alice')
    watcher.send({ type: 'subscribe', payload: { channel: 'status' } })
    t.same(await watcher.next(), { type: 'subscribed', channel: 'status' })
    const trader = await open(b, 'alice', 'trade')
    trader.send({ type: 'stop' })
    t.same(await trader.next(), { type: 'status', data: { id: 'alice-1', owner: 'alice', state: 'stopped' } })
    t.same(await watcher.next(), { type: 'status', data: { id: 'alice-1', owner: 'alice', state: 'stopped' } }, 'pushed across processes')
    await watcher.close()
    await trader.close()
  })

  t.test('one message limit: 6 + 6 pings on the two processes within 50 ms close the user on both, with no further message', async (t) => {
    const onA = await open(a, 'bob')
    const onB = await open(b, 'bob')
    t.same([await onA.opened, await onB.opened], [true, true])
    for (let i = 0; i < 6; i++) {
      onA.send({ type: 'ping' })
      onB.send({ type: 'ping' })
    }
    for (const [name, client] of [['A', onA], ['B', onB]] as const) {
      const frames: unknown[] = []
      for (;;) {
        const frame = await client.next(3000).catch(() => undefined)
        if (frame === undefined) break
        frames.push(frame)
      }
      const pongs = frames.length - 1
      t.same(frames, [...Array(Math.max(0, pongs)).fill({ type: 'pong' }), RATE_ERROR], `${name}: pongs, then the rate-limit error`)
      t.same(await client.closed, { code: 1008, reason: 'Rate limit exceeded' }, `${name}: closed`)
    }
  })

  t.test('logout on one process closes the user\'s connections on both (4403) and refuses the old token on both', { todo: EXAMPLE_HAS_LOGOUT ? false : 'examples/server.ts has no logout message on this branch yet' }, async (t) => {
    const token = signer({ sub: 'alice' })
    const onA = await connect(a.url('/ws/sessions/alice-1'), { token, origin: a.origin })
    const onB = await connect(b.url('/ws/sessions/alice-1'), { token, origin: b.origin })
    t.same([await onA.opened, await onB.opened], [true, true])
    onA.send({ type: 'logout' })
    t.same(await onA.closed, { code: 4403, reason: 'Logged out' })
    t.same(await onB.closed, { code: 4403, reason: 'Logged out' }, 'closed on the other process too')
    for (const example of [a, b]) {
      const again = await connect(example.url('/ws/sessions/alice-1'), { token, origin: example.origin })
      t.same(await again.closed, { code: 4401, reason: 'Invalid or expired authentication token' }, 'the logged-out token is refused')
    }
  })
}

if (requireRedis(t)) {
  t.test('two example processes sharing one Redis', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const a = await startRedisExample(t, { WS_REDIS_URL: redis.url, WS_MAX_CONNECTIONS_PER_USER: '4' })
    const b = await startRedisExample(t, { WS_REDIS_URL: redis.url, WS_MAX_CONNECTIONS_PER_USER: '4' })
    sharedContract(t, a, b)

    t.test('Redis unreachable: 1013, process keeps running, recovers without restart', async (t) => {
      await redis.stop()
      const refused = await open(a, 'bob')
      t.same(await refused.closed, { code: 1013, reason: 'Try again later' })
      t.equal(a.child.exitCode, null, 'the process keeps running')
      await redis.resume()
      const client = await connectWhenPossible(a, 'bob', 8000)
      t.ok(client, 'accepted again once Redis is back')
      await client?.close()
    })
  })

  t.test('two example processes sharing a Redis Cluster (WS_REDIS_URL: its nodes, comma-separated)', async (t) => {
    const cluster = (await redisTargets(t)).find(([name]) => name === 'Redis Cluster')?.[1]
    if (cluster === undefined) return
    const url = cluster.nodes!.map((node) => `redis://${node}`).join(',')
    const a = await startRedisExample(t, { WS_REDIS_URL: url, WS_MAX_CONNECTIONS_PER_USER: '4' })
    const b = await startRedisExample(t, { WS_REDIS_URL: url, WS_MAX_CONNECTIONS_PER_USER: '4' })
    sharedContract(t, a, b)
  })

  t.test('slots of a SIGKILLed example process are free again within 30 s (its default lease)', async (t) => {
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const doomed = await startRedisExample(t, { WS_REDIS_URL: redis.url })
    const survivor = await startRedisExample(t, { WS_REDIS_URL: redis.url })
    for (let i = 0; i < 5; i++) t.ok(await (await open(doomed, 'alice')).admitted(), 'held by the doomed process')
    doomed.child.kill('SIGKILL')
    await once(doomed.child, 'exit')
    const early = await open(survivor, 'alice')
    t.same(await early.closed, { code: 1008, reason: 'Too many connections' }, 'still held right after the kill')
    const client = await connectWhenPossible(survivor, 'alice', 31_000)
    t.ok(client, 'free again within 30 s, with no manual clean-up')
    await client?.close()
  })
}
