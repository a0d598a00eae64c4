import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import { Type } from '@sinclair/typebox'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import secureWs, { type SecureWsOptions, type SecureWsRouteOptions } from '../lib/index.js'

export const SECRET = 'test-secret-that-is-long-enough-for-hs256'
export const ORIGIN = 'http://app.test:8080'

const signHs256 = createSigner({ key: SECRET, algorithm: 'HS256' })

/** Signs an HS256 token for `sub`, valid for a minute unless the claims say otherwise. */
export function sign (sub: string | undefined, claims: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000)
  return signHs256({ ...(sub === undefined ? {} : { sub }), exp: now + 60, iat: now, ...claims })
}

export interface Session {
  id: string
  ownerId: string
  secret: string
}

export const SESSIONS = new Map<string, Session>([
  ['alice-1', { id: 'alice-1', ownerId: 'alice', secret: 'alice-api-key-s3cr3t' }],
  ['bob-1', { id: 'bob-1', ownerId: 'bob', secret: 'bob-api-key-s3cr3t' }]
])

/** A route that exercises every message feature; tests override parts of it. */
export function testRoute (overrides: Partial<SecureWsRouteOptions<Session, any>> = {}): SecureWsRouteOptions<Session, any> {
  return {
    url: '/ws/:sessionId',
    resolveSession: ({ params }) => SESSIONS.get(params.sessionId!),
    outbound: {
      pong: Type.Object({}),
      echo: Type.Object({ text: Type.String() }),
      whoami: Type.Object({ user: Type.String(), session: Type.String() }),
      session: Type.Object({ data: Type.Object({ id: Type.String(), ownerId: Type.String() }) }),
      news: Type.Object({ text: Type.String() })
    },
    messages: {
      ping: { handler: (conn) => { conn.send('pong', {}) } },
      echo: { payload: Type.Object({ text: Type.String({ maxLength: 100 }) }), handler: (conn, p: { text: string }) => { conn.send('echo', p) } },
      whoami: { handler: (conn) => { conn.send('whoami', { user: conn.user.id, session: conn.session.id }) } },
      session: { handler: (conn) => { conn.send('session', { data: conn.session }) } },
      admin: { scopes: ['admin'], handler: (conn) => { conn.send('pong', {}) } },
      subscribe: { payload: Type.Object({ topic: Type.String() }), handler: (conn, p: { topic: string }) => { conn.subscribe(p.topic); conn.send('pong', {}) } },
      boom: { handler: () => { throw new Error('db password is hunter2 at /srv/app/secret.ts:12') } },
      asyncBoom: { handler: async () => { throw new Error('async internals /srv/app/x.ts') } }
    },
    ...overrides
  }
}

export interface BuildOptions {
  options?: Partial<SecureWsOptions>
  route?: Partial<SecureWsRouteOptions<Session, any>> | false
  logLevel?: string
}

export interface Built {
  app: FastifyInstance
  /** `ws://127.0.0.1:<port><path>` */
  url: (path: string) => string
  /** Every log line the app wrote, raw. */
  logs: string[]
}

/** A real Fastify server on 127.0.0.1 with the plugin and the test route, closed in teardown. */
export async function build (t: { teardown: (fn: () => unknown) => void }, opts: BuildOptions = {}): Promise<Built> {
  const logs: string[] = []
  const stream = new Writable({
    write (chunk, _enc, cb) { logs.push(chunk.toString()); cb() }
  })
  const app = Fastify({ logger: { level: opts.logLevel ?? 'info', stream } })
  await app.register(secureWs, {
    origins: [ORIGIN],
    jwt: { key: SECRET, algorithms: ['HS256'] },
    ...opts.options
  } as SecureWsOptions)
  if (opts.route !== false) app.secureWs.route(testRoute(opts.route ?? {}))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { port } = app.server.address() as { port: number }
  return { app, url: (path) => `ws://127.0.0.1:${port}${path}`, logs }
}

export interface Closed {
  code: number
  reason: string
}

/** A real `ws` client that queues what it receives, so tests can await frames in order. */
export class Client {
  readonly ws: WebSocket
  readonly opened: Promise<boolean>
  readonly closed: Promise<Closed>
  /** HTTP status when the server refused the upgrade. */
  status: number | undefined
  readonly #frames: unknown[] = []
  readonly #waiters: Array<{ resolve: (frame: unknown) => void, reject: (err: Error) => void }> = []

