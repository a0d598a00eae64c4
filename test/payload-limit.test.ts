import t from 'tap'
import Fastify from 'fastify'
import secureWs, { type SecureWsOptions } from '../lib/index.js'
import { build, connect, sign, testRoute, ORIGIN, SECRET, type Client } from './helpers.js'

const PONG = { type: 'pong' }
// A frame over its route's limit is refused by ws itself as soon as its header arrives (each
// secured socket gets its route's limit in ws, so the frame is never buffered or inflated);
// ws closes with 1009 and sends no reason.
const TOO_BIG_FOR_WS = { code: 1009, reason: '' }

/** A ping frame of exactly `bytes` bytes; the padding is an envelope field the server ignores. */
function pingOf (bytes: number): string {
  const frame = `{"type":"ping","pad":"${'x'.repeat(bytes - 24)}"}`
  if (Buffer.byteLength(frame) !== bytes) throw new Error(`cannot build a ${bytes}-byte ping`)
  return frame
}

async function open (t: tap.Test, url: string): Promise<Client> {
  const c = await connect(url, { token: sign('alice') })
  t.teardown(() => c.close())
  t.equal(await c.opened, true, 'connected')
  return c
}

/**
 * A server with the fixture's route at `/ws/:sessionId` under the plugin's limits, and the same
 * route at `/own/:sessionId` with its own `maxPayloadBytes`.
 */
async function twoRoutes (t: tap.Test, pluginLimit: number | undefined, routeLimit: number): Promise<(path: string) => string> {
  const app = Fastify()
  await app.register(secureWs, {
    origins: [ORIGIN],
    jwt: { key: SECRET, algorithms: ['HS256'] },
    ...(pluginLimit === undefined ? {} : { limits: { maxPayloadBytes: pluginLimit } })
  } satisfies SecureWsOptions)
  app.secureWs.route(testRoute())
  app.secureWs.route(testRoute({ url: '/own/:sessionId', limits: { maxPayloadBytes: routeLimit } }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { port } = app.server.address() as { port: number }
  return (path) => `ws://127.0.0.1:${port}${path}`
}

t.test('the plugin limit: a frame exactly at it is processed, one byte more closes with 1009', async (t) => {
  const { url } = await build(t, { options: { limits: { maxPayloadBytes: 1024 } } })
  const c = await open(t, url('/ws/alice-1'))
  c.send(pingOf(1024))
  t.strictSame(await c.next(), PONG, '1024 bytes is processed')
  c.send(pingOf(1025))
  t.strictSame(await c.closed, TOO_BIG_FOR_WS, '1025 bytes closes with 1009')
})

t.test('the plugin limit applies to binary frames too', async (t) => {
  const { url } = await build(t, { options: { limits: { maxPayloadBytes: 1024 } } })
  const c = await open(t, url('/ws/alice-1'))
  c.ws.send(Buffer.alloc(1025))
  t.strictSame(await c.closed, TOO_BIG_FOR_WS)
})

t.test('a route limit larger than the plugin\'s is honoured on that route only', async (t) => {
  const url = await twoRoutes(t, 1024, 4096)
  const own = await open(t, url('/own/alice-1'))
  own.send(pingOf(2000))
  t.strictSame(await own.next(), PONG, '2000 bytes is accepted on the route allowing 4096')
  own.send(pingOf(4096))
  t.strictSame(await own.next(), PONG, 'exactly 4096 bytes is accepted there')

  const shared = await open(t, url('/ws/alice-1'))
  shared.send(pingOf(1024))
  t.strictSame(await shared.next(), PONG, 'the plugin limit still admits 1024 bytes elsewhere')
  shared.send(pingOf(2000))
  t.strictSame(await shared.closed, TOO_BIG_FOR_WS, 'but 2000 bytes closes a route under the plugin limit (ws holds each secured socket to its route\'s limit)')

  own.send(pingOf(4097))
  t.strictSame(await own.closed, TOO_BIG_FOR_WS, 'one byte over the route limit closes')
})

t.test('a route limit smaller than the plugin\'s closes with 1009 "Message too big"', async (t) => {
  const url = await twoRoutes(t, undefined, 512)
  const shared = await open(t, url('/ws/alice-1'))
  shared.send(pingOf(600))
  t.strictSame(await shared.next(), PONG, '600 bytes is fine under the plugin default')

  const own = await open(t, url('/own/alice-1'))
  own.send(pingOf(512))
  t.strictSame(await own.next(), PONG, 'exactly 512 bytes is processed')
  own.send(pingOf(513))
  t.strictSame(await own.closed, TOO_BIG_FOR_WS, '513 bytes closes, refused by ws from the frame\'s header')
  t.strictSame(own.pending, [], 'the oversized frame was not answered')

  t.equal(shared.ws.readyState, shared.ws.OPEN, 'the other route\'s connection is untouched')
})
