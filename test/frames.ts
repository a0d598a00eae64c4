import { randomBytes } from 'node:crypto'
import net from 'node:net'
import type { FastifyInstance } from 'fastify'
import { ORIGIN, eventually, within } from './helpers.js'

/** WebSocket opcodes (RFC 6455 §5.2). */
export const OP = { continuation: 0x0, text: 0x1, binary: 0x2, close: 0x8, ping: 0x9, pong: 0xa } as const

/**
 * One client frame, masked as RFC 6455 requires of clients (a server must close on an
 * unmasked one, so a test that forgot would test that instead).
 */
export function clientFrame (opcode: number, payload: Buffer | string = Buffer.alloc(0), options: { fin?: boolean, rsv1?: boolean } = {}): Buffer {
  const data = typeof payload === 'string' ? Buffer.from(payload) : payload
  const first = ((options.fin ?? true) ? 0x80 : 0) | ((options.rsv1 ?? false) ? 0x40 : 0) | opcode
  let header: Buffer
  if (data.length < 126) {
    header = Buffer.from([first, 0x80 | data.length])
  } else if (data.length < 65536) {
    header = Buffer.alloc(4)
    header[0] = first
    header[1] = 0x80 | 126
    header.writeUInt16BE(data.length, 2)
  } else {
    header = Buffer.alloc(10)
    header[0] = first
    header[1] = 0x80 | 127
    header.writeBigUInt64BE(BigInt(data.length), 2)
  }
  const mask = randomBytes(4)
  const masked = Buffer.allocUnsafe(data.length)
  for (let i = 0; i < data.length; i++) masked[i] = data[i]! ^ mask[i & 3]!
  return Buffer.concat([header, mask, masked])
}

/** A client close frame with `code` and `reason`. */
export function clientClose (code: number, reason = ''): Buffer {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason))
  payload.writeUInt16BE(code)
  payload.write(reason, 2)
  return clientFrame(OP.close, payload)
}

/** A frame the server sent (servers do not mask). */
export interface ServerFrame {
  fin: boolean
  rsv1: boolean
  opcode: number
  payload: Buffer
}

/** Splits what a server sent after its 101 into frames; an incomplete last frame is left out. */
export function parseFrames (bytes: Buffer): ServerFrame[] {
  const frames: ServerFrame[] = []
  let at = 0
  while (at + 2 <= bytes.length) {
    const first = bytes[at]!
    let length = bytes[at + 1]! & 0x7f
    let start = at + 2
    if (length === 126) {
      if (start + 2 > bytes.length) break
      length = bytes.readUInt16BE(start)
      start += 2
    } else if (length === 127) {
      if (start + 8 > bytes.length) break
      length = Number(bytes.readBigUInt64BE(start))
      start += 8
    }
    if (start + length > bytes.length) break
    frames.push({ fin: (first & 0x80) !== 0, rsv1: (first & 0x40) !== 0, opcode: first & 0x0f, payload: bytes.subarray(start, start + length) })
    at = start + length
  }
  return frames
}

/** The code and reason of a close frame. */
export function closeOfFrame (frame: ServerFrame): { code: number, reason: string } {
  return { code: frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : 1005, reason: frame.payload.subarray(2).toString() }
}

export interface HttpHead {
  status: number
  headers: Record<string, string>
}

/**
 * A client over a raw TCP socket, so a test decides every byte it sends and sees every byte
 * the server sends: the HTTP response head, then the server's frames. It never answers
 * anything by itself, and never ends its side unless told to (`allowHalfOpen`), so whatever
 * ends the connection is the server's doing.
 */
export class RawPeer {
  readonly socket: net.Socket
  /** The response head, once it has arrived. */
  readonly head: Promise<HttpHead>
  /** Resolves once the server has ended its side (its FIN), or the socket closed. */
  readonly ended: Promise<void>
  /** Resolves once the socket is closed (reset, or both sides ended). */
  readonly closed: Promise<void>
  /** The socket error, if any (a reset shows here). */
  error: NodeJS.ErrnoException | undefined
  #received = Buffer.alloc(0)
  #headEnd = -1

