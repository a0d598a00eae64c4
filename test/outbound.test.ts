import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { Type, type TObject } from '@sinclair/typebox'
import secureWs, { InvalidRouteError } from '../lib/index.js'
import { build, connect, eventually, sign, testRoute, ORIGIN, SECRET, SESSIONS, type Client } from './helpers.js'

const INTERNAL = { type: 'error', message: 'Internal server error' }

/** Records every text frame exactly as it came over the wire. */
function rawFrames (c: Client): string[] {
  const raw: string[] = []
  c.ws.on('message', (data, isBinary) => { if (!isBinary) raw.push(data.toString()) })
  return raw
}

/** A Fastify instance with the plugin registered and not yet listening, so routes can still be declared. */
async function unstarted (t: tap.Test): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(secureWs, { origins: [ORIGIN], jwt: { key: SECRET, algorithms: ['HS256'] } })
  t.teardown(() => app.close())
  return app
}

function routeThrows (t: tap.Test, app: FastifyInstance, outbound: Record<string, TObject>, why: string): void {
  let caught: unknown
  try {
    app.secureWs.route(testRoute({ url: '/ws/:sessionId', outbound }))
  } catch (err) {
    caught = err
  }
  t.ok(caught instanceof InvalidRouteError, `${why}: throws InvalidRouteError`)
  t.equal((caught as { code?: string } | undefined)?.code, 'FST_SECURE_WS_INVALID_ROUTE', `${why}: code`)
}

t.test('the session frame carries only the declared fields, never the secret', async (t) => {
  const { url } = await build(t)
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.teardown(() => c.close())
  const raw = rawFrames(c)
  c.send({ type: 'session' })
  t.strictSame(await c.next(), { type: 'session', data: { id: 'alice-1', ownerId: 'alice' } })
  t.equal(raw.length, 1)
  const secret = SESSIONS.get('alice-1')!.secret
  t.equal(raw[0]!.includes(secret), false, 'the raw frame does not contain the secret')
  t.equal(raw[0]!.includes('secret'), false, 'nor the field name')
})

t.test('a declared outbound schema is required to be closed', async (t) => {
  const app = await unstarted(t)
  routeThrows(t, app, { open: Type.Object({ text: Type.String() }, { additionalProperties: true }) }, 'top-level additionalProperties: true')
  routeThrows(t, app, { open: Type.Object({ data: Type.Object({ id: Type.String() }, { additionalProperties: true }) }) }, 'nested additionalProperties: true')
  routeThrows(t, app, { open: Type.Object({ data: Type.Object({}, { additionalProperties: Type.String() }) }) }, 'additionalProperties as a schema')
  routeThrows(t, app, { open: Type.Object({ data: Type.Record(Type.String(), Type.String()) }) }, 'a Record (patternProperties)')
  routeThrows(t, app, { open: Type.Object({ list: Type.Array(Type.Object({ id: Type.String() }, { additionalProperties: true })) }) }, 'an open object inside an array')
  routeThrows(t, app, { open: Type.Object({ data: Type.Any() }) }, 'Type.Any() passes any value through')
  routeThrows(t, app, { open: Type.Object({ data: Type.Unknown() }) }, 'Type.Unknown() passes any value through')
  routeThrows(t, app, { open: Type.Object({ data: Type.Union([Type.String(), Type.Any()]) }) }, 'Type.Any() inside a union')
  routeThrows(t, app, { open: Type.Object({ list: Type.Array(Type.Unknown()) }) }, 'Type.Unknown() as array items')
  routeThrows(t, app, { open: Type.Object({ list: { type: 'array' } as unknown as TObject }) }, 'an array without items')
  routeThrows(t, app, { open: Type.Object({ list: { type: ['array', 'null'] } as unknown as TObject }) }, 'a nullable array without items')
  routeThrows(t, app, { open: Type.Object({ pair: Type.Tuple([Type.String(), Type.Any()]) }) }, 'Type.Any() in a tuple')
  routeThrows(t, app, { open: Type.Object({ data: true as unknown as TObject }) }, 'a `true` sub-schema')
  routeThrows(t, app, { open: Type.Object({ data: Type.Intersect([Type.Object({ id: Type.String() }), Type.Object({ extra: Type.Any() })]) }) }, 'Type.Any() inside an intersection')
})

