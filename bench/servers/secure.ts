/**
 * fastify-secure-ws: HS256 JWT, origin allowlist, a session resolver, schema-checked `ping`
 * answered through a compiled outbound `pong`. Limits are raised so that the run never hits
 * them (the limits are still checked on every message and upgrade). STORE=redis with
 * REDIS_URL uses the Redis store.
 */
import Fastify from 'fastify'
import { Type } from '@sinclair/typebox'
import secureWs, { memoryStore, redisStore } from '../../lib/index.js'
import { BENCH_ORIGIN, ROUTE, announceReady, readServerEnv, run } from '../common.js'

interface BenchSession {
  ownerId: string
}

run(async () => {
  const { port, secret } = readServerEnv()
  let store
  if (process.env.STORE === 'redis') {
    const url = process.env.REDIS_URL
    if (url === undefined || url === '') throw new Error('STORE=redis needs REDIS_URL')
    store = redisStore({ url })
  } else {
    store = memoryStore()
  }
  const app = Fastify({ logger: false })
  await app.register(secureWs, {
    origins: [BENCH_ORIGIN],
    jwt: { key: secret, algorithms: ['HS256'] },
    limits: { connectionsPerUser: 10, messagesPerSecond: 1e9, messagesPerMinute: 1e9 },
    store
  })
  app.secureWs.route({
    url: ROUTE,
    // Sessions are named after their owner: `/ws/u7` is user u7's.
    resolveSession: ({ params }): BenchSession => ({ ownerId: params.sessionId! }),
    outbound: { pong: Type.Object({}) },
    messages: (message) => ({
      ping: message((conn) => { conn.send('pong', {}) })
    })
  })
  await app.listen({ port, host: '127.0.0.1' })
  announceReady()
})