  constructor (port: number, options: { localAddress?: string } = {}) {
    this.socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true, ...options })
    this.socket.on('error', (err) => { this.error = err })
    this.socket.on('data', (chunk: Buffer) => {
      this.#received = Buffer.concat([this.#received, chunk])
      if (this.#headEnd === -1) this.#headEnd = this.#received.indexOf('\r\n\r\n')
    })
    this.head = new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.#headEnd === -1) return
        this.socket.removeListener('data', check)
        resolve(parseHead(this.#received.subarray(0, this.#headEnd).toString('latin1')))
      }
      this.socket.on('data', check)
      this.socket.once('close', () => reject(new Error(`the connection closed before a response head: ${JSON.stringify(this.#received.toString('latin1').slice(0, 80))}`)))
    })
    this.head.catch(() => {})
    this.ended = new Promise((resolve) => {
      this.socket.once('end', () => resolve())
      this.socket.once('close', () => resolve())
    })
    this.closed = new Promise((resolve) => { this.socket.once('close', () => resolve()) })
  }

  /** Everything after the response head. */
  body (): Buffer {
    return this.#headEnd === -1 ? Buffer.alloc(0) : this.#received.subarray(this.#headEnd + 4)
  }

  /** The frames the server sent after its 101, so far. */
  frames (): ServerFrame[] {
    return parseFrames(this.body())
  }

  /** The server's close frame, once it has arrived; fails after `ms`. */
  async closeFrame (ms = 5000): Promise<{ code: number, reason: string }> {
    const close = await within(eventually(() => this.frames().find((f) => f.opcode === OP.close), ms), ms + 100, 'a close frame')
    if (close === undefined) throw new Error(`no close frame within ${ms} ms; frames: ${JSON.stringify(this.frames().map((f) => f.opcode))}`)
    return closeOfFrame(close)
  }

  /** Writes unless the socket is gone; false once it is. */
  write (bytes: Buffer | string): boolean {
    if (this.socket.destroyed || !this.socket.writable) return false
    this.socket.write(bytes)
    return true
  }

  destroy (): void {
    this.socket.destroy()
  }
}

function parseHead (text: string): HttpHead {
  const [statusLine = '', ...lines] = text.split('\r\n')
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    const name = line.slice(0, colon).trim().toLowerCase()
    const value = line.slice(colon + 1).trim()
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`
  }
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1] ?? 0), headers }
}

export interface UpgradeRequest {
  path: string
  /** Appended as `?token=`, URL-encoded. */
  token?: string
  /** Header lines after the standard upgrade ones; `origin` replaces the default Origin (`null` leaves it out). */
  origin?: string | null
  extraHeaders?: string[]
  localAddress?: string
}

/** Port of a listening Fastify app. */
export function portOf (app: FastifyInstance): number {
  return (app.server.address() as net.AddressInfo).port
}

/** Sends an upgrade request over a RawPeer; destroyed in teardown. */
export function rawUpgradePeer (t: { teardown: (fn: () => unknown) => void }, app: FastifyInstance, request: UpgradeRequest): RawPeer {
  const port = portOf(app)
  const peer = new RawPeer(port, request.localAddress === undefined ? {} : { localAddress: request.localAddress })
  t.teardown(() => { peer.destroy() })
  const origin = request.origin === undefined ? ORIGIN : request.origin
  const query = request.token === undefined ? '' : `?token=${encodeURIComponent(request.token)}`
  peer.write([
    `GET ${request.path}${query} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
    'Sec-WebSocket-Version: 13',
    ...(origin === null ? [] : [`Origin: ${origin}`]),
    ...(request.extraHeaders ?? []),
    '', ''
  ].join('\r\n'))
  return peer
}

/** TCP connections the HTTP server holds open, upgraded ones included: what a descriptor count sees. */
export function serverConnections (app: FastifyInstance): Promise<number> {
  return new Promise((resolve, reject) => {
    app.server.getConnections((err, count) => { if (err) reject(err); else resolve(count) })
  })
}

/** The JSON text frames the server sent, parsed, in order. */
export function textMessages (peer: RawPeer): unknown[] {
  return peer.frames().filter((f) => f.opcode === OP.text).map((f) => JSON.parse(f.payload.toString()))
}

/**
 * Sends `{"type":"ping"}` and waits for the `pong`: proof the server admitted this peer and
 * serves it. False if the connection closes or nothing answers within `ms`.
 */
export async function peerAnswersPing (peer: RawPeer, ms = 3000): Promise<boolean> {
  const before = textMessages(peer).length
  peer.write(clientFrame(OP.text, '{"type":"ping"}'))
  const end = Date.now() + ms
  while (Date.now() < end) {
    const pongs = textMessages(peer).slice(before)
    if (pongs.some((m) => (m as { type?: string }).type === 'pong')) return true
    if (peer.frames().some((f) => f.opcode === OP.close)) return false
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return false
}

/** Polls an async `predicate` every 10 ms for up to `ms`; resolves with its last value. */
export async function eventuallyAsync<T> (predicate: () => Promise<T>, ms = 2000): Promise<T> {
  const end = Date.now() + ms
  let value = await predicate()
  while (!value && Date.now() < end) {
    await new Promise((resolve) => setTimeout(resolve, 10))
    value = await predicate()
  }
  return value
}

/**
 * Counts the frames ws parses on the server's sockets from now on (data messages, pings,
 * pongs): a socket the server has hung up on must add nothing, whatever its peer sends.
 */
export function parsedFrames (app: FastifyInstance): { count: number } {
  const counter = { count: 0 }
  const count = (): void => { counter.count++ }
  app.websocketServer.on('connection', (socket: import('ws').WebSocket) => {
    socket.on('message', count)
    socket.on('ping', count)
    socket.on('pong', count)
  })
  return counter
}
