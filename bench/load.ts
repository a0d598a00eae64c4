/**
 * The load generator: its own process, pinned by the orchestrator to the other core.
 *
 *   node --import tsx bench/load.ts --mode throughput|handshake|memory|alternating \
 *     --client ws|socketio --port 20001 [--local 127.0.0.2] [options]   (JWT_SECRET in the environment)
 *
 * `--mode alternating` takes a comma list of ports (`--port 20001,20002`), one per server.
 *
 * (`npm run bench` runs the tsc-compiled copy, bench/.runs/build/bench/load.js.)
 *
 * Prints JSON lines on stdout: `{"mark":"start"}` and `{"mark":"stop"}` around each measured
 * window, `rate-start` / `rate-stop` around each fixed-rate one, and in alternating mode
 * `alt-start` / `alt-stop` around each window and `alt-done` after the last (the orchestrator
 * reads the servers' CPU time at each mark); `{"mark":"warm"}` and `{"mark":"holding",...}` in
 * memory mode. It reads commands on stdin: `go` / `release` in memory mode, `go` after each
 * `alt-start`. Last comes `{"result":{...}}`. Every phase is bounded in time.
 */
import { createInterface } from 'node:readline'
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import WebSocket, { type RawData } from 'ws'
import { io, type ManagerOptions, type SocketOptions } from 'socket.io-client'
import { createSigner } from 'fast-jwt'
import { BENCH_ORIGIN, PING_FRAME, PONG_FRAME } from './common.js'

const { values: args } = parseArgs({
  options: {
    mode: { type: 'string' },
    client: { type: 'string', default: 'ws' },
    port: { type: 'string' },
    local: { type: 'string', default: '127.0.0.1' },
    connections: { type: 'string' },
    users: { type: 'string' },
    depth: { type: 'string', default: '16' },
    concurrency: { type: 'string' },
    'warmup-ms': { type: 'string' },
    'duration-ms': { type: 'string' },
    rate: { type: 'string' },
    'rate-warmup-ms': { type: 'string' },
    'rate-duration-ms': { type: 'string' },
    'rate-pause-ms': { type: 'string' },
    windows: { type: 'string' },
    'window-ms': { type: 'string' }
  }
})

function int (name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer, got "${value}"`)
  return n
}

const mode = args.mode
const clientKind = args.client
if (mode !== 'throughput' && mode !== 'handshake' && mode !== 'memory' && mode !== 'alternating') throw new Error('--mode must be throughput, handshake, memory or alternating')
if (clientKind !== 'ws' && clientKind !== 'socketio') throw new Error('--client must be ws or socketio')
const ports = (args.port ?? '').split(',').map((p) => int('port', p, 0))
if (ports.some((p) => p >= 32768)) throw new Error('--port must be below 32768')
if (mode === 'alternating' ? ports.length < 2 : ports.length !== 1) throw new Error(mode === 'alternating' ? '--port must list two or more ports' : '--port must be one port')
const port = ports[0]!
const localAddress = args.local
if (!/^127\.0\.\d+\.\d+$/.test(localAddress)) throw new Error('--local must be a loopback address 127.0.x.y')
// Connections take turns over 16 source addresses, 127.0.x.y to 127.15.x.y (the orchestrator
// hands out only 127.0.x.y, so these are this process's own). Node binds a source address
// before it connects, and Linux then looks for a port no other socket bound to that address
// holds: with 10,000 held from one address, that search took ~1.8 ms per connection, 80% of
// the load generator's time in the memory figure.
const SOURCE_ADDRESSES = Array.from({ length: 16 }, (_, k) => localAddress.replace(/^127\.0\./, `127.${k}.`))
let lastSource = 0
function sourceAddress (): string {
  lastSource = (lastSource + 1) % SOURCE_ADDRESSES.length
  return SOURCE_ADDRESSES[lastSource]!
}
const secret = process.env.JWT_SECRET
if (secret === undefined || secret === '') throw new Error('JWT_SECRET is required')

// Tokens are signed before anything is measured; one per user, valid for an hour.
const signer = createSigner({ key: secret, algorithm: 'HS256', expiresIn: 3600_000 })
const tokens: string[] = []
function tokenFor (user: number): string {
  let token = tokens[user]
  if (token === undefined) {
    token = signer({ sub: `u${user}`, scope: 'bench' })
    tokens[user] = token
  }
  return token
}

// ---------------------------------------------------------------------------------------
// Clients: the same four events whatever the target speaks.

interface Handlers {
  /** The server admitted the connection (ws: upgrade done; socket.io: `connect` after the middleware). */
  onOpen (): void
  /** A reply arrived; `ok` when it is exactly the pong. */
  onReply (ok: boolean): void
  /** The connection is gone; `clean` when it ended by a normal close this side asked for. */
  onClose (clean: boolean): void
}

interface BenchClient {
  ping (): void
  /** Closes with a close handshake; onClose follows once the socket is closed. */
  close (): void
}

function connectWs (user: number, h: Handlers, serverPort = port): BenchClient {
  const ws = new WebSocket(`ws://127.0.0.1:${serverPort}/ws/u${user}`, ['bearer', tokenFor(user)], {
    origin: BENCH_ORIGIN,
    localAddress: sourceAddress(),
    perMessageDeflate: false
  })
  ws.on('open', h.onOpen)
  ws.on('message', (data: RawData, isBinary: boolean) => {
    h.onReply(!isBinary && (data as Buffer).length === PONG_FRAME.length)
  })
  // A refusal after the upgrade arrives as the server's own close code (4401, 1008...).
  ws.on('close', (code: number) => h.onClose(code === 1000 || code === 1005))
  ws.on('error', () => { errors++ })
  return { ping: () => ws.send(PING_FRAME), close: () => ws.close(1000) }
}

