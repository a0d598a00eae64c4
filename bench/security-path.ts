import type { FastifyRequest } from 'fastify'
import { Telemetry } from '../lib/telemetry.js'
/**
 * Figure 4: the security path in isolation, in-process, no network.
 *
 * Drives the plugin's real `Connection` (rate check, size check, secure JSON parse, envelope
 * check, dispatch, schema check, handler, compiled outbound serialisation) with a fake socket,
 * and compares it with the plain path an unsecured handler runs (JSON.parse, switch,
 * JSON.stringify). Both are fed through an EventEmitter `message` event with a Buffer, as ws
 * does. Prints one JSON line: CPU nanoseconds per message, median of several repetitions.
 *
 *   node --import tsx bench/security-path.ts [--iterations 100000] [--repetitions 5]
 */
import { EventEmitter } from 'node:events'
import { parseArgs } from 'node:util'
import { Type } from '@sinclair/typebox'
import type { FastifyBaseLogger } from 'fastify'
import type { WebSocket } from 'ws'
import { Connection } from '../lib/connection.js'
import { validateOptions } from '../lib/options.js'
import { Registry } from '../lib/registry.js'
import { compileRoute } from '../lib/route.js'
import { memoryStore } from '../lib/stores/memory.js'
import type { OutboundSchemas, SecureWsRouteOptions, SessionBase } from '../lib/types.js'
import { BENCH_ORIGIN, answerPlainly } from './common.js'

const { values: args } = parseArgs({
  options: {
    iterations: { type: 'string', default: '100000' },
    repetitions: { type: 'string', default: '5' }
  }
})
const ITERATIONS = Number(args.iterations)
const REPETITIONS = Number(args.repetitions)
if (!(Number.isSafeInteger(ITERATIONS) && ITERATIONS > 0 && ITERATIONS <= 1e7)) throw new Error('--iterations must be an integer from 1 to 1e7')
if (!(Number.isSafeInteger(REPETITIONS) && REPETITIONS > 0 && REPETITIONS <= 50)) throw new Error('--repetitions must be an integer from 1 to 50')

/** What the plugin needs of a ws socket: events, `send`, `readyState`, `close`. */
class FakeSocket extends EventEmitter {
  readonly OPEN = 1
  readyState = 1
  bytesSent = 0
  send (data: string): void {
    // Touch the frame so that producing it cannot be optimised away.
    this.bytesSent += data.length
  }

  close (): void {
    this.readyState = 3
    this.emit('close')
  }

  terminate (): void {
    this.close()
  }
}

const noop = (): void => {}
const silentLog = { level: 'silent', fatal: noop, error: noop, warn: noop, info: noop, debug: noop, trace: noop, silent: noop, child: () => silentLog } as unknown as FastifyBaseLogger

// The same route shape the secured bench server declares, plus a message with a payload schema.
const routeDef: SecureWsRouteOptions<SessionBase, OutboundSchemas> = {
  url: '/ws/:sessionId',
  resolveSession: ({ params }) => ({ ownerId: params.sessionId! }),
  outbound: { pong: Type.Object({}), said: Type.Object({ text: Type.String() }) },
  messages: (message) => ({
    ping: message((conn) => { conn.send('pong', {}) }),
    say: message({ payload: Type.Object({ text: Type.String({ maxLength: 500 }) }) }, (conn, { text }) => { conn.send('said', { text }) })
  })
}

const store = memoryStore()
const options = validateOptions({
  origins: [BENCH_ORIGIN],
  jwt: { key: 'security-path-bench-secret', algorithms: ['HS256'] },
  limits: { connectionsPerUser: 10, messagesPerSecond: 1e9, messagesPerMinute: 1e9 },
  store
})
const route = compileRoute(routeDef, routeDef.url, options)
const registry = new Registry(store, 0, 1000, new Telemetry(undefined, silentLog))

const securedSocket = new FakeSocket()
// The connection attaches itself to the socket and the registry.
// eslint-disable-next-line no-new -- constructed for those side effects alone
new Connection(securedSocket as unknown as WebSocket, route, registry, {
  id: 'c1',
  user: { id: 'u1', scopes: ['bench'], expiresAt: Date.now() + 3600_000 },
  session: { ownerId: 'u1' },
  params: { sessionId: 'u1' },
  counter: store.holdCounter('u1', route.limits),
  limitKey: 'u1',
  log: silentLog,
  request: { log: silentLog } as unknown as FastifyRequest,
  release: noop
})

// The plain path: what the baseline server does with a frame.
const plainSocket = new FakeSocket()
plainSocket.on('message', (data: Buffer, isBinary: boolean) => {
  const reply = answerPlainly(data, isBinary)
  if (reply !== undefined) plainSocket.send(reply)
})

const FRAMES = {
  ping: Buffer.from('{"type":"ping"}'),
  say: Buffer.from('{"type":"say","payload":{"text":"hello, world"}}')
}
const EXPECTED = { ping: '{"type":"pong"}', say: '{"type":"said","text":"hello, world"}' }

function check (socket: FakeSocket, frame: Buffer, expected: string): void {
  const before = socket.bytesSent
  socket.emit('message', frame, false)
  if (socket.bytesSent - before !== expected.length) throw new Error(`unexpected reply to ${frame.toString()} (${socket.bytesSent - before} bytes)`)
}

/**
 * CPU nanoseconds per message over `n` emits. CPU time rather than wall time, so that other
 * work on a shared machine does not count against either path (GC threads do count).
 */
function time (socket: FakeSocket, frame: Buffer, n: number): number {
  const start = process.cpuUsage()
  for (let i = 0; i < n; i++) socket.emit('message', frame, false)
  const used = process.cpuUsage(start)
  return ((used.user + used.system) * 1000) / n
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const results: Record<string, { securedNs: number, plainNs: number, overheadNs: number, ratio: number }> = {}
for (const kind of ['ping', 'say'] as const) {
  const frame = FRAMES[kind]
  // Both paths answer exactly what they should before anything is timed.
  check(securedSocket, frame, EXPECTED[kind])
  check(plainSocket, frame, EXPECTED[kind])
  time(securedSocket, frame, Math.min(ITERATIONS, 200_000))
  time(plainSocket, frame, Math.min(ITERATIONS, 200_000))
  const secured: number[] = []
  const plain: number[] = []
  // Interleaved, so drift (frequency, GC) hits both paths alike.
  for (let r = 0; r < REPETITIONS; r++) {
    secured.push(time(securedSocket, frame, ITERATIONS))
    plain.push(time(plainSocket, frame, ITERATIONS))
  }
  const securedNs = median(secured)
  const plainNs = median(plain)
  results[kind] = {
    securedNs: Math.round(securedNs),
    plainNs: Math.round(plainNs),
    overheadNs: Math.round(securedNs - plainNs),
    ratio: Math.round((securedNs / plainNs) * 100) / 100
  }
}

// Ends the connection through its real cleanup (expiry watch, registry, slot).
securedSocket.close()
if (registry.stats().connections !== 0 || registry.stats().timers !== 0) throw new Error('connection did not clean up')
store.close().then(() => {
  process.stdout.write(`${JSON.stringify({ iterations: ITERATIONS, repetitions: REPETITIONS, messages: results })}\n`)
}, (err: unknown) => { throw err })
