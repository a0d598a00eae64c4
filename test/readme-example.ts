// README.md's "Example", kept here so `npm test` type-checks it (tsc includes test/): it must
// compile as written. The only difference from the README is the import path of the plugin.
// Not a test file (tap runs *.test.ts); nothing imports it.
import Fastify from 'fastify'
import { Type } from '@sinclair/typebox'
import secureWs from '../lib/index.js'

const rooms = new Map([['r1', { id: 'r1', ownerId: 'alice', title: 'General' }]])

const app = Fastify({ logger: true, requestTimeout: 15_000 })
app.server.headersTimeout = 10_000

app.register(secureWs, {
  origins: ['https://app.example.com'],
  jwt: { key: process.env.JWT_SECRET!, algorithms: ['HS256'] }
})

app.register(async (app) => {
  app.secureWs.route({
    url: '/ws/rooms/:roomId',
    // Refused with 1008 `Access denied` unless the room exists and belongs to the user.
    resolveSession: ({ params }) => rooms.get(params.roomId ?? ''),
    outbound: { said: Type.Object({ text: Type.String() }) },
    messages: (message) => ({
      say: message({ payload: Type.Object({ text: Type.String({ maxLength: 500 }) }) },
        (conn, { text }) => { conn.send('said', { text }) }),
      rename: message({ scopes: ['moderate'], payload: Type.Object({ title: Type.String({ maxLength: 100 }) }) },
        (conn, { title }) => { conn.session.title = title })
    })
  })
})

app.listen({ port: 3000 }, (err) => { if (err) throw err })