interface RawSocketHolder {
  transport?: { ws?: WebSocket | null }
}

function connectSocketIo (user: number, h: Handlers, serverPort = port): BenchClient {
  const options: Partial<ManagerOptions & SocketOptions> & { localAddress: string } = {
    transports: ['websocket'],
    auth: { token: tokenFor(user) },
    forceNew: true,
    reconnection: false,
    extraHeaders: { origin: BENCH_ORIGIN },
    localAddress: sourceAddress()
  }
  const socket = io(`http://127.0.0.1:${serverPort}`, options)
  let raw: WebSocket | null | undefined
  let closing = false
  let closed = false
  const done = (clean: boolean): void => {
    if (closed) return
    closed = true
    h.onClose(clean)
  }
  socket.on('connect', () => {
    raw = (socket.io.engine as unknown as RawSocketHolder).transport?.ws
    h.onOpen()
  })
  socket.on('message', (message: { type?: unknown } | null) => h.onReply(message?.type === 'pong'))
  socket.on('connect_error', () => { errors++; done(false) })
  socket.on('disconnect', () => { if (!closing) done(false) })
  return {
    ping: () => socket.emit('message', { type: 'ping' }),
    close: () => {
      closing = true
      const rawSocket = raw
      socket.disconnect()
      // socket.io reports the disconnect at once; wait for the TCP close like the ws client does.
      if (rawSocket !== null && rawSocket !== undefined && rawSocket.readyState !== WebSocket.CLOSED) {
        rawSocket.once('close', () => done(true))
      } else {
        done(true)
      }
    }
  }
}

const connect = clientKind === 'ws' ? connectWs : connectSocketIo

// ---------------------------------------------------------------------------------------
// Measurement helpers.

let errors = 0

/** Latency samples in ms, bounded; percentiles by sorting once at the end. */
class Samples {
  readonly #values: Float64Array
  #length = 0
  constructor (capacity: number) {
    this.#values = new Float64Array(capacity)
  }