  /** `autoPong: false` makes a client that never answers the server's pings. */
  constructor (url: string, options: { origin?: string | null, token?: string, via?: 'query' | 'protocol', protocols?: string[], autoPong?: boolean } = {}) {
    const origin = options.origin === undefined ? ORIGIN : options.origin
    const via = options.via ?? 'query'
    let target = url
    let protocols = options.protocols
    if (options.token !== undefined) {
      if (via === 'query') target += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(options.token)
      else protocols = ['bearer', options.token]
    }
    this.ws = new WebSocket(target, protocols, { ...(origin === null ? {} : { origin }), autoPong: options.autoPong ?? true })
    this.ws.on('message', (data, isBinary) => {
      const frame = isBinary ? data : JSON.parse(data.toString())
      const waiter = this.#waiters.shift()
      if (waiter !== undefined) waiter.resolve(frame)
      else this.#frames.push(frame)
    })
    this.opened = new Promise((resolve) => {
      this.ws.once('open', () => resolve(true))
      this.ws.once('unexpected-response', (_req, res) => {
        this.status = res.statusCode
        resolve(false)
        res.resume()
        this.ws.terminate()
      })
      this.ws.once('close', () => resolve(false))
    })
    this.ws.on('error', () => {})
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        // Nothing more can arrive: fail pending waits now rather than at their timeout.
        for (const waiter of this.#waiters.splice(0)) waiter.reject(new Error('closed before a frame arrived'))
        resolve({ code, reason: reason.toString() })
      })
    })
  }

  /** The next frame, parsed; rejects after `ms`, or at close, so a missing frame fails the test instead of hanging. */
  next (ms = 2000): Promise<any> {
    if (this.#frames.length > 0) return Promise.resolve(this.#frames.shift())
    if (this.ws.readyState === this.ws.CLOSED) return Promise.reject(new Error('closed before a frame arrived'))
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (frame: unknown): void => { clearTimeout(timer); resolve(frame) },
        reject: (err: Error): void => { clearTimeout(timer); reject(err) }
      }
      const timer = setTimeout(() => {
        const i = this.#waiters.indexOf(waiter)
        if (i !== -1) this.#waiters.splice(i, 1)
        reject(new Error(`no frame within ${ms} ms`))
      }, ms)
      this.#waiters.push(waiter)
    })
  }

  /**
   * Whether the server admitted this connection. A refused client also sees `open` (the
   * close frame follows), so `readyState` right after `open` proves nothing; an admitted
   * connection answers a ping (pong, or an error frame), a refused one only closes.
   */
  async admitted (): Promise<boolean> {
    if (!(await this.opened)) return false
    this.send({ type: 'ping' })
    return this.next(3000).then(() => true, () => false)
  }

  /** Frames received and not yet taken. */
  get pending (): unknown[] {
    return [...this.#frames]
  }

  send (message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  close (): Promise<Closed> {
    this.ws.close()
    return this.closed
  }
}

/** Resolves with `promise`, or rejects once `ms` have passed, so a hang fails the test instead of stalling it. */
export async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** The client's close frame, or a failure after `ms` so a server that never closes fails the test instead of hanging it. */
export function closeOf (c: Client, ms = 5000): Promise<Closed> {
  return within(c.closed, ms, 'the server closing the connection')
}

/** A parsed line of the app's log. */
export interface LogLine {
  level?: number
  msg?: string
  key?: string
  refusal?: string
  userId?: string
  ip?: string
  req?: { url?: string }
  close?: string
  code?: number
  connectionId?: string
}

export const parseLogs = (logs: string[]): LogLine[] => logs.map((line) => JSON.parse(line) as LogLine)

/** The refusal lines, one per refused upgrade. */
export const refusalLines = (logs: string[]): LogLine[] => parseLogs(logs).filter((line) => line.msg === 'websocket connection refused')

/** Opens a client and waits for the outcome of its handshake. */
export async function connect (url: string, options: ConstructorParameters<typeof Client>[1] = {}): Promise<Client> {
  const client = new Client(url, options)
  await client.opened
  return client
}

/** Polls `predicate` every 10 ms for up to `ms`; resolves with its last value. */
export async function eventually<T> (predicate: () => T, ms = 2000): Promise<T> {
  const end = Date.now() + ms
  let value = predicate()
  while (!value && Date.now() < end) {
    await new Promise((resolve) => setTimeout(resolve, 10))
    value = predicate()
  }
  return value
}

/** Sends a WebSocket upgrade request over a raw TCP socket, so a test controls exactly how it behaves after. */
export function rawUpgrade (t: { teardown: (fn: () => unknown) => void }, app: FastifyInstance, path: string, token: string, allowHalfOpen = false): net.Socket {
  const { port } = app.server.address() as { port: number }
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen })
  t.teardown(() => { socket.destroy() })
  socket.on('error', () => {})
  socket.write([
    `GET ${path}?token=${encodeURIComponent(token)} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
    'Sec-WebSocket-Version: 13',
    `Origin: ${ORIGIN}`,
    '', ''
  ].join('\r\n'))
  return socket
}

/** A peer that completed the handshake and then answers nothing: no frame, not even its side of the TCP close. */
export interface SilentPeer {
  /** Resolves once the server has ended its side of the TCP connection. */
  readonly closed: Promise<void>
  /** What the server sent after its 101 response: its frames, unmasked. */
  frames: () => Buffer
  /** Writes raw bytes (client frames must be masked). */
  write: (bytes: Buffer) => void
}

/** Opens a SilentPeer over a raw TCP socket; resolves once the server counts its connection. */
export async function silentPeer (t: { teardown: (fn: () => unknown) => void }, app: FastifyInstance, path: string, token: string): Promise<SilentPeer> {
  const socket = rawUpgrade(t, app, path, token, true)
  let received = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => { received = Buffer.concat([received, chunk]) })
  const closed = new Promise<void>((resolve) => {
    socket.once('end', () => resolve())
    socket.once('close', () => resolve())
  })
  // The server counts the connection as it writes the 101; the client reads it a moment later.
  await eventually(() => received.includes('\r\n\r\n') && app.secureWs.stats().connections > 0)
  if (!/^HTTP\/1\.1 101 /.test(received.toString('latin1'))) throw new Error(`the handshake did not complete: ${JSON.stringify(received.toString('latin1').slice(0, 40))}`)
  return { closed, frames: () => received.subarray(received.indexOf('\r\n\r\n') + 4), write: (bytes) => { socket.write(bytes) } }
}
