import t from 'tap'
import { connect, eventually, sign } from './helpers.js'
import { adminClient, freshPrefix, instances, ping, redisTargets, requireRedis, RedisServer, sleep } from './redis-server.js'

const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
const nowSeconds = (): number => Math.floor(Date.now() / 1000)

if (requireRedis(t)) {
  t.test('revocations shared through Redis', async (t) => {
    for (const [name, redis] of await redisTargets(t)) {
      t.test(name, async (t) => {
        t.test('a logout is kept in Redis: every instance refuses the old credentials, also one that starts later, until the revocation expires', async (t) => {
          const prefix = freshPrefix('revocations')
          const [a, b] = await instances(t, redis, 2, { prefix })
          const issuedBefore = (nowSeconds() - 5) * 1000
          const old = sign('alice', { iat: nowSeconds() - 10 })
          const newer = sign('alice', { iat: nowSeconds() })
          const openOnB = await connect(b!.url('/ws/alice-1'), { token: old })
          t.same(await ping(openOnB), { type: 'pong' })

          t.equal(await a!.app.secureWs.revokeUser('alice', { issuedBefore, ttlMs: 1500 }), 0, 'no connection of alice on A')
          t.same(await openOnB.closed, { code: 4403, reason: 'Logged out' }, 'the open connection on B is logged out')
          const refused = await connect(b!.url('/ws/alice-1'), { token: old })
          t.same(await refused.closed, INVALID_TOKEN, 'B refuses a credential issued before the logout')
          const fresh = await connect(b!.url('/ws/alice-1'), { token: newer })
          t.same(await ping(fresh), { type: 'pong' }, 'B admits one issued after it')
          await fresh.close()

          const [late] = await instances(t, redis, 1, { prefix })
          const refusedLate = await connect(late!.url('/ws/alice-1'), { token: old })
          t.same(await refusedLate.closed, INVALID_TOKEN, 'an instance started after the logout refuses it too')
          const bob = await connect(late!.url('/ws/bob-1'), { token: sign('bob', { iat: nowSeconds() - 10 }) })
          t.same(await ping(bob), { type: 'pong' }, 'other users are not affected')
          await bob.close()

          const reader = adminClient(t, redis)
          const ttl = await reader.pttl(`${prefix}revoked:{alice}`)
          t.ok(ttl > 0 && ttl <= 1500, `the revocation expires by itself (PTTL ${ttl} ms)`)
          await sleep(1600)
          t.equal(await reader.exists(`${prefix}revoked:{alice}`), 0, 'and is gone once its time is up')
          for (const [name, instance] of [['B', b!], ['the late instance', late!]] as const) {
            const again = await connect(instance.url('/ws/alice-1'), { token: old })
            t.same(await ping(again), { type: 'pong' }, `${name} admits the old credential again`)
            await again.close()
          }
        })

        t.test('a logout Redis loses (as in a failover) is still enforced by every instance that was running', async (t) => {
          const prefix = freshPrefix('revocations-lost')
          const [a, b] = await instances(t, redis, 2, { prefix })
          const old = sign('alice', { iat: nowSeconds() - 10 })
          const known = b!.app.secureWs.stats().store.revocations
          await a!.app.secureWs.revokeUser('alice', { issuedBefore: (nowSeconds() - 5) * 1000 })
          t.ok(await eventually(() => b!.app.secureWs.stats().store.revocations === known + 1), 'B heard of the logout')
          const reader = adminClient(t, redis)
          t.equal(await reader.del(`${prefix}revoked:{alice}`), 1, 'Redis loses the revocation')
          for (const [name, instance] of [['A', a!], ['B', b!]] as const) {
            const refused = await connect(instance.url('/ws/alice-1'), { token: old })
            t.same(await refused.closed, INVALID_TOKEN, `${name}, running at the logout, still refuses the old credential`)
          }
          const [late] = await instances(t, redis, 1, { prefix })
          const admitted = await connect(late!.url('/ws/alice-1'), { token: old })
          t.same(await Promise.race([ping(admitted), admitted.closed]), { type: 'pong' }, 'an instance started after the loss cannot know of it (README: Failover)')
          await admitted.close()
        })

        t.test('a later revocation reaching less far does not shorten or lower the one in force', async (t) => {
          const prefix = freshPrefix('revocations-order')
          const [a, b] = await instances(t, redis, 2, { prefix })
          const now = nowSeconds()
          await a!.app.secureWs.revokeUser('alice', { issuedBefore: (now - 5) * 1000, ttlMs: 60_000 })
          await b!.app.secureWs.revokeUser('alice', { issuedBefore: (now - 20) * 1000, ttlMs: 1000 })
          const reader = adminClient(t, redis)
          t.equal(await reader.get(`${prefix}revoked:{alice}`), String((now - 5) * 1000), 'the later issuedBefore is kept')
          t.ok(await reader.pttl(`${prefix}revoked:{alice}`) > 50_000, 'and the longer time to live')
          const [late] = await instances(t, redis, 1, { prefix })
          const refused = await connect(late!.url('/ws/alice-1'), { token: sign('alice', { iat: now - 10 }) })
          t.same(await refused.closed, INVALID_TOKEN)
        })
      })
    }
  })

  t.test('Redis unreachable: a revocation known here still refuses with 4401; anything else is refused with 1013', async (t) => {
    const server = await RedisServer.start()
    t.teardown(() => server.stop())
    const [a] = await instances(t, { url: server.url }, 1, { commandTimeoutMs: 300 })
    const old = sign('alice', { iat: nowSeconds() - 10 })
    await a!.app.secureWs.revokeUser('alice', { issuedBefore: (nowSeconds() - 5) * 1000 })
    await server.stop()
    const refused = await connect(a!.url('/ws/alice-1'), { token: old })
    t.same(await refused.closed, INVALID_TOKEN, 'the known revocation is enforced without Redis')
    const unknown = await connect(a!.url('/ws/bob-1'), { token: sign('bob') })
    t.same(await unknown.closed, { code: 1013, reason: 'Try again later' }, 'a user whose revocations cannot be read is refused for now')
    await t.rejects(a!.app.secureWs.revokeUser('bob'), { code: 'FST_SECURE_WS_STORE_UNAVAILABLE' }, 'a logout that cannot be stored rejects')
  })
}
