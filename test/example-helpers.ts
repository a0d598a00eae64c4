/**
 * Shared pieces of the example's black-box tests (test/example-*.test.ts): tokens, a `ws`
 * client that queues what it receives, raw TCP peers, plain HTTP and the metrics page. They
 * observe the example only from outside, as /work/shared/example-contract.md is worded.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { request as httpRequest, type IncomingMessage } from 'node:http'
import net from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import { within } from './helpers.js'
import type { ExampleProcess } from './example-process.js'

export const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
export const LOGGED_OUT = { code: 4403, reason: 'Logged out' }
export const NO_ANSWER_TO_PING = { code: 4408, reason: 'No answer to ping' }
export const SLOW_CONSUMER = { code: 1013, reason: 'Slow consumer' }
export const SHUTTING_DOWN = { code: 1001, reason: 'Server shutting down' }
export const PONG = { type: 'pong' }

export const nowSeconds = (): number => Math.floor(Date.now() / 1000)

/** Signs HS256 tokens with `secret`. */
export function tokenSigner (secret: string): (claims: Record<string, unknown>) => string {
  const hs256 = createSigner({ key: secret, algorithm: 'HS256' })
  // fast-jwt adds an `iat` to a payload without one, unless told not to (then it drops any).
  const hs256WithoutIat = createSigner({ key: secret, algorithm: 'HS256', noTimestamp: true })
  /** `iat` now and `exp` ten minutes ahead unless `claims` says otherwise; a claim given as `undefined` is left out. */
  return (claims) => {
    const payload: Record<string, unknown> = { iat: nowSeconds(), exp: nowSeconds() + 600, ...claims }
    for (const key of Object.keys(payload)) if (payload[key] === undefined) delete payload[key]
    return payload.iat === undefined ? hs256WithoutIat(payload) : hs256(payload)
  }
}