t.test('outbound "error" is built in and cannot be redeclared', async (t) => {
  const app = await unstarted(t)
  routeThrows(t, app, { error: Type.Object({ message: Type.String(), stack: Type.String() }) }, 'outbound error')
})

t.test('a closed outbound schema is accepted (control for the tests above)', async (t) => {
  const app = await unstarted(t)
  t.doesNotThrow(() => app.secureWs.route(testRoute({
    outbound: {
      ...testRoute().outbound,
      nested: Type.Object({ data: Type.Object({ id: Type.String(), tags: Type.Array(Type.String()), at: Type.Union([Type.Number(), Type.Null()]) }) }),
      literal: Type.Object({ kind: Type.Literal('a'), level: Type.Enum({ low: 'low', high: 'high' }), pair: Type.Tuple([Type.String(), Type.Number()]) }),
      merged: Type.Object({ data: Type.Intersect([Type.Object({ id: Type.String() }), Type.Object({ ownerId: Type.String() })]) })
    }
  })))
})

t.test('send() of an undeclared type answers Internal server error and the process keeps running', async (t) => {
  const { url, logs } = await build(t, {
    route: {
      messages: {
        ...(testRoute().messages as Record<string, any>),
        oops: { handler: (conn: any) => { conn.send('undeclared', { text: 'x' }) } }
      }
    }
  })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.teardown(() => c.close())
  c.send({ type: 'oops' })
  t.strictSame(await c.next(), INTERNAL)
  c.send({ type: 'ping' })
  t.strictSame(await c.next(), { type: 'pong' }, 'the connection and the server still work')
  t.ok(logs.some((line) => line.includes('websocket message handler failed') && line.includes('undeclared')), 'the app bug is logged on the server')
})

t.test('publish() reaches subscribers only, drops undeclared fields and counts deliveries', async (t) => {
  const { url, app } = await build(t)
  const open = async (path: string, user: string): Promise<Client> => {
    const c = await connect(url(path), { token: sign(user) })
    t.teardown(() => c.close())
    t.equal(await c.opened, true, `${user} connected`)
    return c
  }
  const sub1 = await open('/ws/alice-1', 'alice')
  const sub2 = await open('/ws/bob-1', 'bob')
  const other = await open('/ws/alice-1', 'alice')
  const idle = await open('/ws/bob-1', 'bob')
  const raw1 = rawFrames(sub1)
  for (const [c, topic] of [[sub1, 'news'], [sub2, 'news'], [other, 'sport']] as const) {
    c.send({ type: 'subscribe', payload: { topic } })
    t.strictSame(await c.next(), { type: 'pong' }, `subscribed to ${topic}`)
  }

  t.equal(await app.secureWs.publish('news', 'news', { text: 'hello', secret: 'leaked-s3cr3t', extra: 1 }), 2, 'delivered to the two subscribers')
  t.strictSame(await sub1.next(), { type: 'news', text: 'hello' })
  t.strictSame(await sub2.next(), { type: 'news', text: 'hello' })
  t.equal(raw1.some((frame) => frame.includes('leaked-s3cr3t')), false, 'the raw frame holds no undeclared field')

  // Frames arrive in order: if a non-subscriber had got the news, it would come before the pong.
  for (const c of [other, idle]) {
    c.send({ type: 'ping' })
    t.strictSame(await c.next(), { type: 'pong' }, 'a non-subscriber got nothing')
  }

  t.equal(await app.secureWs.publish('nobody-listens', 'news', { text: 'x' }), 0, 'a topic without subscribers delivers to none')
  t.equal(await app.secureWs.publish('news', 'undeclared', { text: 'x' }), 0, 'an undeclared type is delivered to none')

  await sub2.close()
  // The server sees the close a moment after the client does.
  t.equal(await eventually(() => app.secureWs.stats().users.bob === 1), true)
  t.equal(await app.secureWs.publish('news', 'news', { text: 'again' }), 1, 'a closed subscriber no longer counts')
  t.strictSame(await sub1.next(), { type: 'news', text: 'again' })
  for (const c of [sub1, other, idle]) {
    c.send({ type: 'ping' })
    t.strictSame(await c.next(), { type: 'pong' }, 'no further frames pending')
  }
})
