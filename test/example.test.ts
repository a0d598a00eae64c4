/**
 * Black-box test of the example server (examples/server.ts) against
 * /work/shared/example-contract.md, every line except the WS_REDIS_URL ones.
 *
 * The example runs as a child process, started the way a user would (`node --import tsx
 * examples/server.ts`), and is observed only through HTTP, real `ws` clients, signals,
 * stdout, stderr and its exit code. Most checks share one process; a process of its own is
 * started only where the environment or a signal demands it. The processes start early, in
 * waves, so that their start-up overlaps the tests of the ones already listening.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { createServer, type AddressInfo } from 'node:net'
import { resolve } from 'node:path'
import type { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import { within } from './helpers.js'

const ROOT = resolve(__dirname, '..')
const SECRET = 'example-black-box-secret-0123456789abcdef'
const API_KEYS = ['ak_live_alice_9f8e7d6c5b4a', 'ak_live_bob_1a2b3c4d5e6f']
const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
const ORIGIN_NOT_ALLOWED = { code: 1008, reason: 'Origin not allowed' }
const ACCESS_DENIED = { code: 1008, reason: 'Access denied' }
const TOO_MANY = { code: 1008, reason: 'Too many connections' }
const RATE_LIMITED = { code: 1008, reason: 'Rate limit exceeded' }
const RATE_LIMIT_ERROR = { type: 'error', message: 'Rate limit exceeded. Connection closed.' }
const SHUTTING_DOWN = { code: 1001, reason: 'Server shutting down' }
// ws closes with 1009 and no reason when a frame exceeds its maxPayload.
const MESSAGE_TOO_BIG = { code: 1009, reason: '' }
const PONG = { type: 'pong' }
const STARTUP_TIMEOUT_MS = 45_000

// ---------------------------------------------------------------------------------------
// Everything any example process said or sent, checked for leaks at the end.

/** Every token this file handed to a server, so no output line may contain one. */
const usedTokens = new Set<string>()
/** Every frame any client received, raw. */
const receivedFrames: string[] = []

// ---------------------------------------------------------------------------------------
// Tokens

const nowSeconds = (): number => Math.floor(Date.now() / 1000)
const hs256 = createSigner({ key: SECRET, algorithm: 'HS256' })

/**
 * An HS256 token signed with SECRET: `iat` now and `exp` ten minutes ahead unless `claims`
 * says otherwise; a claim given as `undefined` is left out.
 */
function sign (claims: Record<string, unknown>, signer: (payload: Record<string, unknown>) => string = hs256): string {
  const payload: Record<string, unknown> = { iat: nowSeconds(), exp: nowSeconds() + 600, ...claims }
  for (const key of Object.keys(payload)) if (payload[key] === undefined) delete payload[key]
  const token = signer(payload)
  usedTokens.add(token)
  return token
}

const base64url = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

/** An unsigned token (`alg: none`), otherwise valid. */
function unsigned (claims: Record<string, unknown>): string {
  const token = `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url({ iat: nowSeconds(), exp: nowSeconds() + 600, ...claims })}.`
  usedTokens.add(token)
  return token
}

const pem = (key: { export: (options: { type: 'pkcs8', format: 'pem' }) => string | Buffer }): string => key.export({ type: 'pkcs8', format: 'pem' }).toString()

// ---------------------------------------------------------------------------------------
// Example processes

interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

const usedPorts = new Set<number>()

/** A port nothing listens on: listen on port 0, note the port, close. */
async function freePort (): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const server = createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const { port } = server.address() as AddressInfo
    await new Promise<void>((resolve) => server.close(() => resolve()))
    if (!usedPorts.has(port)) {
      usedPorts.add(port)
      return port
    }
  }
  throw new Error('no free port after 20 attempts')
}

/**
 * The parent's environment, plus `extra`, without anything the example reads and without
 * tap's own variables: its NODE_OPTIONS loader would instrument the example, which a user's
 * process never is.
 */
function childEnv (extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (!/^(WS_|PORT$|HOST$|NODE_ENV$|LOG_LEVEL$|NODE_OPTIONS$|TAP|_TAPJS_)/.test(name)) env[name] = value
  }
  return { ...env, ...extra }
}

function collectLines (stream: Readable, lines: string[], onLine: (line: string) => void = () => {}): void {
  let rest = ''
  stream.setEncoding('utf8')
  stream.on('data', (chunk: string) => {
    const parts = (rest + chunk).split('\n')
    rest = parts.pop()!
    for (const line of parts) {
      lines.push(line)
      onLine(line)
    }
  })
  stream.on('end', () => {
    if (rest !== '') {
      lines.push(rest)
      onLine(rest)
    }
  })
}

const servers: ExampleServer[] = []

/** One example process on 127.0.0.1 and a port of its own, with every line it writes. */
class ExampleServer {
  readonly stdout: string[] = []
  readonly stderr: string[] = []
  readonly child: ChildProcess
  /** Resolves true on the stdout line naming the listening URL, false if the process ends first. */
  readonly ready: Promise<boolean>
  /** Resolves when the process exits. */
  readonly exited: Promise<Exit>
  /** Resolves once the process has ended and its output is read in full. */
  readonly finished: Promise<Exit>
  readonly url: string

  constructor (readonly name: string, readonly port: number, env: Record<string, string>) {
    this.url = `http://127.0.0.1:${port}`
    this.child = spawn(process.execPath, ['--import', 'tsx', 'examples/server.ts'], {
      cwd: ROOT,
      env: childEnv({ PORT: String(port), ...env }),
      stdio: ['ignore', 'pipe', 'pipe']
    })
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => resolve({ code, signal }))
    })
    this.finished = new Promise((resolve) => {
      this.child.once('close', (code, signal) => resolve({ code, signal }))
    })
    this.ready = new Promise((resolve) => {
      collectLines(this.child.stdout!, this.stdout, (line) => { if (line.includes(this.url)) resolve(true) })
      collectLines(this.child.stderr!, this.stderr)
      void this.finished.then(() => resolve(false))
    })
    servers.push(this)
  }

  static async start (name: string, env: Record<string, string>): Promise<ExampleServer> {
    return new ExampleServer(name, await freePort(), env)
  }

  get running (): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  ws (path: string): string {
    return `ws://127.0.0.1:${this.port}${path}`
  }

  /** Waits for the listening line; throws with the process's stderr if it never comes. */
  async started (): Promise<this> {
    const ok = await within(this.ready, STARTUP_TIMEOUT_MS, `${this.name}: listening line`)
    if (!ok) throw new Error(`${this.name} ended before listening: ${this.stderr.join('\n')}`)
    return this
  }
}