/** An unsigned token (`alg: none`) with `claims`. */
export function unsignedToken (claims: Record<string, unknown>): string {
  const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`
}

export interface Teardown {
  teardown: (fn: () => unknown) => void
}

export interface Closed {
  code: number
  reason: string
}

export type Received = { kind: 'frame', frame: unknown } | { kind: 'closed', closed: Closed }

export interface ClientOptions {
  /** `Origin` header; the example's own origin unless given, null sends none. */
  origin?: string | null
  token?: string
  /** Source address of the TCP connection (any 127.x.y.z is this machine). */
  localAddress?: string
  /** false: a client that never answers the server's pings. */
  autoPong?: boolean
}

/** A real `ws` client that queues frames and its close, in the order they arrived, and notes when pings came. */
export class ExampleClient {
  readonly ws: WebSocket
  /** True once the upgrade completed; false when it was refused or failed. */
  readonly opened: Promise<boolean>
  readonly closed: Promise<Closed>
  /** HTTP status and headers when the server refused the upgrade. */
  refusal: { status: number, headers: IncomingMessage['headers'] } | undefined
  /** `Date.now()` of every ping the server sent. */
  readonly pings: number[] = []
  readonly #events: Received[] = []
  readonly #waiters: Array<(event: Received) => void> = []

  constructor (example: ExampleProcess, path: string, options: ClientOptions = {}) {
    const url = example.url(path) + (options.token === undefined ? '' : `?token=${encodeURIComponent(options.token)}`)
    const origin = options.origin === undefined ? example.origin : options.origin
    this.ws = new WebSocket(url, {
      ...(origin === null ? {} : { origin }),
      ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
      autoPong: options.autoPong ?? true
    })
    this.ws.on('ping', () => { this.pings.push(Date.now()) })
    this.ws.on('message', (data: Buffer, isBinary: boolean) => {
      this.#push({ kind: 'frame', frame: isBinary ? `<binary ${data.toString('hex')}>` : JSON.parse(data.toString()) })
    })
    this.ws.on('error', () => {})
    this.opened = new Promise((resolve) => {
      this.ws.once('open', () => resolve(true))
      this.ws.once('unexpected-response', (_req, res) => {
        this.refusal = { status: res.statusCode ?? 0, headers: res.headers }
        res.resume()
        this.ws.terminate()
        resolve(false)
      })
      this.ws.once('close', () => resolve(false))
    })
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code: number, reason: Buffer) => {
        const closed = { code, reason: reason.toString() }
        this.#push({ kind: 'closed', closed })
        resolve(closed)
      })
    })
  }

  #push (event: Received): void {
    const waiter = this.#waiters.shift()
    if (waiter === undefined) this.#events.push(event)
    else waiter(event)
  }

  /** The next frame or the close, whichever came first; rejects after `ms`. */
  async nextEvent (ms = 10_000): Promise<Received> {
    const queued = this.#events.shift()
    if (queued !== undefined) return queued
    return await new Promise((resolve, reject) => {
      const waiter = (event: Received): void => {
        clearTimeout(timer)
        resolve(event)
      }
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1)
        reject(new Error(`nothing received within ${ms} ms`))
      }, ms)
      this.#waiters.push(waiter)
    })
  }

  /** The next frame; throws if the connection closed instead. */
  async next (ms = 10_000): Promise<unknown> {
    const event = await this.nextEvent(ms)
    if (event.kind === 'closed') throw new Error(`closed ${event.closed.code} "${event.closed.reason}" instead of sending a frame`)
    return event.frame
  }

  /** The next frame that is not a `price`. */
  async nextExceptPrice (ms = 10_000): Promise<unknown> {
    for (;;) {
      const frame = await this.next(ms)
      if ((frame as { type?: unknown }).type !== 'price') return frame
    }
  }

  /** Frames and the close received and not yet taken. */
  get pending (): Received[] {
    return [...this.#events]
  }

  send (message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  async ask (message: unknown): Promise<unknown> {
    this.send(message)
    return await this.next()
  }

  /** Closes politely, cutting the socket off if the close handshake does not finish. */
  async end (): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return
    this.ws.close()
    try {
      await within(this.closed, 2000, 'client close')
    } catch {
      this.ws.terminate()
    }
  }
}

/** Opens a client and waits for its handshake; it is closed in `t`'s teardown. */
export async function openClient (t: Teardown, example: ExampleProcess, path: string, options: ClientOptions = {}): Promise<ExampleClient> {
  const client = new ExampleClient(example, path, options)
  t.teardown(() => client.end())
  await within(client.opened, 10_000, `handshake with ${path}`)
  return client
}

/** A client the server admitted: its upgrade completed and a ping is answered with a pong. */
export async function admittedClient (t: Teardown, example: ExampleProcess, path: string, options: ClientOptions = {}): Promise<ExampleClient> {
  const client = await openClient(t, example, path, options)
  client.send({ type: 'ping' })
  const event = await client.nextEvent()
  if (event.kind === 'closed') throw new Error(`not admitted: closed ${event.closed.code} "${event.closed.reason}"`)
  if (JSON.stringify(event.frame) !== JSON.stringify(PONG)) throw new Error(`not admitted: ${JSON.stringify(event.frame)}`)
  return client
}

export interface HttpAnswer {
  status: number
  headers: IncomingMessage['headers']
  body: string
}

/** One GET on a connection of its own (no keep-alive left behind). */
export async function httpGet (example: ExampleProcess, path: string): Promise<HttpAnswer> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: example.port, method: 'GET', path, agent: false }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

// ---------------------------------------------------------------------------------------
// Raw TCP peers

/** A TCP connection to the example that records every byte the server sends; destroyed in teardown. */
export class RawPeer {
  readonly socket: net.Socket
  received = Buffer.alloc(0)
  /** Resolves when the server ended its side (or the socket closed). */
  readonly ended: Promise<void>

  constructor (t: Teardown, example: ExampleProcess, options: { localAddress?: string } = {}) {
    this.socket = net.connect({ port: example.port, host: '127.0.0.1', allowHalfOpen: true, ...options })
    t.teardown(() => { this.socket.destroy() })
    this.socket.on('error', () => {})
    this.socket.on('data', (chunk: Buffer) => { this.received = Buffer.concat([this.received, chunk]) })
    this.ended = new Promise((resolve) => {
      this.socket.once('end', () => resolve())
      this.socket.once('close', () => resolve())
    })
  }

  /** Writes the upgrade request for `path` with `token` and `origin`. */
  upgrade (path: string, token: string, origin: string): void {
    this.socket.write(upgradeRequest(path, token, origin))
  }

  /** Resolves with the server's answer head once it is complete. */
  async head (ms = 10_000): Promise<string> {
    for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(10)) {
      const end = this.received.indexOf('\r\n\r\n')
      if (end >= 0) return this.received.subarray(0, end).toString('latin1')
    }
    throw new Error(`no answer head within ${ms} ms: ${JSON.stringify(this.received.toString('latin1').slice(0, 80))}`)
  }

  /** The server's frames after its 101 answer. */
  frames (): Frame[] {
    const end = this.received.indexOf('\r\n\r\n')
    return end < 0 ? [] : parseFrames(this.received.subarray(end + 4))
  }

  /** Sends a masked text frame, as a client must. */
  sendText (text: string): void {
    this.socket.write(clientFrame(0x1, Buffer.from(text)))
  }
}

export function upgradeRequest (path: string, token: string, origin: string): string {
  return [
    `GET ${path}?token=${encodeURIComponent(token)} HTTP/1.1`,
    'Host: 127.0.0.1',
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
    'Sec-WebSocket-Version: 13',
    `Origin: ${origin}`,
    '', ''
  ].join('\r\n')
}

export interface Frame {
  opcode: number
  payload: Buffer
}

/** Server frames (unmasked) in `bytes`; an incomplete last frame is left out. */
export function parseFrames (bytes: Buffer): Frame[] {
  const frames: Frame[] = []
  let at = 0
  while (at + 2 <= bytes.length) {
    const opcode = bytes[at]! & 0x0f
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
    frames.push({ opcode, payload: bytes.subarray(start, start + length) })
    at = start + length
  }
  return frames
}

/** The code and reason of a close frame's payload. */
export function closeOfFrame (frame: Frame): Closed {
  return { code: frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : 1005, reason: frame.payload.subarray(2).toString() }
}

function clientFrame (opcode: number, payload: Buffer): Buffer {
  const mask = randomBytes(4)
  const length = payload.length < 126 ? Buffer.from([0x80 | opcode, 0x80 | payload.length]) : Buffer.from([0x80 | opcode, 0x80 | 126, payload.length >> 8, payload.length & 0xff])
  const masked = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]!))
  return Buffer.concat([length, mask, masked])
}

// ---------------------------------------------------------------------------------------
// Metrics

export interface MetricsPage {
  status: number
  contentType: string
  text: string
  /** `# TYPE` of each metric. */
  types: Map<string, string>
  /** Sample value by `name` or `name{labels}` as written on the page. */
  values: Map<string, number>
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (-?(?:[0-9.]+(?:e[+-]?[0-9]+)?|NaN|\+Inf|-Inf))( -?[0-9]+)?$/

/**
 * GETs /metrics and reads it as the Prometheus text format (version 0.0.4); a line that is
 * neither a comment nor a well-formed sample throws.
 */
export async function scrapeMetrics (example: ExampleProcess): Promise<MetricsPage> {
  const answer = await httpGet(example, '/metrics')
  const types = new Map<string, string>()
  const values = new Map<string, number>()
  for (const line of answer.body.split('\n')) {
    if (line === '') continue
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line)
    if (type !== null) {
      types.set(type[1]!, type[2]!)
      continue
    }
    if (/^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* /.test(line) || (line.startsWith('#') && !/^# (TYPE|HELP)\b/.test(line))) continue
    const sample = SAMPLE.exec(line)
    if (sample === null) throw new Error(`not a Prometheus text format line: ${JSON.stringify(line)}`)
    values.set(sample[1]! + (sample[2] ?? ''), Number(sample[3]))
  }
  return { status: answer.status, contentType: String(answer.headers['content-type']), text: answer.body, types, values }
}

// ---------------------------------------------------------------------------------------
// Processes

/** Resident memory of process `pid`, in bytes (Linux). */
export function rssBytes (pid: number): number {
  const line = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (line === null) throw new Error(`no VmRSS for ${pid}`)
  return Number(line[1]) * 1024
}

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

/** Resolves when the example process has exited. */
export async function exitOf (example: ExampleProcess): Promise<Exit> {
  const { child } = example
  if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, signal: child.signalCode }
  return await new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
}

/**
 * Runs examples/server.ts with `env` until it exits (for settings that must stop start-up),
 * killing it after `ms`. Resolves with its exit and everything it wrote.
 */
export async function runExampleToExit (env: Record<string, string>, ms = 45_000): Promise<Exit & { stdout: string, stderr: string }> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, PORT: '0', HOST: '127.0.0.1', ...env }
  // tap's loaders are not the user's.
  delete childEnv.NODE_OPTIONS
  const root = join(__dirname, '..')
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'examples', 'server.ts')], { cwd: root, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), ms)
  try {
    return await new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })))
  } finally {
    clearTimeout(timer)
  }
}
