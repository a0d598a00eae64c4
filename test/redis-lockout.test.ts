import t from 'tap'
import { redisStore } from '../lib/index.js'
import { build, connect, parseLogs, sign, closeOf } from './helpers.js'
import { RedisServer, requireRedis } from './redis-server.js'

const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }

/**
 * The HTTP status a valid upgrade gets once the lockout has reached this instance (a Redis
 * answer or another instance's message away), or the last one seen after 2 s.
 */
async function statusOnceLocked (url: string): Promise<number | undefined> {
  let status: number | undefined
  const end = Date.now() + 2000
  while (status !== 429 && Date.now() < end) {
    const c = await connect(url, { token: sign('alice') })
    status = c.status
    c.ws.terminate()
    if (status !== 429) await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return status
}

if (requireRedis(t)) {
  t.test('failed authentications lock an address out on every instance sharing a Redis', async (t) => {
    const redis = process.env.REDIS_URL ? { url: process.env.REDIS_URL } : await RedisServer.start()
    if (redis instanceof RedisServer) t.teardown(() => redis.stop())
    const prefix = `lockout${process.pid}:`
    const limits = { authFailuresPerMinute: 4 }
    const sa = redisStore({ url: redis.url, prefix })
    const sb = redisStore({ url: redis.url, prefix })
    const a = await build(t, { options: { store: sa, limits } })
    const b = await build(t, { options: { store: sb, limits } })

    // Two failures on each instance: four together, the limit.
    for (const instance of [a, b, a, b]) t.same(await closeOf(await connect(instance.url('/ws/alice-1'), { token: 'bad' })), INVALID_TOKEN)

    // Both instances refuse the address now (once Redis has answered and the other instance
    // has heard), before the upgrade, even with a valid token.
    for (const instance of [b, a]) t.equal(await statusOnceLocked(instance.url('/ws/alice-1')), 429, 'HTTP 429 before the upgrade')
    const lockLines = [...parseLogs(a.logs), ...parseLogs(b.logs)].filter((line) => line.msg === 'client address locked out after failed authentications')
    t.equal(lockLines.length, 1, 'one log line for the lockout, on the instance that saw it happen')
  })

  t.test('with Redis unreachable, failures still lock the address out on this instance', async (t) => {
    const redis = await RedisServer.start()
    const prefix = `lockout-down${process.pid}:`
    const a = await build(t, { options: { store: redisStore({ url: redis.url, prefix, commandTimeoutMs: 200 }), limits: { authFailuresPerMinute: 2 } } })
    await redis.stop()
    for (let i = 0; i < 2; i++) await closeOf(await connect(a.url('/ws/alice-1'), { token: 'bad' }))
    t.equal(await statusOnceLocked(a.url('/ws/alice-1')), 429, 'the lockout does not lift because the store is down')
  })
}
