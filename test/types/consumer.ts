// A consumer app, compiled by test/types-consumer.test.ts against the packed tarball as an ES
// module (nodenext and bundler resolution) and as CommonJS, then run. Every `@ts-expect-error`
// is a wrong use the package's types must refuse: an unused one fails the compile.
import Fastify, { type FastifyInstance } from 'fastify'
import { Type, type Static } from '@sinclair/typebox'
import secureWs, { MemoryStore, memoryStore, type RouteParams, type SecureWsConnection } from 'fastify-secure-ws'

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false
function expectType<T extends true> (): T | undefined { return undefined }

interface Room {
  ownerId: string
  name: string
  clear: () => void
}
const rooms = new Map<string, Room>([['r1', { ownerId: 'alice', name: 'first', clear: () => {} }]])

const outbound = {
  said: Type.Object({ text: Type.String(), from: Type.String() }),
  cleared: Type.Object({})
}
const Say = Type.Object({ text: Type.String({ maxLength: 500 }) })

// The route's params, as find-my-way reads them from the URL.
expectType<Equal<RouteParams<'/ws/rooms/:roomId'>, { roomId: string }>>()
expectType<Equal<RouteParams<'/geo/:lat-:lng/:zoom(^\\d+$)/tiles'>, { lat: string, lng: string, zoom: string }>>()
expectType<Equal<RouteParams<'/files/:id?'>, { id?: string }>>()
expectType<Equal<RouteParams<'/static/*'>, { '*': string }>>()
expectType<Equal<RouteParams<'/time::now/:tz'>, { tz: string }>>()
expectType<Equal<RouteParams<'/plain'>, {}>>()
expectType<Equal<RouteParams<string>, Record<string, string>>>()

async function main (): Promise<Record<string, unknown>> {
  const app = Fastify()
  await app.register(secureWs, {
    origins: ['https://app.example.com'],
    jwt: { key: 'k'.repeat(32), algorithms: ['HS256'] },
    store: memoryStore()
  })

  app.secureWs.route({
    url: '/ws/rooms/:roomId',
    resolveSession: ({ params, user }) => {
      expectType<Equal<typeof params.roomId, string>>()
      // @ts-expect-error the URL names no `room` parameter
      void params.room
      expectType<Equal<typeof user.id, string>>()
      return rooms.get(params.roomId)
    },
    outbound,
    messages: (message) => ({
      say: message({ payload: Say }, (conn, payload) => {
        expectType<Equal<typeof payload, { text: string }>>()
        expectType<Equal<typeof payload, Static<typeof Say>>>()
        expectType<Equal<typeof conn.session, Room>>()
        expectType<Equal<typeof conn.params.roomId, string>>()
        // @ts-expect-error the payload has no `txt`
        void payload.txt
        // @ts-expect-error the session type comes from resolveSession
        void conn.session.secret
        // @ts-expect-error the URL names no `id` parameter
        void conn.params.id
        conn.send('said', { text: payload.text, from: conn.user.id })
        // @ts-expect-error `said` needs `from`
        conn.send('said', { text: payload.text })
        // @ts-expect-error `said`'s text is a string
        conn.send('said', { text: 1, from: conn.user.id })
        // @ts-expect-error no outbound type `shout`
        conn.send('shout', { text: payload.text })
      }),
      clear: message({ scopes: ['moderate'] }, (conn, payload) => {
        expectType<Equal<typeof payload, undefined>>()
        conn.session.clear()
        conn.send('cleared', {})
      }),
      shout: message({
        payload: Type.Object({ text: Type.String(), times: Type.Optional(Type.Integer()) }),
        authorize: (conn, payload) => {
          expectType<Equal<typeof payload, { text: string, times?: number }>>()
          return conn.session.ownerId === conn.user.id
        }
      }, async () => {})
    }),
    onConnect: (conn) => {
      expectType<Equal<typeof conn, SecureWsConnection<Room, typeof outbound, { roomId: string }>>>()
    }
  })

  // Routes written before params were typed keep compiling: a URL typed `string` gives a record.
  const url: string = '/ws/legacy/:id'
  app.secureWs.route({
    url,
    resolveSession: ({ params }) => {
      expectType<Equal<typeof params, Readonly<Record<string, string>>>>()
      return rooms.get(params.id ?? '')
    },
    messages: { ping: { handler: (conn) => { conn.close() } } }
  })

  await app.ready()
  const typed = await app.secureWs.publish<typeof outbound>('room:r1', 'said', { text: 'hi', from: 'server' })
  const local = await app.secureWs.publish<typeof outbound>('room:r1', 'cleared', {}, { local: true })
  // Without the schemas' type, publish takes any type and body, as before.
  const untyped = await app.secureWs.publish('room:r1', 'anything', { at: 1 })
  expectType<Equal<typeof typed, number>>()

  const store: MemoryStore = new MemoryStore()
  const stats = app.secureWs.stats()
  await app.close()
  await store.close()
  return { typed, local, untyped, connections: stats.connections }
}

/** Wrong uses, refused at compile time; never run (the plugin would refuse them at run time too). */
export async function wrongUses (app: FastifyInstance): Promise<void> {
  app.secureWs.route({
    url: '/ws/bad',
    resolveSession: () => rooms.get('r1'),
    // @ts-expect-error an outbound schema must be a TypeBox object schema
    outbound: { said: Type.String() },
    messages: {}
  })
  // @ts-expect-error `said` needs `from`
  await app.secureWs.publish<typeof outbound>('room:r1', 'said', { text: 'hi' })
  // @ts-expect-error no outbound type `shout`
  await app.secureWs.publish<typeof outbound>('room:r1', 'shout', { text: 'hi' })
  // @ts-expect-error the URL's parameter is `roomId`
  app.secureWs.route({ url: '/ws/rooms/:roomId', resolveSession: ({ params }) => rooms.get(params.id), messages: {} })
}

main().then((result) => { console.log(JSON.stringify(result)) }, (err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