  push (value: number): void {
    if (this.#length < this.#values.length) this.#values[this.#length++] = value
  }

  percentile (p: number): number | null {
    if (this.#length === 0) return null
    const sorted = this.#values.subarray(0, this.#length).sort()
    return sorted[Math.min(this.#length - 1, Math.floor(p * this.#length))]!
  }
}

function emit (line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`)
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Resolves once `done()` is true, or false after `timeoutMs`. */
async function until (done: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  while (!done()) {
    if (performance.now() > deadline) return false
    await sleep(5)
  }
  return true
}

const stdinLines = createInterface({ input: process.stdin })
const received: string[] = []
let onCommand: (() => void) | undefined
stdinLines.on('line', (line) => {
  received.push(line.trim())
  onCommand?.()
})

/**
 * Takes the orchestrator's next `word` off stdin, at most `timeoutMs` later; false on timeout.
 * Woken by the line itself: a figure that hands off every 50 ms cannot poll.
 */
async function takeCommand (word: string, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    const at = received.indexOf(word)
    if (at >= 0) {
      received.splice(at, 1)
      return true
    }
    const left = deadline - performance.now()
    if (left <= 0) return false
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, left)
      onCommand = () => {
        clearTimeout(timer)
        onCommand = undefined
        resolve()
      }
    })
  }
}

const round3 = (n: number | null): number | null => n === null ? null : Math.round(n * 1000) / 1000

/**
 * Calls `fire` `rate` times a second, on a 2 ms tick. Never bursts more than 20 ms worth: a
 * load generator that fell behind skips instead, and `skipped` says how many.
 */
function fixedRate (rate: number, fire: () => void): { skipped: number, stop: () => void } {
  let credit = 0
  let last = performance.now()
  const ticker = {
    skipped: 0,
    stop: () => clearInterval(timer)
  }
  const timer = setInterval(() => {
    const now = performance.now()
    credit += ((now - last) * rate) / 1000
    last = now
    const cap = Math.max(1, rate / 50)
    if (credit > cap) {
      ticker.skipped += Math.floor(credit - cap)
      credit = cap
    }
    for (; credit >= 1; credit--) fire()
  }, 2)
  return ticker
}

/** Length of the sub-windows a fixed-rate window is cut into. */
const SPLIT_MS = 250

interface FixedRate {
  rate: number
  warmupMs: number
  durationMs: number
  /** Traffic stops this long before each sub-window after the first. */
  pauseMs: number
}

/** A fixed-rate window at `rate`, with `--rate-warmup-ms`, `--rate-duration-ms` and `--rate-pause-ms`. */
function fixedRateArgs (rate: number): FixedRate {
  return {
    rate,
    warmupMs: int('rate-warmup-ms', args['rate-warmup-ms'], 300),
    durationMs: int('rate-duration-ms', args['rate-duration-ms'], 2500),
    pauseMs: args['rate-pause-ms'] === '0' ? 0 : int('rate-pause-ms', args['rate-pause-ms'], 0)
  }
}

interface FixedWindow {
  rate: number
  /** Seconds of traffic in the window (pauses left out). */
  seconds: number
  /** Events the load generator could not fire in time. */
  skipped: number
  /** Events counted in each sub-window. */
  splits: number[]
}

/**
 * The measured fixed-rate window of a figure: fires `rate` events a second, `warmupMs`
 * unmeasured, then `durationMs` of traffic between the `rate-start` and `rate-stop` marks,
 * cut into sub-windows of SPLIT_MS by `rate-split` marks (the orchestrator reads the server's
 * CPU time at each and takes the median over sub-windows, so a burst of other work on the
 * machine spoils one sub-window, not the round). `count` reads the events answered so far;
 * `setMeasuring` tells the caller when events count.
 *
 * With `pauseMs`, traffic stops for that long at the start of each sub-window after the
 * first. On a shared machine one stretch of steady traffic settles into a cost per event
 * that holds for the whole stretch and differs from the next by up to ±15%; a pause
 * starts a new stretch, so each sub-window is a sample of its own.
 */
async function fixedRateWindow ({ rate, warmupMs, durationMs, pauseMs }: FixedRate, fire: () => void, count: () => number, setMeasuring: (on: boolean) => void): Promise<FixedWindow> {
  let ticker = fixedRate(rate, fire)
  await sleep(warmupMs)
  ticker.skipped = 0
  let skipped = 0
  setMeasuring(true)
  emit({ mark: 'rate-start' })
  const splits: number[] = []
  const subWindows = Math.max(1, Math.round(durationMs / SPLIT_MS))
  let last = count()
  let trafficMs = 0
  for (let i = 0; i < subWindows; i++) {
    if (i > 0) emit({ mark: 'rate-split' })
    if (i > 0 && pauseMs > 0) {
      skipped += ticker.skipped
      ticker.stop()
      await sleep(pauseMs)
      ticker = fixedRate(rate, fire)
    }
    const began = performance.now()
    await sleep(SPLIT_MS)
    trafficMs += performance.now() - began
    const now = count()
    splits.push(now - last)
    last = now
  }
  emit({ mark: 'rate-stop' })
  setMeasuring(false)
  ticker.stop()
  return { rate, seconds: trafficMs / 1000, skipped: skipped + ticker.skipped, splits }
}

/** What both figures report of their fixed-rate window, `events` being what was answered in it. */
function fixedResult (window: FixedWindow, events: number, latency: Samples): object {
  return {
    fixedRate: window.rate,
    fixedSeconds: round3(window.seconds),
    fixedAchievedRate: Math.round(events / window.seconds),
    fixedSplits: window.splits,
    fixedSkipped: window.skipped,
    fixedP50Ms: round3(latency.percentile(0.5)),
    fixedP99Ms: round3(latency.percentile(0.99))
  }
}

// ---------------------------------------------------------------------------------------
// Modes.

interface PingConnection {
  client: BenchClient
  /** When each ping still waiting for its pong was sent. */
  sentAt: number[]
  open: boolean
}

/**
 * `count` connections to one server (users taken in turn) that send pings and count pongs.
 * `onReply` gets the connection, whether the reply was the pong, and the ping's round trip
 * in ms. A connection that ends before `close()` counts in `closedEarly`.
 */
class PingPool {
  readonly conns: PingConnection[] = []
  opened = 0
  closedEarly = 0
  #closing = false
  #next = 0

  constructor (serverPort: number, count: number, users: number, onReply: (conn: PingConnection, ok: boolean, ms: number) => void) {
    for (let i = 0; i < count; i++) {
      const conn: PingConnection = { client: undefined as unknown as BenchClient, sentAt: [], open: false }
      conn.client = connect(i % users, {
        onOpen: () => { conn.open = true; this.opened++ },
        onReply: (ok) => {
          const now = performance.now()
          onReply(conn, ok, now - (conn.sentAt.shift() ?? now))
        },
        onClose: () => { if (conn.open && !this.#closing) this.closedEarly++; conn.open = false }
      }, serverPort)
      this.conns.push(conn)
    }
  }

  /** Resolves once every connection is open; throws after 15 s. */
  async opening (): Promise<void> {
    if (!await until(() => this.opened === this.conns.length, 15_000)) throw new Error(`only ${this.opened} of ${this.conns.length} connections opened`)
  }

  ping (conn: PingConnection): void {
    conn.sentAt.push(performance.now())
    conn.client.ping()
  }

  /** Pings the next connection in turn. */
  pingNext (): void {
    this.ping(this.conns[this.#next++ % this.conns.length]!)
  }

  /** Puts `depth` pings in flight on every connection. */
  pipeline (depth: number): void {
    for (const conn of this.conns) for (let d = 0; d < depth; d++) this.ping(conn)
  }

  /** Resolves once every ping sent has its pong; throws after 5 s. */
  async drained (): Promise<void> {
    if (!await until(() => this.conns.every((c) => c.sentAt.length === 0 || !c.open), 5000)) throw new Error('pings still unanswered 5 s after the last was sent')
  }

  async close (): Promise<void> {
    this.#closing = true
    for (const conn of this.conns) conn.client.close()
    await until(() => this.conns.every((c) => !c.open), 5000)
  }
}

/**
 * Two windows over the same connections. Pipelined: every connection keeps `depth` pings in
 * flight, which saturates the load generator; gives the raw rate. Fixed rate: `rate` pings per
 * second in total, sent round-robin on a 2 ms tick, well below any target's capacity, so every
 * server sees the same arrivals and does the same reads and writes per message; gives the
 * server CPU per message and latencies that are not queueing.
 */
async function throughput (): Promise<object> {
  const connections = int('connections', args.connections, 50)
  const users = int('users', args.users, connections)
  const depth = int('depth', args.depth, 16)
  const warmupMs = int('warmup-ms', args['warmup-ms'], 500)
  const durationMs = int('duration-ms', args['duration-ms'], 2000)
  const fixedArgs = fixedRateArgs(int('rate', args.rate, 10_000))
  for (let u = 0; u < users; u++) tokenFor(u)

  let phase: 'connecting' | 'warmup' | 'measure' | 'drain' | 'fixed' = 'connecting'
  let measuring = false
  let replies = 0
  let fixedReplies = 0
  let badReplies = 0
  const latency = new Samples(4_000_000)
  const fixedLatency = new Samples(1_000_000)
  const pool = new PingPool(port, connections, users, (conn, ok, ms) => {
    if (!ok) badReplies++
    if (phase === 'fixed') {
      if (measuring) {
        fixedReplies++
        fixedLatency.push(ms)
      }
      return
    }
    if (phase === 'measure') {
      replies++
      latency.push(ms)
    }
    if (phase !== 'drain') pool.ping(conn)
  })
  await pool.opening()

  // Pipelined window.
  phase = 'warmup'
  pool.pipeline(depth)
  await sleep(warmupMs)
  phase = 'measure'
  emit({ mark: 'start' })
  const started = performance.now()
  await sleep(durationMs)
  emit({ mark: 'stop' })
  phase = 'drain'
  const seconds = (performance.now() - started) / 1000
  await pool.drained()

  // Fixed-rate window.
  phase = 'fixed'
  const fixed = await fixedRateWindow(fixedArgs, () => pool.pingNext(), () => fixedReplies, (on) => { measuring = on })
  phase = 'drain'
  await pool.drained()

  await pool.close()
  return {
    connections,
    users,
    depth,
    seconds: round3(seconds),
    messages: replies,
    rate: Math.round(replies / seconds),
    p50Ms: round3(latency.percentile(0.5)),
    p99Ms: round3(latency.percentile(0.99)),
    fixedMessages: fixedReplies,
    ...fixedResult(fixed, fixedReplies, fixedLatency),
    badReplies,
    closedEarly: pool.closedEarly,
    errors
  }
}

/**
 * The servers' CPU per message in short fixed-rate windows that take turns between them
 * (bench/README.md, figure 1b, says why). `connections` to each server; per server a warm-up
 * of `warmupMs` pipelined and `--rate-warmup-ms` at the fixed rate; then `--windows` rounds in
 * which each server in turn, after `--rate-pause-ms` without traffic, gets `--window-ms` of
 * pings at the fixed rate. A window opens with an `alt-start` mark, and its traffic starts on
 * the orchestrator's `go`, once it has read the servers' CPU time; its `alt-stop` mark comes
 * after its last reply. Each round starts one server further along, so none always goes first.
 */
async function alternating (): Promise<object> {
  const connections = int('connections', args.connections, 50)
  const users = int('users', args.users, connections)
  const depth = int('depth', args.depth, 16)
  const warmupMs = int('warmup-ms', args['warmup-ms'], 1000)
  const windows = int('windows', args.windows, 16)
  const windowMs = int('window-ms', args['window-ms'], 50)
  const { rate, warmupMs: rateWarmupMs, pauseMs } = fixedRateArgs(int('rate', args.rate, 10_000))
  for (let u = 0; u < users; u++) tokenFor(u)

  let pipelining = false
  let badReplies = 0
  const replies = ports.map(() => 0)
  const pools = ports.map((serverPort, index) => {
    const pool: PingPool = new PingPool(serverPort, connections, users, (conn, ok) => {
      if (!ok) badReplies++
      replies[index]!++
      if (pipelining) pool.ping(conn)
    })
    return pool
  })
  for (const pool of pools) await pool.opening()
  /** Pings `pool` at the fixed rate for `ms`, then waits for the last pong; returns the sends skipped. */
  const atFixedRate = async (pool: PingPool, ms: number): Promise<number> => {
    const ticker = fixedRate(rate, () => pool.pingNext())
    await sleep(ms)
    ticker.stop()
    await pool.drained()
    return ticker.skipped
  }

  for (const pool of pools) {
    pipelining = true
    pool.pipeline(depth)
    await sleep(warmupMs)
    pipelining = false
    await pool.drained()
    await atFixedRate(pool, rateWarmupMs)
  }

  for (let w = 0; w < windows; w++) {
    for (let k = 0; k < pools.length; k++) {
      const index = (w + k) % pools.length
      const pool = pools[index]!
      await sleep(pauseMs)
      const before = replies[index]!
      emit({ mark: 'alt-start', server: index })
      // A CPU reading taken after the first messages would leave them out of every window.
      if (!await takeCommand('go', 5000)) throw new Error('no "go" from the orchestrator')
      const skipped = await atFixedRate(pool, windowMs)
      emit({ mark: 'alt-stop', server: index, messages: replies[index]! - before, skipped, seconds: windowMs / 1000 })
    }
  }
  await sleep(pauseMs)
  emit({ mark: 'alt-done' })

  for (const pool of pools) await pool.close()
  return { connections, users, rate, windows, badReplies, closedEarly: pools.reduce((n, pool) => n + pool.closedEarly, 0), errors }
}

/**
 * Windows in which each upgrade is a new connection that is admitted, closed, and waited for
 * until its TCP close. As fast as possible: `concurrency` clients back to back, which
 * saturates the load generator; gives the raw rate. Then one fixed-rate window for each rate
 * of `--rate` (a comma list, e.g. `800,300`): that many new connections per second, started
 * on a 2 ms tick whatever the server's pace, so every server gets the same arrivals; gives
 * the server CPU per upgrade. (Per-upgrade CPU falls as a server gets busier, so in the
 * first window a slower load generator alone makes it rise.)
 */
async function handshake (): Promise<object> {
  const concurrency = int('concurrency', args.concurrency, 16)
  const users = int('users', args.users, 2000)
  const warmupMs = int('warmup-ms', args['warmup-ms'], 300)
  const durationMs = int('duration-ms', args['duration-ms'], 2500)
  const rates = (args.rate ?? '250').split(',').map((rate) => int('rate', rate, 250))
  for (let u = 0; u < users; u++) tokenFor(u)

  let phase: 'warmup' | 'measure' | 'between' | 'fixed' = 'warmup'
  let measuring = false
  let next = 0
  let upgrades = 0
  let fixedUpgrades = 0
  let refused = 0
  let running = 0
  const connectTime = new Samples(1_000_000)
  let fixedConnectTime = new Samples(1_000_000)

  /** One connection: admitted, closed, gone; `then` runs once it is. */
  const upgradeOnce = (then: () => void): void => {
    running++
    const user = next++ % users
    const t0 = performance.now()
    let opened = false
    const client = connect(user, {
      onOpen: () => {
        opened = true
        if (phase === 'measure') {
          upgrades++
          connectTime.push(performance.now() - t0)
        } else if (phase === 'fixed' && measuring) {
          fixedUpgrades++
          fixedConnectTime.push(performance.now() - t0)
        }
        client.close()
      },
      onReply: () => {},
      onClose: (clean) => {
        if (!opened || !clean) refused++
        running--
        then()
      }
    })
  }
  // Next connect on a fresh tick, so one worker never recurses.
  const cycle = (): void => {
    if (phase === 'warmup' || phase === 'measure') upgradeOnce(() => setImmediate(cycle))
  }
  for (let w = 0; w < concurrency; w++) cycle()
  await sleep(warmupMs)
  phase = 'measure'
  emit({ mark: 'start' })
  const started = performance.now()
  await sleep(durationMs)
  emit({ mark: 'stop' })
  const seconds = (performance.now() - started) / 1000
  phase = 'between'
  await until(() => running === 0, 5000)

  phase = 'fixed'
  const fixedWindows: object[] = []
  for (const rate of rates) {
    fixedUpgrades = 0
    fixedConnectTime = new Samples(1_000_000)
    const fixed = await fixedRateWindow(fixedRateArgs(rate), () => upgradeOnce(() => {}), () => fixedUpgrades, (on) => { measuring = on })
    await until(() => running === 0, 5000)
    fixedWindows.push({ fixedUpgrades, ...fixedResult(fixed, fixedUpgrades, fixedConnectTime) })
  }
  return {
    concurrency,
    users,
    seconds: round3(seconds),
    upgrades,
    rate: Math.round(upgrades / seconds),
    p50Ms: round3(connectTime.percentile(0.5)),
    p99Ms: round3(connectTime.percentile(0.99)),
    fixedWindows,
    refused,
    errors
  }
}

interface HeldConnection {
  client: BenchClient
  open: boolean
  answered: boolean
}

/**
 * Opens `count` connections, `concurrency` at a time, each answering one ping; resolves with
 * them, and whether every one settled (answered or closed) within `timeoutMs`.
 */
async function openAnswered (count: number, users: number, firstUser: number, concurrency: number, timeoutMs: number): Promise<{ held: HeldConnection[], complete: boolean }> {
  const held: HeldConnection[] = []
  let started = 0
  let settled = 0
  const startOne = (): void => {
    if (started >= count) return
    const index = started++
    const conn: HeldConnection = { client: undefined as unknown as BenchClient, open: false, answered: false }
    let counted = false
    const settle = (): void => {
      if (counted) return
      counted = true
      settled++
      setImmediate(startOne)
    }
    conn.client = connect(firstUser + (index % users), {
      onOpen: () => { conn.open = true; conn.client.ping() },
      onReply: (ok) => { if (ok) conn.answered = true; settle() },
      onClose: () => { conn.open = false; settle() }
    })
    held.push(conn)
  }
  for (let i = 0; i < Math.min(concurrency, count); i++) startOne()
  const complete = await until(() => settled === count, timeoutMs)
  return { held, complete }
}

async function memory (): Promise<object> {
  const connections = int('connections', args.connections, 10_000)
  const users = int('users', args.users, 2000)
  const concurrency = int('concurrency', args.concurrency, 200)
  for (let u = 0; u < users; u++) tokenFor(u)

  // Warm-up: the server compiles its connection path and sizes its heap before the idle reading.
  const { held: warm } = await openAnswered(200, 200, 0, 50, 15_000)
  for (const conn of warm) if (conn.open) conn.client.close()
  await until(() => warm.every((c) => !c.open), 5000)
  await sleep(100)
  emit({ mark: 'warm' })
  if (!await takeCommand('go', 20_000)) throw new Error('no "go" from the orchestrator')

  const startedAt = performance.now()
  const { held, complete } = await openAnswered(connections, users, 0, concurrency, 90_000)
  const openSeconds = (performance.now() - startedAt) / 1000
  const count = (): number => held.filter((c) => c.open && c.answered).length
  // `complete` is false when opening them all took longer than allowed (a busy machine).
  emit({ mark: 'holding', held: count(), complete })
  if (!await takeCommand('release', 30_000)) throw new Error('no "release" from the orchestrator')
  return { connections, users, held: count(), complete, openSeconds: round3(openSeconds), errors }
}

async function main (): Promise<void> {
  const result = mode === 'throughput' ? await throughput() : mode === 'handshake' ? await handshake() : mode === 'alternating' ? await alternating() : await memory()
  emit({ result })
  // Held sockets are torn down with the process; the orchestrator kills the server next.
  process.exit(0)
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