/** Resolves once every line the process wrote before this call has been read. */
async function logFlushed (server: ExampleServer): Promise<void> {
  // Its output is ordered: once the log line of this request is in, every earlier one is.
  const marker = `/health?flushed=${Math.random().toString(36).slice(2)}`
  await http(server, 'GET', marker)
  for (let i = 0; i < 200 && !server.stdout.some((line) => line.includes(marker)); i++) await sleep(10)
}

interface HttpAnswer {
  status: number
  headers: IncomingMessage['headers']
  body: string
}

/** One HTTP request to the server, on a connection of its own (no keep-alive left behind). */
async function http (server: ExampleServer, method: string, path: string, json?: unknown): Promise<HttpAnswer> {
  const body = json === undefined ? undefined : JSON.stringify(json)
  return await new Promise((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port: server.port,
      method,
      path,
      agent: false,
      headers: body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }
    }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

// ---------------------------------------------------------------------------------------
// WebSocket clients

interface Closed {
  code: number
  reason: string
}

type Received = { kind: 'frame', frame: unknown } | { kind: 'closed', closed: Closed }

interface ClientOptions {
  /** `Origin` header; null sends none. */
  origin: string | null
  token?: string
  /** Where the token goes: `?token=` or `Sec-WebSocket-Protocol: bearer, <token>`. */
  via?: 'query' | 'protocol'
  /** A frame sent synchronously in the `open` listener. */
  sendOnOpen?: string
}

/** A real `ws` client that queues frames and its close, in the order they arrived. */
class Client {
  readonly ws: WebSocket
  /** True once the upgrade completed; false when it was refused or failed. */
  readonly opened: Promise<boolean>
  readonly closed: Promise<Closed>
  /** The `Sec-WebSocket-Protocol` header of the server's 101 answer. */
  protocolHeader: string | undefined
  readonly #events: Received[] = []
  readonly #waiters: Array<(event: Received) => void> = []

  constructor (url: string, options: ClientOptions) {
    let target = url
    let protocols: string[] | undefined
    if (options.token !== undefined) {
      if ((options.via ?? 'query') === 'query') target += `?token=${encodeURIComponent(options.token)}`
      else protocols = ['bearer', options.token]
    }
    this.ws = new WebSocket(target, protocols, options.origin === null ? {} : { origin: options.origin })
    this.ws.on('upgrade', (res: IncomingMessage) => {
      const header = res.headers['sec-websocket-protocol']
      this.protocolHeader = Array.isArray(header) ? header.join(', ') : header
    })
    this.ws.on('message', (data: Buffer, isBinary: boolean) => {
      const raw = isBinary ? `<binary ${data.toString('hex')}>` : data.toString()
      receivedFrames.push(raw)
      this.#push({ kind: 'frame', frame: isBinary ? raw : JSON.parse(raw) })
    })
    this.ws.on('error', () => {})
    this.opened = new Promise((resolve) => {
      this.ws.once('open', () => {
        if (options.sendOnOpen !== undefined) this.ws.send(options.sendOnOpen)
        resolve(true)
      })
      this.ws.once('unexpected-response', (_req, res) => {
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

  /** The next frame, parsed; throws if the connection closed instead. */
  async next (ms = 10_000): Promise<unknown> {
    const event = await this.nextEvent(ms)
    if (event.kind === 'closed') throw new Error(`closed ${event.closed.code} "${event.closed.reason}" instead of sending a frame`)
    return event.frame
  }

  send (message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  /** Sends `message` and returns the next frame or the close. */
  async nextEventAfter (message: unknown): Promise<Received> {
    this.send(message)
    return await this.nextEvent()
  }

  /** Sends `message` and returns the answer. */
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

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/** Opens a client and waits for its handshake; it is closed in `t`'s teardown. */
async function connect (t: Teardown, url: string, options: ClientOptions): Promise<Client> {
  const client = new Client(url, options)
  t.teardown(() => client.end())
  await within(client.opened, 10_000, `handshake with ${url.replace(/\?.*/, '')}`)
  return client
}

/** A client that was admitted: its upgrade completed and a ping is answered. */
async function admitted (t: Teardown, url: string, options: ClientOptions): Promise<Client> {
  const client = await connect(t, url, options)
  const event = await client.nextEventAfter({ type: 'ping' })
  if (event.kind !== 'frame') throw new Error(`not admitted: closed ${event.closed.code} "${event.closed.reason}"`)
  return client
}

/**
 * Asserts a refusal as the contract describes it: the upgrade completes, then the very next
 * thing the client sees is the close frame with `expected`, no message before it.
 */
async function assertRefused (t: Test, url: string, options: ClientOptions, expected: Closed, what: string): Promise<Client> {
  const client = await connect(t, url, options)
  t.equal(await client.opened, true, `${what}: the upgrade completes`)
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: expected }, `${what}: closed ${expected.code} "${expected.reason}"`)
  return client
}

/** A JSON text frame of exactly `bytes` bytes that asks for a pong. */
function pingOfSize (bytes: number): string {
  const base = JSON.stringify({ type: 'ping', pad: '' })
  return JSON.stringify({ type: 'ping', pad: 'x'.repeat(bytes - Buffer.byteLength(base)) })
}

// ---------------------------------------------------------------------------------------
// The processes

const defaultOrigins = (server: ExampleServer): string[] => [`http://localhost:${server.port}`, `http://127.0.0.1:${server.port}`]

// On two cores many processes starting at once starve each other, so they start in waves:
// the second once the first listens (or has given up), the malformed ones after that.
const listening = async (servers: Array<Promise<ExampleServer>>): Promise<void> => {
  await Promise.all(servers.map(async (server) => await within((await server).ready, STARTUP_TIMEOUT_MS, 'start').catch(() => false)))
}

// Most checks: default connection, payload and origin settings; message rates raised so
// that the many messages of the message tests never meet the rate limit.
const mainServer = ExampleServer.start('main', { HOST: '127.0.0.1', WS_JWT_SECRET: SECRET, WS_MAX_MESSAGES_PER_SECOND: '1000', WS_MAX_MESSAGES_PER_MINUTE: '100000' })
// Per-minute limit alone (the per-second one is out of reach).
const minuteServer = ExampleServer.start('per-minute', { HOST: '127.0.0.1', WS_JWT_SECRET: SECRET, WS_MAX_MESSAGES_PER_SECOND: '1000', WS_MAX_MESSAGES_PER_MINUTE: '5' })
const firstWave = listening([mainServer, minuteServer])

// Every limit and the origin list set through the environment.
const LIMITS_ORIGINS = ['https://app.example.com', 'http://other.test:8080']
const limitsServer = firstWave.then(async () => await ExampleServer.start('limits', {
  HOST: '127.0.0.1',
  WS_JWT_SECRET: SECRET,
  WS_ALLOWED_ORIGINS: LIMITS_ORIGINS.join(','),
  WS_MAX_CONNECTIONS_PER_USER: '2',
  WS_MAX_MESSAGES_PER_SECOND: '5',
  WS_MAX_MESSAGES_PER_MINUTE: '1000',
  WS_MAX_PAYLOAD_BYTES: '100'
}))
// No WS_JWT_SECRET, nothing else either: the development defaults.
const devServer = firstWave.then(async () => await ExampleServer.start('development', { HOST: '127.0.0.1' }))
// NODE_ENV=production, and HOST left to its default.
const productionServer = firstWave.then(async () => await ExampleServer.start('production', { NODE_ENV: 'production', WS_JWT_SECRET: SECRET }))

const MALFORMED_ENV: Array<[string, string]> = [
  ['WS_MAX_CONNECTIONS_PER_USER', 'abc'],
  ['WS_MAX_CONNECTIONS_PER_USER', '0'],
  ['WS_ALLOWED_ORIGINS', 'notanorigin'],
  ['WS_MAX_PAYLOAD_BYTES', '-5']
]
// Each loads the whole app before it fails, so they start with the second wave's tests,
// which mostly wait, and are done before the shutdown tests.
const malformedServers = MALFORMED_ENV.map(async ([name, value]) => {
  await listening([limitsServer, devServer, productionServer])
  return await ExampleServer.start(`${name}=${value}`, { HOST: '127.0.0.1', WS_JWT_SECRET: SECRET, [name]: value })
})

// Whatever happens to the tests, no example process outlives this file.
t.teardown(async () => {
  for (const server of servers) if (server.running) server.child.kill('SIGKILL')
  await Promise.all(servers.map(async (server) => await server.finished))
})

/**
 * The per-minute window must slide: messages on both sides of a wall-clock minute boundary,
 * less than sixty seconds apart, count together. That needs the clock to reach the next
 * minute, so this runs from the start, beside the other tests, and is awaited near the end.
 */
async function minuteBoundaryScenario (): Promise<{ first: unknown[], after: Received[], spanMs: number }> {
  const server = await (await minuteServer).started()
  const client = new Client(server.ws('/ws/sessions/alice-1'), { origin: server.url, token: sign({ sub: 'alice' }) })
  try {
    if (!await within(client.opened, 5000, 'minute scenario handshake')) throw new Error('minute scenario: handshake refused')
    const untilBoundary = (): number => 60_000 - (Date.now() % 60_000)
    // The five must land before the boundary and the sixth, 300 ms after it, less than 60 s after them.
    for (let i = 0; i < 20 && !(untilBoundary() >= 800 && untilBoundary() <= 59_000); i++) await sleep(200)
    const boundary = Date.now() + untilBoundary()
    const start = Date.now()
    for (let i = 0; i < 5; i++) client.send({ type: 'ping' })
    const first: unknown[] = []
    for (let i = 0; i < 5; i++) first.push(await client.next())
    await sleep(boundary + 300 - Date.now())
    const spanMs = Date.now() - start
    client.send({ type: 'ping' })
    const after = [await client.nextEvent(), await client.nextEvent()]
    return { first, after, spanMs }
  } finally {
    client.ws.terminate()
  }
}

/**
 * The default per-minute limit, 100: ten rounds of ten messages, each round after the last
 * one has left the one-second window (whose default is 10), then one more. Takes a dozen
 * seconds, so it too runs beside the other tests.
 */
async function defaultMinuteScenario (): Promise<{ answers: unknown[], after: Received[] }> {
  const server = await (await devServer).started()
  const { token } = JSON.parse((await http(server, 'POST', '/demo/token', { user: 'bob' })).body) as { token: string }
  usedTokens.add(token)
  const client = new Client(server.ws('/ws/sessions/bob-1'), { origin: server.url, token })
  try {
    if (!await within(client.opened, 5000, 'default per-minute handshake')) throw new Error('default per-minute: handshake refused')
    const answers: unknown[] = []
    for (let round = 0; round < 10; round++) {
      for (let i = 0; i < 10; i++) client.send({ type: 'ping' })
      for (let i = 0; i < 10; i++) answers.push(await client.next())
      await sleep(QUIET_MS)
    }
    client.send({ type: 'ping' })
    return { answers, after: [await client.nextEvent(), await client.nextEvent()] }
  } finally {
    client.ws.terminate()
  }
}

interface Outcome<T> {
  result?: T
  error?: unknown
}

/** Starts `scenario` now and keeps its outcome for a test to await later. */
function inBackground<T> (scenario: () => Promise<T>): Promise<Outcome<T>> {
  return scenario().then((result) => ({ result }), (error: unknown) => ({ error }))
}

async function outcomeOf<T> (background: Promise<Outcome<T>>, ms: number, what: string): Promise<T> {
  const outcome = await within(background, ms, what)
  if ('error' in outcome) throw outcome.error
  return outcome.result!
}

// Users' earlier messages have left every one-second window after this long (the window
// may count up to one 50 ms bucket more than a second).
const QUIET_MS = 1200

const minuteBoundary = inBackground(minuteBoundaryScenario)
const defaultMinute = inBackground(defaultMinuteScenario)

// ---------------------------------------------------------------------------------------
// Start

t.test('start: one stdout line with the listening URL, then GET /health answers {"status":"ok"}', async (t) => {
  const server = await (await mainServer).started()
  const health = await http(server, 'GET', '/health')
  t.equal(health.status, 200)
  t.strictSame(JSON.parse(health.body), { status: 'ok' })
  t.equal(server.stdout.filter((line) => line.includes(server.url)).length, 1, 'exactly one stdout line names the URL')
  t.equal(server.stderr.some((line) => line.includes('WS_JWT_SECRET')), false, 'no secret warning when WS_JWT_SECRET is set')
  // Healthy means WebSocket connections are accepted.
  const client = await admitted(t, server.ws('/ws/sessions/alice-1'), { origin: server.url, token: sign({ sub: 'alice' }) })
  await client.end()
})

// ---------------------------------------------------------------------------------------
// Origins, tokens, admission (main process)

t.test('origins: the default allowlist is http://localhost:$PORT and http://127.0.0.1:$PORT', async (t) => {
  const server = await (await mainServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  for (const origin of defaultOrigins(server)) {
    const client = await admitted(t, url, { origin, token: sign({ sub: 'alice' }) })
    t.pass(`${origin} is admitted`)
    await client.end()
  }
  const refused: Array<[string | null, string]> = [
    [null, 'no Origin'],
    ['http://evil.test', 'another host'],
    [`https://127.0.0.1:${server.port}`, 'another scheme'],
    [`http://127.0.0.1:${server.port + 1}`, 'another port'],
    ['http://localhost', 'no port'],
    [`http://127.0.0.1:${server.port}.evil.test`, 'a look-alike host'],
    ['null', 'an opaque origin']
  ]
  for (const [origin, what] of refused) {
    await assertRefused(t, url, { origin, token: sign({ sub: 'alice' }) }, ORIGIN_NOT_ALLOWED, what)
  }
})

t.test('tokens: only valid HS256 tokens with sub and exp are accepted, everything else closes 4401', async (t) => {
  const server = await (await mainServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  const origin = server.url
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const now = nowSeconds()

  const valid = await admitted(t, url, { origin, token: sign({ sub: 'alice' }) })
  t.pass('a valid HS256 token is admitted')
  await valid.end()

  const refused: Array<[string | undefined, string]> = [
    [undefined, 'no token'],
    ['', 'an empty token'],
    ['garbage', 'a malformed token'],
    ['a.b.c', 'a token of three junk parts'],
    [sign({ sub: 'alice' }, createSigner({ key: 'some-other-secret-0123456789abcdef', algorithm: 'HS256' })), 'a token signed with another key'],
    [unsigned({ sub: 'alice' }), 'alg none'],
    [sign({ sub: 'alice' }, createSigner({ key: SECRET, algorithm: 'HS384' })), 'HS384'],
    [sign({ sub: 'alice' }, createSigner({ key: SECRET, algorithm: 'HS512' })), 'HS512'],
    [sign({ sub: 'alice' }, createSigner({ key: pem(rsa.privateKey), algorithm: 'RS256' })), 'RS256'],
    [sign({ sub: 'alice' }, createSigner({ key: pem(ec.privateKey), algorithm: 'ES256' })), 'ES256'],
    [sign({}), 'no sub'],
    [sign({ sub: '' }), 'an empty sub'],
    [sign({ sub: 'alice', exp: undefined }), 'no exp'],
    [sign({ sub: 'alice', iat: now - 120, exp: now - 10 }), 'expired'],
    // Twice the 5 s tolerance the contract allows at most, leaving room for a slow machine.
    [sign({ sub: 'alice', nbf: now + 10 }), 'nbf in the future'],
    [sign({ sub: 'alice', iat: now + 10, exp: now + 600 }), 'iat in the future']
  ]
  for (const [token, what] of refused) {
    await assertRefused(t, url, { origin, token }, INVALID_TOKEN, what)
  }
})

t.test('tokens: "bearer, <token>" subprotocol; "bearer" is selected, even for an invalid token, and the token is never echoed', async (t) => {
  const server = await (await mainServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  const origin = server.url

  const good = await admitted(t, url, { origin, token: sign({ sub: 'alice' }), via: 'protocol' })
  t.equal(good.protocolHeader, 'bearer', 'the 101 answer selects exactly "bearer"')
  t.equal(good.ws.protocol, 'bearer')
  await good.end()

  for (const [token, what] of [['garbage', 'a malformed token'], [sign({ sub: 'alice', iat: nowSeconds() - 120, exp: nowSeconds() - 10 }), 'an expired token']] as const) {
    const bad = await assertRefused(t, url, { origin, token, via: 'protocol' }, INVALID_TOKEN, what)
    t.equal(bad.protocolHeader, 'bearer', `${what}: the 101 answer selects exactly "bearer"`)
  }
})

t.test('route checks: a missing session or one owned by another user closes 1008 "Access denied"', async (t) => {
  const server = await (await mainServer).started()
  const origin = server.url
  await assertRefused(t, server.ws('/ws/sessions/bob-1'), { origin, token: sign({ sub: 'alice' }) }, ACCESS_DENIED, 'alice on bob-1')
  await assertRefused(t, server.ws('/ws/sessions/alice-1'), { origin, token: sign({ sub: 'bob' }) }, ACCESS_DENIED, 'bob on alice-1')
  await assertRefused(t, server.ws('/ws/sessions/alice-2'), { origin, token: sign({ sub: 'alice' }) }, ACCESS_DENIED, 'a missing session')
})

t.test('route checks: a message sent before acceptance is never processed; one sent right after open is', async (t) => {
  const server = await (await mainServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  const stop = JSON.stringify({ type: 'stop' })
  // Both would stop alice-1 if their `stop` were processed.
  await assertRefused(t, url, { origin: server.url, token: sign({ sub: 'bob', scope: 'trade' }), sendOnOpen: stop }, ACCESS_DENIED, 'bob, scope trade, on alice-1')
  await assertRefused(t, url, { origin: 'http://evil.test', token: sign({ sub: 'alice', scope: 'trade' }), sendOnOpen: stop }, ORIGIN_NOT_ALLOWED, 'alice, scope trade, from another origin')

  const client = await connect(t, url, { origin: server.url, token: sign({ sub: 'alice' }), sendOnOpen: JSON.stringify({ type: 'get_status' }) })
  t.strictSame(await client.next(), { type: 'status', data: { id: 'alice-1', owner: 'alice', state: 'running' } }, 'answered, and the session still runs')
})

t.test('limits: 20 simultaneous attempts by one user with the default limit of 5 leave exactly 5 open', async (t) => {
  const server = await (await mainServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  const clients = Array.from({ length: 20 }, () => new Client(url, { origin: server.url, token: sign({ sub: 'alice' }) }))
  for (const client of clients) t.teardown(() => client.end())
  const opened = await within(Promise.all(clients.map(async (client) => await client.opened)), 10_000, '20 handshakes')
  t.strictSame(opened, Array(20).fill(true), 'every upgrade completes')
  // An admitted client answers the ping; a refused one gets the close frame first.
  const outcomes = await Promise.all(clients.map(async (client) => await client.nextEventAfter({ type: 'ping' })))
  const open = clients.filter((_client, i) => outcomes[i]!.kind === 'frame')
  t.equal(open.length, 5, 'five are admitted')
  t.strictSame(outcomes.filter((event) => event.kind === 'frame'), Array(5).fill({ kind: 'frame', frame: PONG }))
  t.strictSame(outcomes.filter((event) => event.kind === 'closed'), Array(15).fill({ kind: 'closed', closed: TOO_MANY }), 'the other 15 close 1008 "Too many connections"')

  await assertRefused(t, url, { origin: server.url, token: sign({ sub: 'alice' }) }, TOO_MANY, 'a sixth connection')
  const bob = await admitted(t, server.ws('/ws/sessions/bob-1'), { origin: server.url, token: sign({ sub: 'bob' }) })
  t.pass('another user is not affected')
  await bob.end()

  // A closed connection frees its slot at once.
  await open[0]!.end()
  const again = await admitted(t, url, { origin: server.url, token: sign({ sub: 'alice' }) })
  t.pass('the user connects again right after closing one')
  await assertRefused(t, url, { origin: server.url, token: sign({ sub: 'alice' }) }, TOO_MANY, 'a sixth connection again')
  await Promise.all([again, ...open].map(async (client) => await client.end()))
})

t.test('limits: a frame larger than the default WS_MAX_PAYLOAD_BYTES (65536) closes 1009', async (t) => {
  const server = await (await mainServer).started()
  const client = await connect(t, server.ws('/ws/sessions/alice-1'), { origin: server.url, token: sign({ sub: 'alice' }) })
  t.strictSame(await client.ask(pingOfSize(65536)), PONG, 'a frame of exactly 65536 bytes is processed')
  client.send(pingOfSize(65537))
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: MESSAGE_TOO_BIG })
})

// ---------------------------------------------------------------------------------------
// Messages (main process; `stop` changes alice-1 for good, so order matters here)

t.test('messages: ping, get_status, and error frames that leave the connection open', async (t) => {
  const server = await (await mainServer).started()
  const client = await connect(t, server.ws('/ws/sessions/alice-1'), { origin: server.url, token: sign({ sub: 'alice' }) })
  t.strictSame(await client.ask({ type: 'ping' }), PONG)
  t.strictSame(await client.ask({ type: 'get_status' }), { type: 'status', data: { id: 'alice-1', owner: 'alice', state: 'running' } })

  const errors: Array<[string | Buffer, string, string]> = [
    ['{"type":', 'Invalid JSON', 'invalid JSON'],
    ['not json at all', 'Invalid JSON', 'not JSON'],
    ['[1,2]', 'A message must be a JSON object with a string "type"', 'a JSON array'],
    ['{"payload":{}}', 'A message must be a JSON object with a string "type"', 'no type'],
    [JSON.stringify({ type: 'sell_everything' }), 'Unknown message type', 'an unknown type'],
    [JSON.stringify({ type: 'subscribe' }), 'Invalid payload: / Expected object', 'subscribe without payload'],
    [JSON.stringify({ type: 'subscribe', payload: { channel: 5 } }), 'Invalid payload: /channel Expected union value', 'a channel that is not a string'],
    [JSON.stringify({ type: 'subscribe', payload: {} }), 'Invalid payload: /channel Expected required property', 'no channel'],
    [JSON.stringify({ type: 'subscribe', payload: { channel: 'orders' } }), 'Invalid payload: /channel Expected union value', 'subscribe to another channel'],
    [JSON.stringify({ type: 'unsubscribe', payload: { channel: 'orders' } }), 'Invalid payload: /channel Expected union value', 'unsubscribe from another channel'],
    ['{"type":"ping","__proto__":{"x":1}}', 'Invalid message: forbidden property name', 'a __proto__ key']
  ]
  for (const [frame, message, what] of errors) {
    t.strictSame(await client.ask(frame), { type: 'error', message }, what)
    t.strictSame(await client.ask({ type: 'ping' }), PONG, `${what}: the connection stays open`)
  }
  client.ws.send(Buffer.from([0x7b, 0x7d]), { binary: true })
  t.strictSame(await client.next(), { type: 'error', message: 'Binary frames are not supported' }, 'a binary frame')
  t.strictSame(await client.ask({ type: 'ping' }), PONG, 'a binary frame: the connection stays open')

  const bob = await connect(t, server.ws('/ws/sessions/bob-1'), { origin: server.url, token: sign({ sub: 'bob' }) })
  t.strictSame(await bob.ask({ type: 'get_status' }), { type: 'status', data: { id: 'bob-1', owner: 'bob', state: 'running' } })
})

t.test('messages: stop without scope trade answers Forbidden, the connection stays open and the session runs', async (t) => {
  const server = await (await mainServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  for (const scope of [undefined, 'read', 'trader', 'read write', 'TRADE']) {
    const client = await connect(t, url, { origin: server.url, token: sign({ sub: 'alice', scope }) })
    t.strictSame(await client.ask({ type: 'stop' }), { type: 'error', message: 'Forbidden' }, `scope ${String(scope)}`)
    t.strictSame(await client.ask({ type: 'get_status' }), { type: 'status', data: { id: 'alice-1', owner: 'alice', state: 'running' } }, `scope ${String(scope)}: still open, still running`)
    await client.end()
  }
})

t.test('messages: subscribe, a status push when another connection stops the session, unsubscribe', async (t) => {
  const server = await (await mainServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  const stopped = { type: 'status', data: { id: 'alice-1', owner: 'alice', state: 'stopped' } }
  const watcher = await connect(t, url, { origin: server.url, token: sign({ sub: 'alice' }) })
  t.strictSame(await watcher.ask({ type: 'subscribe', payload: { channel: 'status' } }), { type: 'subscribed', channel: 'status' })

  const trader = await connect(t, url, { origin: server.url, token: sign({ sub: 'alice', scope: 'read trade' }), via: 'protocol' })
  t.strictSame(await trader.ask({ type: 'stop' }), stopped, 'stop with scope trade answers the stopped status')
  t.strictSame(await watcher.next(), stopped, 'the subscriber gets the change')

  t.strictSame(await watcher.ask({ type: 'unsubscribe', payload: { channel: 'status' } }), { type: 'unsubscribed', channel: 'status' })
  t.strictSame(await trader.ask({ type: 'stop' }), stopped)
  // Had the push still reached the watcher, it would arrive before this pong.
  t.strictSame(await watcher.ask({ type: 'ping' }), PONG, 'no push after unsubscribe')

  const later = await connect(t, url, { origin: server.url, token: sign({ sub: 'alice' }) })
  t.strictSame(await later.ask({ type: 'get_status' }), stopped, 'the change persists')
  const bob = await connect(t, server.ws('/ws/sessions/bob-1'), { origin: server.url, token: sign({ sub: 'bob' }) })
  t.strictSame(await bob.ask({ type: 'get_status' }), { type: 'status', data: { id: 'bob-1', owner: 'bob', state: 'running' } }, "bob's session is untouched")
})

t.test('tokens: when exp passes while connected, the server closes 4401', async (t) => {
  const server = await (await mainServer).started()
  const client = await admitted(t, server.ws('/ws/sessions/alice-1'), { origin: server.url, token: sign({ sub: 'alice', exp: nowSeconds() + 4 }) })
  t.strictSame(await client.nextEvent(15_000), { kind: 'closed', closed: INVALID_TOKEN })
})

const linesWith = (server: ExampleServer, needle: string): string[] => [...server.stdout, ...server.stderr].filter((line) => line.includes(needle))

t.test('route checks: an empty session id is a missing session, 1008 "Access denied", and its token stays out of the log', async (t) => {
  const server = await (await mainServer).started()
  const token = sign({ sub: 'alice' })
  const client = await connect(t, server.ws('/ws/sessions/'), { origin: server.url, token })
  t.equal(await client.opened, true, 'the upgrade completes')
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: ACCESS_DENIED }, 'closed 1008 "Access denied"')
  await logFlushed(server)
  t.strictSame(linesWith(server, token), [], 'no log line holds the token')
})

t.test('logs: a ?token= sent to a URL that is no WebSocket route stays out of the log', async (t) => {
  const server = await (await mainServer).started()
  for (const path of ['/ws/session/alice-1', '/ws/sessions', '/health']) {
    const token = sign({ sub: 'alice' })
    // Refused with 404, or upgraded and closed at once by @fastify/websocket: no route takes it.
    const client = await connect(t, server.ws(path), { origin: server.url, token })
    await within(client.closed, 10_000, `${path}: close`)
    await logFlushed(server)
    t.strictSame(linesWith(server, token), [], `${path}: no log line holds the token`)
  }
})

// ---------------------------------------------------------------------------------------
// Limits and origins set through the environment (limits process)

t.test('configuration: WS_ALLOWED_ORIGINS replaces the default allowlist', async (t) => {
  const server = await (await limitsServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  for (const origin of LIMITS_ORIGINS) {
    const client = await admitted(t, url, { origin, token: sign({ sub: 'alice' }) })
    t.pass(`${origin} is admitted`)
    await client.end()
  }
  for (const origin of [...defaultOrigins(server), 'https://app.example.com:8443', 'http://app.example.com', 'http://other.test']) {
    await assertRefused(t, url, { origin, token: sign({ sub: 'alice' }) }, ORIGIN_NOT_ALLOWED, origin)
  }
})

t.test('limits: with WS_MAX_CONNECTIONS_PER_USER=2 a third connection closes 1008 "Too many connections"', async (t) => {
  const server = await (await limitsServer).started()
  const url = server.ws('/ws/sessions/alice-1')
  const origin = LIMITS_ORIGINS[0]!
  const held = [await admitted(t, url, { origin, token: sign({ sub: 'alice' }) }), await admitted(t, url, { origin, token: sign({ sub: 'alice' }) })]
  await assertRefused(t, url, { origin, token: sign({ sub: 'alice' }) }, TOO_MANY, 'a third connection')
  await held[1]!.end()
  await admitted(t, url, { origin, token: sign({ sub: 'alice' }) })
  t.pass('a closed connection frees its slot at once')
})

t.test('limits: with WS_MAX_PAYLOAD_BYTES=100 a 101-byte frame closes 1009', async (t) => {
  const server = await (await limitsServer).started()
  const client = await connect(t, server.ws('/ws/sessions/bob-1'), { origin: LIMITS_ORIGINS[0]!, token: sign({ sub: 'bob' }) })
  t.strictSame(await client.ask(pingOfSize(100)), PONG, 'a frame of exactly 100 bytes is processed')
  client.send(pingOfSize(101))
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: MESSAGE_TOO_BIG })
})

// The limits process allows 5 messages per second per user. Each test first lets the
// user's earlier messages leave every one-second window.

t.test('rate limits: invalid frames count; past WS_MAX_MESSAGES_PER_SECOND an error frame, then close 1008', async (t) => {
  const server = await (await limitsServer).started()
  await sleep(QUIET_MS)
  const client = await connect(t, server.ws('/ws/sessions/alice-1'), { origin: LIMITS_ORIGINS[0]!, token: sign({ sub: 'alice' }) })
  client.send('{"type":')
  client.send({ type: 'nope' })
  client.ws.send(Buffer.from([1, 2, 3]), { binary: true })
  client.send({ type: 'subscribe', payload: { channel: 'orders' } })
  client.send('[]')
  client.send({ type: 'ping' })
  t.strictSame(await client.next(), { type: 'error', message: 'Invalid JSON' })
  t.strictSame(await client.next(), { type: 'error', message: 'Unknown message type' })
  t.strictSame(await client.next(), { type: 'error', message: 'Binary frames are not supported' })
  t.strictSame(await client.next(), { type: 'error', message: 'Invalid payload: /channel Expected union value' })
  t.strictSame(await client.next(), { type: 'error', message: 'A message must be a JSON object with a string "type"' })
  t.strictSame(await client.next(), RATE_LIMIT_ERROR, 'the sixth frame, a valid ping, is over the limit')
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: RATE_LIMITED })
})

t.test('rate limits: the per-second limit counts every connection of the user together', async (t) => {
  const server = await (await limitsServer).started()
  const url = server.ws('/ws/sessions/bob-1')
  const origin = LIMITS_ORIGINS[1]!
  // Three on one connection, then three on another: the sixth is over the limit if all six
  // go out within one second; on a starved machine the attempt is repeated.
  for (let attempt = 1; attempt <= 3; attempt++) {
    await sleep(QUIET_MS)
    const a = await connect(t, url, { origin, token: sign({ sub: 'bob' }) })
    const b = await connect(t, url, { origin, token: sign({ sub: 'bob' }) })
    const start = Date.now()
    for (let i = 0; i < 3; i++) a.send({ type: 'ping' })
    const answersA = []
    for (let i = 0; i < 3; i++) answersA.push(await a.next())
    for (let i = 0; i < 3; i++) b.send({ type: 'ping' })
    if (Date.now() - start >= 900) {
      t.comment(`attempt ${attempt}: the six messages took a second or more; again`)
      await Promise.all([a.end(), b.end()])
      continue
    }
    t.strictSame(answersA, Array(3).fill(PONG), 'three on the first connection are answered')
    t.strictSame([await b.next(), await b.next()], [PONG, PONG], 'two more on the second are answered')
    t.strictSame(await b.next(), RATE_LIMIT_ERROR, 'the sixth of the user is over the limit')
    t.strictSame(await b.nextEvent(), { kind: 'closed', closed: RATE_LIMITED })
    return
  }
  t.fail('three attempts could not send six messages within one second')
})

t.test('rate limits: the per-second window slides across wall-clock second boundaries', async (t) => {
  const server = await (await limitsServer).started()
  // Five late in one wall-clock second, the sixth early in the next: a window fixed to
  // whole seconds would let it through, any one-second window must not. The six must go
  // out within one second for that to hold; on a starved machine the attempt is repeated.
  for (let attempt = 1; attempt <= 3; attempt++) {
    await sleep(QUIET_MS)
    const client = await connect(t, server.ws('/ws/sessions/alice-1'), { origin: LIMITS_ORIGINS[0]!, token: sign({ sub: 'alice' }) })
    await sleep((1700 - (Date.now() % 1000)) % 1000)
    const start = Date.now()
    const boundary = start - (start % 1000) + 1000
    for (let i = 0; i < 5; i++) client.send({ type: 'ping' })
    const answers = []
    for (let i = 0; i < 5; i++) answers.push(await client.next())
    await sleep(boundary + 150 - Date.now())
    if (start % 1000 > 850 || Date.now() - start >= 900) {
      t.comment(`attempt ${attempt}: the six would not straddle a second boundary within one second; again`)
      await client.end()
      continue
    }
    client.send({ type: 'ping' })
    t.strictSame(answers, Array(5).fill(PONG), 'five late in one second are answered')
    t.strictSame(await client.next(), RATE_LIMIT_ERROR, 'the sixth, early in the next second, is over the limit')
    t.strictSame(await client.nextEvent(), { kind: 'closed', closed: RATE_LIMITED })
    return
  }
  t.fail('three attempts could not send six messages within one second')
})

// ---------------------------------------------------------------------------------------
// Per-minute limit (per-minute process: WS_MAX_MESSAGES_PER_MINUTE=5)

t.test('rate limits: the per-minute limit counts messages over more than a second, across connections', async (t) => {
  const server = await (await minuteServer).started()
  const url = server.ws('/ws/sessions/bob-1')
  const a = await connect(t, url, { origin: server.url, token: sign({ sub: 'bob' }) })
  const b = await connect(t, url, { origin: server.url, token: sign({ sub: 'bob' }) })
  for (let i = 0; i < 3; i++) t.strictSame(await a.ask({ type: 'ping' }), PONG)
  await sleep(1200)
  for (let i = 0; i < 2; i++) t.strictSame(await b.ask({ type: 'ping' }), PONG)
  b.send({ type: 'ping' })
  t.strictSame(await b.next(), RATE_LIMIT_ERROR, 'the sixth in the minute is over the limit')
  t.strictSame(await b.nextEvent(), { kind: 'closed', closed: RATE_LIMITED })
})

// ---------------------------------------------------------------------------------------
// Development defaults, demo page and token (development and production processes)

t.test('configuration: without WS_JWT_SECRET a warning goes to stderr', async (t) => {
  const server = await (await devServer).started()
  const warnings = server.stderr.filter((line) => line.includes('WS_JWT_SECRET'))
  t.equal(warnings.length, 1)
  t.match(warnings[0] ?? '', /warning/i)
})

t.test('demo: GET / serves an HTML page, POST /demo/token gives a token that connects to alice-1', async (t) => {
  const server = await (await devServer).started()
  const page = await http(server, 'GET', '/')
  t.equal(page.status, 200)
  t.match(page.headers['content-type'] ?? '', /^text\/html/)
  t.match(page.body, /^<!doctype html>/i)
  t.match(page.body, '/demo/token')
  t.match(page.body, '/ws/sessions/alice-1')

  const answer = await http(server, 'POST', '/demo/token', { user: 'alice' })
  t.equal(answer.status, 200)
  const body = JSON.parse(answer.body) as { token: string }
  t.strictSame(Object.keys(body), ['token'])
  t.type(body.token, 'string')
  usedTokens.add(body.token)
  const url = server.ws('/ws/sessions/alice-1')
  const viaProtocol = await admitted(t, url, { origin: server.url, token: body.token, via: 'protocol' })
  t.equal(viaProtocol.protocolHeader, 'bearer')
  await viaProtocol.end()
  const viaQuery = await admitted(t, url, { origin: `http://localhost:${server.port}`, token: body.token })
  t.pass('the demo token also works as ?token=')
  await viaQuery.end()
})

t.test('rate limits: WS_MAX_MESSAGES_PER_SECOND defaults to 10', async (t) => {
  const server = await (await devServer).started()
  await sleep(QUIET_MS)
  const { token } = JSON.parse((await http(server, 'POST', '/demo/token', { user: 'alice' })).body) as { token: string }
  usedTokens.add(token)
  const client = await connect(t, server.ws('/ws/sessions/alice-1'), { origin: server.url, token })
  for (let i = 0; i < 11; i++) client.send({ type: 'ping' })
  for (let i = 0; i < 10; i++) t.strictSame(await client.next(), PONG)
  t.strictSame(await client.next(), RATE_LIMIT_ERROR)
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: RATE_LIMITED })
})

t.test('rate limits: WS_MAX_MESSAGES_PER_MINUTE defaults to 100', async (t) => {
  const { answers, after } = await outcomeOf(defaultMinute, 60_000, 'default per-minute scenario')
  t.strictSame(answers, Array(100).fill(PONG), '100 messages over ten seconds are answered')
  t.strictSame(after, [{ kind: 'frame', frame: RATE_LIMIT_ERROR }, { kind: 'closed', closed: RATE_LIMITED }], 'the 101st is over the limit')
})

t.test('start: HOST defaults to 127.0.0.1', async (t) => {
  const server = await (await productionServer).started()
  t.equal(server.stdout.filter((line) => line.includes(`http://127.0.0.1:${server.port}`)).length, 1)
  t.equal((await http(server, 'GET', '/health')).status, 200)
})

t.test('demo: with NODE_ENV=production POST /demo/token answers 404', async (t) => {
  const server = await (await productionServer).started()
  const answer = await http(server, 'POST', '/demo/token', { user: 'alice' })
  t.equal(answer.status, 404)
  t.notMatch(answer.body, /token"\s*:/)
  t.equal((await http(server, 'GET', '/')).status, 200, 'the page itself is still served')
})

// ---------------------------------------------------------------------------------------
// Malformed configuration

t.test('configuration: a malformed variable stops start-up with one stderr line naming it, exit code 1', async (t) => {
  const procs = await Promise.all(malformedServers)
  const exits = await Promise.all(procs.map(async (server) => await within(server.finished, STARTUP_TIMEOUT_MS, server.name)))
  procs.forEach((server, i) => {
    const [name] = MALFORMED_ENV[i]!
    const lines = server.stderr.filter((line) => line.trim() !== '')
    t.strictSame(exits[i], { code: 1, signal: null }, `${server.name}: exit code 1`)
    t.equal(lines.length, 1, `${server.name}: one stderr line`)
    t.match(lines[0] ?? '', name, `${server.name}: the line names ${name}`)
    t.notMatch(lines[0] ?? '', /\sat\s/, `${server.name}: no stack`)
    t.equal(server.stdout.some((line) => line.includes(server.url)), false, `${server.name}: never listened`)
  })
})

// ---------------------------------------------------------------------------------------
// Shutdown (main and production processes)

t.test('shutdown: SIGTERM closes every open WebSocket with 1001 and the process exits 0 within 5 s', async (t) => {
  const server = await (await mainServer).started()
  const clients = [
    await admitted(t, server.ws('/ws/sessions/alice-1'), { origin: server.url, token: sign({ sub: 'alice' }) }),
    await admitted(t, server.ws('/ws/sessions/alice-1'), { origin: `http://localhost:${server.port}`, token: sign({ sub: 'alice' }), via: 'protocol' }),
    await admitted(t, server.ws('/ws/sessions/bob-1'), { origin: server.url, token: sign({ sub: 'bob' }) })
  ]
  t.strictSame(await clients[0]!.ask({ type: 'subscribe', payload: { channel: 'status' } }), { type: 'subscribed', channel: 'status' })
  server.child.kill('SIGTERM')
  const exit = await within(server.exited, 5000, 'exit after SIGTERM')
  t.strictSame(exit, { code: 0, signal: null })
  for (const client of clients) t.strictSame(await client.nextEvent(), { kind: 'closed', closed: SHUTTING_DOWN })
})

t.test('shutdown: SIGINT closes every open WebSocket with 1001 and the process exits 0 within 5 s', async (t) => {
  const server = await (await productionServer).started()
  const clients = [
    await admitted(t, server.ws('/ws/sessions/alice-1'), { origin: server.url, token: sign({ sub: 'alice' }) }),
    await admitted(t, server.ws('/ws/sessions/bob-1'), { origin: server.url, token: sign({ sub: 'bob' }), via: 'protocol' })
  ]
  server.child.kill('SIGINT')
  const exit = await within(server.exited, 5000, 'exit after SIGINT')
  t.strictSame(exit, { code: 0, signal: null })
  for (const client of clients) t.strictSame(await client.nextEvent(), { kind: 'closed', closed: SHUTTING_DOWN })
})

// ---------------------------------------------------------------------------------------
// Waited on last: it needs the wall clock to reach a minute boundary

t.test('rate limits: the per-minute window slides across wall-clock minute boundaries', async (t) => {
  const { first, after, spanMs } = await outcomeOf(minuteBoundary, 75_000, 'minute boundary scenario')
  t.strictSame(first, Array(5).fill(PONG), 'five before the boundary are answered')
  t.ok(spanMs < 60_000, 'the sixth is sent less than a minute after the first')
  t.strictSame(after, [{ kind: 'frame', frame: RATE_LIMIT_ERROR }, { kind: 'closed', closed: RATE_LIMITED }], 'the sixth, after the boundary, is over the limit')
})

// ---------------------------------------------------------------------------------------
// Secrets, checked over everything every process wrote and every frame any client got

t.test('secrets: no frame carries an apiKey, no error frame a stack or a path, no output line a token or an apiKey', async (t) => {
  for (const server of await Promise.all([mainServer, minuteServer, limitsServer, devServer, productionServer])) {
    if (server.running) server.child.kill('SIGTERM')
  }
  await within(Promise.all(servers.map(async (server) => await server.finished)), 10_000, 'every process ended')

  t.ok(receivedFrames.length > 100, 'frames were received')
  const errors = receivedFrames.map((raw) => JSON.parse(raw) as Record<string, unknown>).filter((frame) => frame.type === 'error')
  t.ok(errors.length > 20, 'error frames were received')
  for (const frame of errors) {
    t.strictSame(Object.keys(frame), ['type', 'message'], 'an error frame has only type and message')
    const message = String(frame.message)
    if (/\n|\bat\s|[\\]|(^|\s)\/[^\s/]+\/|\.(ts|js|mjs|cjs)\b|node_modules|examples|lib\//.test(message) || message.includes(ROOT)) {
      t.fail(`error frame with a stack or a path: ${message}`)
    }
  }
  for (const raw of receivedFrames) {
    for (const key of API_KEYS) if (raw.includes(key)) t.fail(`a frame carries an apiKey: ${raw}`)
    for (const token of usedTokens) if (token !== '' && raw.includes(token)) t.fail(`a frame carries a token: ${raw}`)
  }

  const lines = servers.flatMap((server) => [...server.stdout, ...server.stderr].map((line) => ({ server: server.name, line })))
  t.ok(lines.length > 50, 'the processes wrote log lines')
  // A token's signature alone is as good as the token to anyone checking for leaks.
  const needles = [...API_KEYS, ...usedTokens, ...[...usedTokens].map((token) => token.split('.')[2] ?? '').filter((signature) => signature.length >= 16)]
  t.ok(usedTokens.size > 30, 'many tokens were used')
  let leaks = 0
  for (const { server, line } of lines) {
    for (const needle of needles) {
      if (needle !== '' && line.includes(needle)) {
        leaks++
        t.fail(`${server} wrote a secret: ${line}`)
      }
    }
  }
  t.equal(leaks, 0, 'no stdout or stderr line holds a token or an apiKey')
})
