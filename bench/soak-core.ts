/**
 * The soak: many connection lifecycles against one real server, then proof that nothing is
 * left behind. Shared by `npm run soak` (bench/soak.ts, 100,000 cycles) and its short version
 * in the test suite (test/soak.test.ts).
 *
 * One Fastify server with the plugin listens on 127.0.0.1 in this process; real `ws` clients
 * connect to it, `concurrency` at a time. Each cycle ends one of the ways a connection ends in
 * production (ENDINGS), and checks that it ended exactly so: the frames it got and its close
 * code and reason. After the cycles, with the server still listening and no client left, the
 * plugin's counts, the HTTP server's listeners and sockets, the process's active handles and
 * the collected heap must all be back where they were.
 */
import { EventEmitter } from 'node:events'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import { Type } from '@sinclair/typebox'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import secureWs, { memoryStore } from '../lib/index.js'

const SECRET = 'soak-secret-that-is-long-enough-for-hs256'
const ORIGIN = 'https://app.example.com'
const FOREIGN_ORIGIN = 'https://evil.example.com'
/** Signed with another key: refused with 4401 before any lookup. */
const BAD_TOKEN = createSigner({ key: 'not-the-servers-secret-at-all-0000', algorithm: 'HS256' })({ sub: 'u0', exp: Math.floor(Date.now() / 1000) + 3600 })
/** Shared topics, so several open connections are subscribed to each at once. */
const TOPICS = 64
/** Far beyond a healthy cycle's few ms: a cycle that takes this long is stuck. */
const CYCLE_TIMEOUT_MS = 10_000
/** How long the plugin, the store and the sockets get to let go once the last client is gone. */
const SETTLE_MS = 10_000
/** Idle rate counters are kept for a minute by design; the store's clock skips past it. */
const RATE_COUNTER_IDLE_MS = 61_000
/** Default heap growth allowed between the warm start and the end. */
const HEAP_TOLERANCE = 0.10

/** Every way a cycle ends. */
export type Ending = 'clientClose' | 'serverDisconnect' | 'vanish' | 'badToken' | 'badOrigin' | 'rateLimited'

/** The mix, in the order cycles take it: admitted clients in six of nine cycles. */
export const ENDINGS: readonly Ending[] = ['clientClose', 'serverDisconnect', 'badToken', 'clientClose', 'vanish', 'rateLimited', 'clientClose', 'badOrigin', 'vanish']

/** Messages the route refuses with an error frame, the connection staying open; cycles take turns. */
const INVALID_MESSAGES: ReadonlyArray<{ send: string, error: string }> = [
  { send: 'not json', error: 'Invalid JSON' },
  { send: '{"type":"launch"}', error: 'Unknown message type' },
  { send: '{"type":"subscribe","payload":{"topic":7}}', error: 'Invalid payload: /topic Expected string' }
]

const PING = '{"type":"ping"}'
const PONG = '{"type":"pong"}'
const errorFrame = (message: string): string => JSON.stringify({ type: 'error', message })
const RATE_LIMITED_FRAME = errorFrame('Rate limit exceeded. Connection closed.')

interface Close { code: number, reason: string }
const CLIENT_CLOSE: Close = { code: 1000, reason: '' }
const DISCONNECTED: Close = { code: 4403, reason: 'Disconnected by the server' }
const INVALID_TOKEN: Close = { code: 4401, reason: 'Invalid or expired authentication token' }
const ORIGIN_NOT_ALLOWED: Close = { code: 1008, reason: 'Origin not allowed' }
const RATE_LIMITED: Close = { code: 1008, reason: 'Rate limit exceeded' }
/** What a `ws` client reports for its own terminate(): no close frame was exchanged. */
const ABNORMAL: Close = { code: 1006, reason: '' }

export interface SoakOptions {
  /** Measured cycles. */
  cycles: number
  /** Cycles run before the heap is first measured, so caches and compiled code are warm. */
  warmupCycles: number
  /** Clients in flight at once. */
  concurrency: number
  /**
   * Distinct user ids, taken in turn. Each user's message limit (10/s, 100/min) must hold
   * for every one of its cycles, so a user comes back at most every few seconds: keep this
   * well above the cycles run per second, and at most the verifier's cache (10,000 tokens)
   * so that the warm-up fills the cache once.
   */
  users: number
  /** A full collection; without it the heap is not checked. */
  gc?: () => void
  /** Largest heap growth allowed, as a fraction of the warm start. @default 0.10 */
  heapTolerance?: number
  /** Called every `progressEvery` finished cycles, warm-up included. */
  onProgress?: (done: number, total: number) => void
  progressEvery?: number
}

