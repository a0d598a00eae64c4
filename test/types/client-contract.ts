/**
 * Compile-time checks of the typed client, run by `npm run typecheck` (tsc --noEmit): each
 * `@ts-expect-error` line must fail to compile, so a contract that stopped typing something
 * fails the type check. Nothing here runs.
 */
import Fastify from 'fastify'
import { Type } from '@sinclair/typebox'
import WebSocket from 'ws'
import secureWs, { defineRoute, type RouteContract } from '../../lib/index.js'
import { createClient, type Contract, type SecureWsCloseError } from '../../lib/client/index.js'

const rooms = new Map([['r1', { id: 'r1', ownerId: 'alice', topic: 'general' }]])

// The function form: `message()` types each handler's payload from its schema.
export const chatRoute = defineRoute({
  url: '/ws/rooms/:roomId',
  resolveSession: ({ params }) => rooms.get(params.roomId ?? ''),
  outbound: {
    said: Type.Object({ text: Type.String(), from: Type.String() }),
    pong: Type.Object({}),
    refreshed: Type.Object({ exp: Type.Integer() })
  },
  messages: (message) => ({
    ping: message((conn) => conn.send('pong', {})),
    say: message({ payload: Type.Object({ text: Type.String() }) }, (conn, { text }) => {
      conn.send('said', { text, from: conn.session.topic })
      // @ts-expect-error the route's own outbound schemas type its handlers' sends
      conn.send('said', { text })
    }),
    refresh: message({ payload: Type.Object({ token: Type.String() }) }, async (conn, { token }) => {
      const user = await conn.refresh(token)
      if (user?.expiresAt !== undefined) conn.send('refreshed', { exp: Math.floor(user.expiresAt / 1000) })
    })
  })
})
export type ChatContract = RouteContract<typeof chatRoute>

// The object form, without outbound schemas.
export const plainRoute = defineRoute({
  url: '/ws/plain/:roomId',
  resolveSession: ({ params }) => rooms.get(params.roomId ?? ''),
  messages: {
    ping: { handler: (conn) => { conn.close() } },
    move: { payload: Type.Object({ x: Type.Number(), y: Type.Number() }), handler: () => {} }
  }
})
export type PlainContract = RouteContract<typeof plainRoute>

// A route defined for its contract is still an ordinary route.
const app = Fastify()
app.register(secureWs, { origins: ['https://app.example.com'], jwt: { key: 'k'.repeat(32), algorithms: ['HS256'] } })
app.secureWs.route(chatRoute)
app.secureWs.route(plainRoute)

const chat = createClient<ChatContract>({ url: 'wss://app.example.com/ws/rooms/r1', getToken: async () => 'token', WebSocket, refresh: true })

chat.send('say', { text: 'hello' })
chat.send('ping')
chat.send('refresh', { token: 'next' })
// @ts-expect-error a field the schema does not declare
chat.send('say', { txt: 'hello' })
// @ts-expect-error a field of the wrong type
chat.send('say', { text: 42 })
// @ts-expect-error the payload is required
chat.send('say')
// @ts-expect-error a message without a payload takes none
chat.send('ping', { text: 'hello' })
// @ts-expect-error a message type the route does not declare
chat.send('shout', { text: 'hello' })

chat.on('said', (frame) => {
  const text: string = frame.text
  const from: string = frame.from
  const type: 'said' = frame.type
  // @ts-expect-error not a field of `said`
  void frame.exp
  return [text, from, type]
})
chat.on('refreshed', (frame) => {
  const exp: number = frame.exp
  return exp
})
chat.on('error', (frame) => {
  const message: string = frame.message
  return message
})
// @ts-expect-error a frame type the route does not send
chat.on('shouted', () => {})
// @ts-expect-error `said` carries no `message`
chat.on('said', (frame) => frame.message)

const plain = createClient<PlainContract>({
  url: 'wss://app.example.com/ws/plain/r1',
  getToken: () => 'token',
  onClose: (error: SecureWsCloseError) => {
    const code: number = error.code
    const willReconnect: boolean = error.willReconnect
    // @ts-expect-error kinds are a closed set of names
    if (error.kind === 'logged-out') return
    return [code, willReconnect]
  }
})
plain.send('move', { x: 1, y: 2 })
// @ts-expect-error y is missing
plain.send('move', { x: 1 })
plain.on('error', (frame) => frame.message)
// @ts-expect-error this route declares no outbound frames
plain.on('said', () => {})

// @ts-expect-error refresh needs a route that takes `refresh {token}` and answers `refreshed {exp}`
createClient<PlainContract>({ url: 'wss://app.example.com/ws/plain/r1', getToken: () => 'token', refresh: true })

// A contract can be written by hand, for a server this package does not type.
interface HandWritten extends Contract {
  inbound: { join: { room: string } }
  outbound: { joined: { members: string[] } }
}
const hand = createClient<HandWritten>({ url: 'wss://example.com/ws', getToken: () => 'token' })
hand.send('join', { room: 'general' })
hand.on('joined', (frame) => frame.members.join(', '))
// @ts-expect-error
hand.send('join', { room: 1 })

// Without a contract, anything goes.
const loose = createClient({ url: 'wss://example.com/ws', getToken: () => 'token' })
loose.send('anything', { at: 'all' })
loose.on('whatever', (frame) => frame.type)

export { chat, plain, hand, loose }
