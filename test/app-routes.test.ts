import type { IncomingMessage } from 'node:http'
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import websocket from '@fastify/websocket'
import WebSocket from 'ws'
import secureWs from '../lib/index.js'
import { ORIGIN, SECRET, connect, sign, testRoute, within } from './helpers.js'

/** What a plain client of the app's own route saw: the subprotocol the 101 named, and the first frame. */
interface PlainOpen {
  protocol: string | undefined
  frame: string
}

/** Connects a plain `ws` client offering `protocols`; fails the test instead of hanging if the upgrade never completes. */
async function openPlain (url: string, protocols: string[]): Promise<PlainOpen> {
  const ws = new WebSocket(url, protocols)
  ws.on('error', () => {})
  let protocol: string | undefined
  ws.once('upgrade', (response: IncomingMessage) => {
    const header = response.headers['sec-websocket-protocol']
    protocol = Array.isArray(header) ? header.join(',') : header
  })
  try {
    const frame = await within(new Promise<string>((resolve, reject) => {
      ws.once('message', (data) => resolve(data.toString()))
      ws.once('close', (code) => reject(new Error(`closed with ${code} before the first frame`)))
    }), 3000, `the app's own route to answer with protocols [${protocols.join(', ')}]`)
    return { protocol, frame }
  } finally {
    ws.terminate()
  }
}

async function listen (t: { teardown: (fn: () => unknown) => void }, app: FastifyInstance): Promise<(path: string) => string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { port } = app.server.address() as { port: number }
  return (path) => `ws://127.0.0.1:${port}${path}`
}

const PLUGIN_OPTIONS = { origins: [ORIGIN], jwt: { key: SECRET, algorithms: ['HS256' as const] } }

t.test('a WebSocket route the app declares itself, beside the plugin\'s @fastify/websocket', async (t) => {
  const app = Fastify({ logger: false })
  await app.register(secureWs, PLUGIN_OPTIONS)
  app.secureWs.route(testRoute())
  app.get('/raw', { websocket: true }, (socket) => { socket.send('plain hello') })
  const url = await listen(t, app)

  t.test('opens without subprotocols', async (t) => {
    t.same(await openPlain(url('/raw'), []), { protocol: undefined, frame: 'plain hello' })
  })

  t.test('opens with subprotocols, negotiating the first one as ws does by default', async (t) => {
    t.same(await openPlain(url('/raw'), ['chat', 'v2']), { protocol: 'chat', frame: 'plain hello' })
    t.same(await openPlain(url('/raw'), ['bearer', 'not-a-token']), { protocol: 'bearer', frame: 'plain hello' })
  })

  t.test('the secured route still negotiates only bearer', async (t) => {
    const c = await connect(url('/ws/alice-1'), { token: sign('alice'), via: 'protocol' })
    t.equal(c.ws.protocol, 'bearer')
    c.send({ type: 'ping' })
    t.same(await c.next(), { type: 'pong' })
    await c.close()
  })
})

t.test('an app that registered @fastify/websocket itself, without a handleProtocols', async (t) => {
  const app = Fastify({ logger: false })
  await app.register(websocket, { options: { maxPayload: 1024 } })
  await app.register(secureWs, PLUGIN_OPTIONS)
  app.secureWs.route(testRoute())
  app.get('/raw', { websocket: true }, (socket) => { socket.send('plain hello') })
  const url = await listen(t, app)

  t.same(await openPlain(url('/raw'), ['chat', 'v2']), { protocol: 'chat', frame: 'plain hello' }, 'ws\'s default: the first offered')
  const c = await connect(url('/ws/alice-1'), { token: sign('alice'), via: 'protocol' })
  t.equal(c.ws.protocol, 'bearer')
  await c.close()
})

t.test('an app that registered @fastify/websocket itself, with its own handleProtocols', async (t) => {
  const app = Fastify({ logger: false })
  const offered: string[][] = []
  await app.register(websocket, {
    options: {
      maxPayload: 1024,
      handleProtocols: (protocols) => {
        offered.push([...protocols])
        return protocols.has('v2') ? 'v2' : false
      }
    }
  })
  await app.register(secureWs, PLUGIN_OPTIONS)
  app.secureWs.route(testRoute())
  app.get('/raw', { websocket: true }, (socket) => { socket.send('plain hello') })
  const url = await listen(t, app)

  t.test('the app\'s chooser still decides for the app\'s routes', async (t) => {
    t.same(await openPlain(url('/raw'), ['chat', 'v2']), { protocol: 'v2', frame: 'plain hello' })
    t.same(offered, [['chat', 'v2']])
  })

  t.test('a chooser that picks none leaves the 101 without a subprotocol, as ws does', async (t) => {
    offered.length = 0
    const ws = new WebSocket(url('/raw'), ['chat'])
    const failure = await within(new Promise<string>((resolve) => {
      ws.once('error', (err) => resolve(err.message))
      ws.once('open', () => resolve('opened'))
    }), 3000, 'the client to settle')
    t.equal(failure, 'Server sent no subprotocol', 'the client refuses a 101 that names none of its offers')
    t.same(offered, [['chat']])
  })

  t.test('the secured route answers bearer without asking the app\'s chooser (which would see the token)', async (t) => {
    offered.length = 0
    const c = await connect(url('/ws/alice-1'), { token: sign('alice'), via: 'protocol' })
    t.equal(c.ws.protocol, 'bearer')
    c.send({ type: 'ping' })
    t.same(await c.next(), { type: 'pong' })
    t.same(offered, [], 'the chooser never saw the token')
    await c.close()
  })
})