export interface Check {
  name: string
  ok: boolean
  /** What was measured, for the report either way. */
  detail: string
}

export interface SoakReport {
  cycles: number
  warmupCycles: number
  concurrency: number
  users: number
  /** Measured cycles only. */
  seconds: number
  cyclesPerSecond: number
  /** Measured cycles by ending. */
  endings: Record<Ending, number>
  /** Heap used after a full collection, bytes; undefined without `gc`. */
  heapStart: number | undefined
  heapEnd: number | undefined
  checks: Check[]
  /** Cycles that did not end as expected (warm-up included), and the first few, described. */
  unexpected: number
  unexpectedExamples: string[]
  ok: boolean
}

/** The server under soak, and what cycles need to reach it. */
interface Target {
  app: FastifyInstance
  base: string
  tokens: string[]
  /** Moves the store's clock, which only the rate counters read. */
  skipStoreClock: (ms: number) => void
  /** Admitted connections so far, and how many of them the collector has freed. */
  admitted: () => number
  collected: () => number
}

async function startTarget (users: number): Promise<Target> {
  let skew = 0
  let admitted = 0
  let collected = 0
  // Proves that each connection object is freed, not just dropped from the plugin's counts.
  const freed = new FinalizationRegistry<undefined>(() => { collected++ })
  // Logs are written at the level a production app would use, and dropped.
  const discard = new Writable({ write (_chunk, _encoding, callback) { callback() } })
  const app = Fastify({ logger: { level: 'info', stream: discard } })
  await app.register(secureWs, {
    origins: [ORIGIN],
    jwt: { key: SECRET, algorithms: ['HS256'] },
    // Default limits, but for the lockout: every bad-token cycle comes from 127.0.0.1, far
    // more than 30 a minute, and the soak is about lifecycles, not the lockout (test/audit.test.ts
    // and the attack run cover it). The sweep of idle counters every second rather than every
    // ten, so that a settle waits one second for it.
    limits: { authFailuresPerMinute: 0 },
    store: memoryStore({ now: () => Date.now() + skew, sweepIntervalMs: 1000 })
  })
  // One session per user, as an app's session table would hold them.
  const sessions = new Map<string, { id: string, ownerId: string }>()
  for (let u = 0; u < users; u++) sessions.set(`u${u}`, { id: `u${u}`, ownerId: `u${u}` })
  app.secureWs.route({
    url: '/ws/:sessionId',
    resolveSession: ({ params }) => sessions.get(params.sessionId!),
    onConnect (connection) {
      admitted++
      freed.register(connection, undefined)
    },
    outbound: { pong: Type.Object({}), subscribed: Type.Object({ topic: Type.String() }) },
    messages: (message) => ({
      ping: message((connection) => { connection.send('pong', {}) }),
      subscribe: message({ payload: Type.Object({ topic: Type.String({ maxLength: 64 }) }) }, (connection, { topic }) => {
        connection.subscribe(topic)
        connection.send('subscribed', { topic })
      })
    })
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  // Valid for the whole run: a client reconnecting keeps its token, so the verifier's cache
  // holds one entry per user once every user has connected.
  const sign = createSigner({ key: SECRET, algorithm: 'HS256', expiresIn: 6 * 3600 * 1000 })
  const tokens = Array.from({ length: users }, (_, u) => sign({ sub: `u${u}` }))
  return { app, base: `ws://127.0.0.1:${port}/ws/`, tokens, skipStoreClock: (ms) => { skew += ms }, admitted: () => admitted, collected: () => collected }
}

/** What one cycle does and must see. */
interface Plan {
  ending: Ending
  userId: string
  url: string
  protocols: string[] | undefined
  origin: string
  send: string[]
  frames: string[]
  close: Close
}

/** How cycle `index` ends. */
export function endingOf (index: number, users: number): Ending {
  // Each pass over the users shifts every user's ending by one, so no user always gets the
  // same ending (a user rate-limited on every pass would reach its per-minute limit).
  return ENDINGS[(index % users + Math.floor(index / users)) % ENDINGS.length]!
}

function planCycle (target: Target, users: number, index: number): Plan {
  const u = index % users
  const ending = endingOf(index, users)
  const userId = `u${u}`
  const token = ending === 'badToken' ? BAD_TOKEN : target.tokens[u]!
  // Half the clients pass the token in the query, half as the `bearer` subprotocol.
  const viaQuery = index % 2 === 0
  const url = target.base + userId + (viaQuery ? `?token=${token}` : '')
  const protocols = viaQuery ? undefined : ['bearer', token]
  const origin = ending === 'badOrigin' ? FOREIGN_ORIGIN : ORIGIN
  const topic = `room-${index % TOPICS}`
  const subscribe = JSON.stringify({ type: 'subscribe', payload: { topic } })
  const subscribed = JSON.stringify({ type: 'subscribed', topic })
  const invalid = INVALID_MESSAGES[index % INVALID_MESSAGES.length]!
  const base = { ending, userId, url, protocols, origin }
  switch (ending) {
    case 'badToken':
      return { ...base, send: [], frames: [], close: INVALID_TOKEN }
    case 'badOrigin':
      return { ...base, send: [], frames: [], close: ORIGIN_NOT_ALLOWED }
    case 'rateLimited':
      // Ten messages a second are allowed: the eleventh is answered with the error and the close.
      return {
        ...base,
        send: [subscribe, invalid.send, ...Array<string>(9).fill(PING)],
        frames: [subscribed, errorFrame(invalid.error), ...Array<string>(8).fill(PONG), RATE_LIMITED_FRAME],
        close: RATE_LIMITED
      }
    default:
      return {
        ...base,
        send: [PING, subscribe, invalid.send],
        frames: [PONG, subscribed, errorFrame(invalid.error)],
        close: ending === 'clientClose' ? CLIENT_CLOSE : ending === 'serverDisconnect' ? DISCONNECTED : ABNORMAL
      }
  }
}

/** Runs one cycle; resolves with undefined when it ended exactly as planned, else with what happened. */
function runCycle (target: Target, plan: Plan): Promise<string | undefined> {
  return new Promise((resolve) => {
    const frames: string[] = []
    const problems: string[] = []
    const ws = new WebSocket(plan.url, plan.protocols, { origin: plan.origin })
    const timer = setTimeout(() => {
      problems.push(`no close within ${CYCLE_TIMEOUT_MS} ms`)
      ws.terminate()
    }, CYCLE_TIMEOUT_MS)
    ws.on('error', () => {})
    ws.on('unexpected-response', (_request, response) => {
      problems.push(`upgrade refused with HTTP ${response.statusCode}`)
      response.resume()
      ws.terminate()
    })
    ws.on('open', () => {
      for (const message of plan.send) ws.send(message)
    })
    ws.on('message', (data) => {
      frames.push(data.toString())
      if (frames.length === plan.frames.length) endAfterFrames()
    })
    ws.once('close', (code, reasonBuffer) => {
      clearTimeout(timer)
      const reason = reasonBuffer.toString()
      if (JSON.stringify(frames) !== JSON.stringify(plan.frames)) problems.push(`frames ${JSON.stringify(frames)}, expected ${JSON.stringify(plan.frames)}`)
      if (code !== plan.close.code || reason !== plan.close.reason) problems.push(`closed ${code} "${reason}", expected ${plan.close.code} "${plan.close.reason}"`)
      resolve(problems.length === 0 ? undefined : `${plan.ending} ${plan.userId}: ${problems.join('; ')}`)
    })

    function endAfterFrames (): void {
      if (plan.ending === 'clientClose') ws.close(1000)
      else if (plan.ending === 'vanish') ws.terminate()
      else if (plan.ending === 'serverDisconnect') {
        target.app.secureWs.disconnectUser(plan.userId).then(
          (closed) => { if (closed !== 1) problems.push(`disconnectUser closed ${closed} connections, expected 1`) },
          (err: Error) => { problems.push(`disconnectUser failed: ${err.message}`) }
        )
      }
    }
  })
}

interface Tally {
  endings: Record<Ending, number>
  unexpected: number
  examples: string[]
}

const emptyEndings = (): Record<Ending, number> => ({ clientClose: 0, serverDisconnect: 0, vanish: 0, badToken: 0, badOrigin: 0, rateLimited: 0 })

/** Runs cycles `from` .. `from + count - 1`, `concurrency` at a time. */
async function runCycles (target: Target, options: SoakOptions, from: number, count: number, tally: Tally, progress: () => void): Promise<void> {
  let next = from
  const end = from + count
  async function worker (): Promise<void> {
    while (next < end) {
      const plan = planCycle(target, options.users, next++)
      const problem = await runCycle(target, plan)
      tally.endings[plan.ending]++
      if (problem !== undefined) {
        tally.unexpected++
        if (tally.examples.length < 10) tally.examples.push(problem)
      }
      progress()
    }
  }
  await Promise.all(Array.from({ length: Math.min(options.concurrency, count) }, worker))
}

/** Polls `predicate` every 20 ms for up to `ms`; resolves with whether it came true. */
async function eventually (predicate: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (!predicate()) {
    if (Date.now() >= end) return false
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return true
}

/** The plugin's counts that must be back to nothing once no client is connected. */
function pluginCounts (app: FastifyInstance): { connections: number, users: number, topics: number, timers: number, slots: number } {
  const stats = app.secureWs.stats()
  return { connections: stats.connections, users: Object.keys(stats.users).length, topics: stats.topics, timers: stats.timers, slots: Object.keys(stats.store.slots).length }
}

const isIdle = (app: FastifyInstance): boolean => Object.values(pluginCounts(app)).every((n) => n === 0)

/**
 * Waits until the plugin has let go of every connection, then moves the store's clock a
 * minute on and waits for the sweep to drop the idle rate counters, so that two heap
 * measurements see the same state.
 */
async function settle (target: Target): Promise<void> {
  await eventually(() => isIdle(target.app), SETTLE_MS)
  target.skipStoreClock(RATE_COUNTER_IDLE_MS)
  await eventually(() => target.app.secureWs.stats().store.rateCounters === 0, SETTLE_MS)
}

/** Active handles that outlive a leak: ref'd timers and TCP handles (unref'd timers are not listed). */
export function activeResources (): { timeouts: number, tcp: number } {
  let timeouts = 0
  let tcp = 0
  for (const name of process.getActiveResourcesInfo()) {
    if (name === 'Timeout') timeouts++
    else if (name.startsWith('TCP')) tcp++
  }
  return { timeouts, tcp }
}

/** Listeners by event name. */
export function listenerCounts (emitter: EventEmitter): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const name of emitter.eventNames()) counts[String(name)] = emitter.listenerCount(name)
  return counts
}

/** Heap used after full collections, with a turn of the event loop between them for finalisers. */
export async function heapAfterGc (gc: () => void): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
  return process.memoryUsage().heapUsed
}

