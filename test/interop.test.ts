import { createServer, type Server } from 'node:http'
import { once } from 'node:events'
import { Writable } from 'node:stream'
import t from 'tap'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import WebSocket from 'ws'
import { GraphQLObjectType, GraphQLSchema, GraphQLString } from 'graphql'
import { createClient } from 'graphql-ws'
import { makeHandler } from 'graphql-ws/use/@fastify/websocket'
import secureWs from '../lib/index.js'
import { ORIGIN, SECRET, Client, connect, sign, testRoute, closeOf, within } from './helpers.js'

const PLUGIN_OPTIONS = { origins: [ORIGIN], jwt: { key: SECRET, algorithms: ['HS256' as const] } }
const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }

const schema = new GraphQLSchema({
  query: new GraphQLObjectType({ name: 'Query', fields: { hello: { type: GraphQLString, resolve: () => 'world' } } })
})

/** One GraphQL query over graphql-ws's own client. */
async function graphqlHello (url: string): Promise<unknown> {
  const client = createClient({ url, webSocketImpl: WebSocket, retryAttempts: 0, lazy: true })
  try {
    return await within(new Promise((resolve, reject) => {
      let result: unknown
      client.subscribe({ query: '{ hello }' }, { next: (value) => { result = value }, error: reject, complete: () => resolve(result) })
    }), 5000, 'the graphql-ws query')
  } finally {
    await client.dispose()
  }
}

t.test('graphql-ws\'s @fastify/websocket adapter beside a secured route: both keep working', async (t) => {
  const app = Fastify()
  await app.register(secureWs, PLUGIN_OPTIONS)
  app.secureWs.route(testRoute())
  app.get('/graphql', { websocket: true }, makeHandler({ schema }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const base = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}`

  // The adapter assigns its own handleProtocols on every connection; twice, to be sure.
  t.same(await graphqlHello(`${base}/graphql`), { data: { hello: 'world' } })
  t.same(await graphqlHello(`${base}/graphql`), { data: { hello: 'world' } })

  const bearer = await connect(`${base}/ws/alice-1`, { token: sign('alice'), via: 'protocol' })
  t.equal(bearer.ws.protocol, 'bearer', 'a bearer client still negotiates bearer')
  bearer.send({ type: 'whoami' })
  t.same(await bearer.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  await bearer.close()
  const bad = await connect(`${base}/ws/alice-1`, { token: 'not-a-token', via: 'protocol' })
  t.same(await closeOf(bad), INVALID_TOKEN, 'a bad token still reads 4401')
  t.same(await graphqlHello(`${base}/graphql`), { data: { hello: 'world' } }, 'and GraphQL still works after')
})

t.test('@fastify/websocket listening on the app\'s own server: tokens are taken there and kept out of its logs; Fastify\'s server does not hang', async (t) => {
  const logs: string[] = []
  const stream = new Writable({ write (chunk, _enc, cb) { logs.push(chunk.toString()); cb() } })
  const other: Server = createServer()
  other.listen(0, '127.0.0.1')
  await once(other, 'listening')
  t.teardown(() => { other.closeAllConnections(); other.close() })
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(websocket, { options: { server: other } })
  await app.register(secureWs, PLUGIN_OPTIONS)
  app.secureWs.route(testRoute())
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())

  const token = sign('alice')
  const c = await connect(`ws://127.0.0.1:${(other.address() as { port: number }).port}/ws/alice-1`, { token, via: 'query' })
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' }, 'a ?token= on the other server is admitted')
  await c.close()
  t.notOk(logs.join('\n').includes(token), 'and is not in any log line')

  const onFastify = new Client(`ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws/alice-1`, { token })
  t.equal(await within(onFastify.opened, 3000, 'an upgrade to Fastify\'s own server being answered'), false, 'answered, not upgraded')
  onFastify.ws.terminate()
})

t.test('registering @fastify/websocket after the plugin fails at that register call with an error that names both and the fix', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(secureWs, PLUGIN_OPTIONS)
  t.throws(() => app.register(websocket), {
    code: 'FST_SECURE_WS_REGISTRATION_ORDER',
    message: 'fastify-secure-ws already registered @fastify/websocket; register @fastify/websocket before fastify-secure-ws, and the plugin uses yours with its options'
  })
  await app.ready()
})

t.test('registering @fastify/websocket before the plugin works, with its options', async (t) => {
  const app = Fastify()
  await app.register(websocket, { options: { maxPayload: 4096 } })
  await app.register(secureWs, PLUGIN_OPTIONS)
  app.secureWs.route(testRoute())
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const url = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws/alice-1`
  const c = await connect(url, { token: sign('alice') })
  c.send({ type: 'ping' })
  t.same(await c.next(), { type: 'pong' })
  await c.close()
  const big = await connect(url, { token: sign('alice') })
  big.send({ type: 'echo', payload: { text: 'x'.repeat(5000) } })
  t.same(await closeOf(big), { code: 1009, reason: '' }, 'the app\'s stricter maxPayload holds')
})

t.test('with the app\'s own @fastify/websocket registered first, fastify.close() still sends the plugin\'s clients 1001', async (t) => {
  const app = Fastify()
  await app.register(websocket)
  await app.register(secureWs, PLUGIN_OPTIONS)
  app.secureWs.route(testRoute())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const c = await connect(`ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws/alice-1`, { token: sign('alice') })
  t.ok(await c.admitted())
  const closed = closeOf(c)
  await app.close()
  t.same(await closed, { code: 1001, reason: 'Server shutting down' }, 'not @fastify/websocket\'s 1005')
})

// Found by running @fastify/websocket's own suite with the plugin registered (test/compat/):
// the early checks read the socket of a request that injectWS builds without one.
t.test('injectWS keeps working with the plugin registered, on the app\'s own routes and on secured ones', async (t) => {
  const app = Fastify()
  await app.register(secureWs, PLUGIN_OPTIONS)
  app.secureWs.route(testRoute())
  app.get('/echo', { websocket: true }, (socket) => { socket.on('message', (data) => socket.send(data.toString())) })
  await app.ready()
  t.teardown(() => app.close())
  const plain = await within(app.injectWS('/echo'), 3000, 'injectWS on the app\'s route')
  const echoed = new Promise((resolve) => plain.once('message', (data) => resolve(data.toString())))
  plain.send('hello')
  t.equal(await within(echoed, 3000, 'the echo'), 'hello')
  plain.terminate()
  const secured = await within(app.injectWS(`/ws/alice-1?token=${sign('alice')}`, { headers: { origin: ORIGIN } }), 3000, 'injectWS on a secured route')
  const pong = new Promise((resolve) => secured.once('message', (data) => resolve(JSON.parse(data.toString()))))
  secured.send(JSON.stringify({ type: 'ping' }))
  t.same(await within(pong, 3000, 'the pong'), { type: 'pong' })
  secured.terminate()
})