const sameCounts = (a: Record<string, number>, b: Record<string, number>): boolean => JSON.stringify(a) === JSON.stringify(b)
const fitsIn = (now: { timeouts: number, tcp: number }, before: { timeouts: number, tcp: number }): boolean => now.timeouts <= before.timeouts && now.tcp <= before.tcp
const describeResources = (now: { timeouts: number, tcp: number }, before: { timeouts: number, tcp: number }): string =>
  `Timeout ${now.timeouts} (start ${before.timeouts}), TCP ${now.tcp} (start ${before.tcp})`
const connectionsOf = (app: FastifyInstance): Promise<number> => new Promise((resolve, reject) => {
  app.server.getConnections((err, count) => { if (err) reject(err); else resolve(count) })
})
export const mb = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(1)} MB`

/** Runs the soak and every check; never throws for a failed check, only reports it. */
export async function runSoak (options: SoakOptions): Promise<SoakReport> {
  const tolerance = options.heapTolerance ?? HEAP_TOLERANCE
  const checks: Check[] = []
  const check = (name: string, ok: boolean, detail: string): void => { checks.push({ name, ok, detail }) }

  const beforeServer = activeResources()
  const target = await startTarget(options.users)
  const { app } = target
  const listening = activeResources()
  const serverListeners = listenerCounts(app.server)
  // The plugin keeps its sockets out of ws's client set; this set sees every socket
  // @fastify/websocket upgrades until it closes.
  const openSockets = new Set<unknown>()
  app.websocketServer.on('connection', (socket: { once: (event: 'close', listener: () => void) => void }) => {
    openSockets.add(socket)
    socket.once('close', () => { openSockets.delete(socket) })
  })
  const wssListeners = listenerCounts(app.websocketServer)

  const total = options.warmupCycles + options.cycles
  const every = options.progressEvery ?? 10_000
  let done = 0
  const progress = (): void => { if (++done % every === 0) options.onProgress?.(done, total) }

  const warmup: Tally = { endings: emptyEndings(), unexpected: 0, examples: [] }
  await runCycles(target, options, 0, options.warmupCycles, warmup, progress)
  await settle(target)
  const heapStart = options.gc === undefined ? undefined : await heapAfterGc(options.gc)

  const measured: Tally = { endings: emptyEndings(), unexpected: 0, examples: warmup.examples }
  const started = process.hrtime.bigint()
  await runCycles(target, options, options.warmupCycles, options.cycles, measured, progress)
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  await settle(target)

  const unexpected = warmup.unexpected + measured.unexpected
  check('every cycle ended as expected (frames, close code and reason)', unexpected === 0, `${unexpected} of ${total} did not`)
  const counts = pluginCounts(app)
  check('stats(): 0 connections, users, topics, expiry timers, store slots', isIdle(app), JSON.stringify(counts))
  const rateCounters = app.secureWs.stats().store.rateCounters
  check('store: rate counters dropped a minute after their last message', rateCounters === 0, `${rateCounters} left`)
  const nowServer = listenerCounts(app.server)
  check('HTTP server: listeners as at the start (upgrade, connection, ...)', sameCounts(nowServer, serverListeners), `${JSON.stringify(nowServer)} (start ${JSON.stringify(serverListeners)})`)
  const nowWss = listenerCounts(app.websocketServer)
  const wsClients = openSockets.size + app.websocketServer.clients.size
  check('ws server: no socket left open, listeners as at the start', wsClients === 0 && sameCounts(nowWss, wssListeners), `${wsClients} clients, ${JSON.stringify(nowWss)} (start ${JSON.stringify(wssListeners)})`)
  const sockets = await connectionsOf(app)
  check('HTTP server: no sockets held', sockets === 0, `${sockets} held`)
  await eventually(() => fitsIn(activeResources(), listening), SETTLE_MS)
  const idle = activeResources()
  check('active resources while listening with no clients: no more than at listen', fitsIn(idle, listening), describeResources(idle, listening))

  let heapEnd: number | undefined
  if (options.gc !== undefined && heapStart !== undefined) {
    heapEnd = await heapAfterGc(options.gc)
    const uncollected = target.admitted() - target.collected()
    check('admitted connections: every one garbage-collected', uncollected === 0, `${target.collected()} of ${target.admitted()} collected`)
    const growth = (heapEnd - heapStart) / heapStart
    check(`heap after GC: at most ${Math.round(tolerance * 100)}% above the warm start`, heapEnd <= heapStart * (1 + tolerance),
      `${mb(heapStart)} -> ${mb(heapEnd)} (${growth >= 0 ? '+' : ''}${(growth * 100).toFixed(1)}%)`)
  }

  await app.close()
  await eventually(() => fitsIn(activeResources(), beforeServer), SETTLE_MS)
  const closed = activeResources()
  check('active resources after the server closed: no more than before it started', fitsIn(closed, beforeServer), describeResources(closed, beforeServer))

  return {
    cycles: options.cycles,
    warmupCycles: options.warmupCycles,
    concurrency: options.concurrency,
    users: options.users,
    seconds,
    cyclesPerSecond: options.cycles / seconds,
    endings: measured.endings,
    heapStart,
    heapEnd,
    checks,
    unexpected,
    unexpectedExamples: measured.examples,
    ok: checks.every((c) => c.ok)
  }
}
