/**
 * The attack run's flood generator (bench/attack/flood.ts), run as the run runs it, against a
 * raw TCP server that answers as the test says: it must count what it was answered, read the
 * close code, and never write or end a socket after its upgrade request.
 */
import net from 'node:net'
import { once } from 'node:events'
import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import { createVerifier } from 'fast-jwt'
import { Flood, killAll } from '../bench/attack/children.js'
import type { FloodKind, PhaseCounts } from '../bench/attack/protocol.js'
import { eventually, within } from './helpers.js'

const SECRET = 'attack-flood-test-secret-0123456789abcdef'
const SWITCHING = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n'
const REASON = 'Invalid or expired authentication token'

/** One connection as the fake server saw it. */
interface Seen {
  socket: net.Socket
  head: string
  /** Bytes the client sent after its request head. */
  extraBytes: number
  clientEnded: boolean
}

/** Answers the n-th connection (from 1) once its request head is complete. */
type Answer = (seen: Seen, n: number) => void

async function fakeServer (t: { teardown: (fn: () => unknown) => void }, answer: Answer): Promise<{ port: number, seen: Seen[] }> {
  const seen: Seen[] = []
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    const entry: Seen = { socket, head: '', extraBytes: 0, clientEnded: false }
    let buffered = ''
    socket.on('data', (chunk) => {
      if (entry.head !== '') {
        entry.extraBytes += chunk.length
        return
      }
      buffered += chunk.toString('latin1')
      const end = buffered.indexOf('\r\n\r\n')
      if (end === -1) return
      entry.head = buffered.slice(0, end)
      entry.extraBytes += buffered.length - end - 4
      seen.push(entry)
      answer(entry, seen.length)
    })
    socket.on('end', () => { entry.clientEnded = true })
    socket.on('error', () => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    for (const entry of seen) entry.socket.destroy()
    server.close()
  })
  return { port: (server.address() as net.AddressInfo).port, seen }
}

function closeFrame (code: number, reason: string): Buffer {
  const body = Buffer.concat([Buffer.from([code >> 8, code & 0xff]), Buffer.from(reason)])
  return Buffer.concat([Buffer.from([0x88, body.length]), body])
}

function startFlood (t: { teardown: (fn: () => unknown) => void }, port: number, attempts: number): Flood {
  const flood = new Flood({ port, secret: SECRET, concurrency: 1, maxOpenPerPhase: 100, maxAttemptsPerPhase: attempts }, undefined)
  t.teardown(() => killAll([flood.child]))
  return flood
}

/** The phase's counts once `done` holds of them, or the last counts seen after 10 s. */
async function phaseWhen (flood: Flood, done: (counts: PhaseCounts) => boolean): Promise<PhaseCounts> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const counts = (await flood.request({ type: 'snapshot' })).phases[0]
    if (counts !== undefined && (done(counts) || Date.now() > deadline)) return counts
    if (Date.now() > deadline) throw new Error('the flood started no phase')
    await delay(25)
  }
}

function start (flood: Flood, kind: FloodKind, hold: boolean): void {
  flood.send({ type: 'start', phase: 'p', kind, localAddress: '127.0.0.1', hold })
}

const tokenOf = (head: string): string => /^GET \/ws\/sessions\/alice-1\?token=([^ ]+) HTTP\/1\.1\r\n/.exec(head)?.[1] ?? ''
const originOf = (head: string): string => /\r\nOrigin: ([^\r]+)/.exec(`\r\n${head}`)?.[1] ?? ''

t.test('bad token: counts 101 with its close code and 429 with Retry-After, holds the 101s without a byte or a FIN', async (t) => {
  const { port, seen } = await fakeServer(t, (entry, n) => {
    if (n <= 3) {
      // The close frame split over two writes, as TCP may deliver it.
      const frame = closeFrame(4401, REASON)
      entry.socket.write(SWITCHING + frame.subarray(0, 1).toString('latin1'), 'latin1')
      setTimeout(() => entry.socket.write(frame.subarray(1)), 20)
    } else {
      entry.socket.end(`HTTP/1.1 429 Too Many Requests\r\n${n === 6 ? '' : 'Retry-After: 42\r\n'}Content-Length: 0\r\n\r\n`)
    }
  })
  const flood = startFlood(t, port, 6)
  start(flood, 'badToken', true)
  const counts = await phaseWhen(flood, (c) => c.attempts === 6 && (c.statuses['429'] ?? 0) === 3 && c.closeCodes['4401'] === 3 && c.open === 3)

  t.same(counts.statuses, { 101: 3, 429: 3 })
  t.same(counts.closeCodes, { 4401: 3 })
  t.same(counts.retryAfter, { min: 42, max: 42, missing: 1 })
  t.equal(counts.noResponse, 0)
  t.same(counts.errors, {})
  t.equal(counts.endedByServer['429']?.count, 3, 'the server ended the 429 sockets')
  t.equal(counts.endedByServer['101'], undefined, 'no 101 socket ended yet')
  t.equal(counts.capReachedAfterMs, null)

  t.equal(seen.length, 6)
  const tokens = seen.map((entry) => tokenOf(entry.head))
  t.equal(new Set(tokens).size, 6, 'a fresh token each time')
  const verify = createVerifier({ key: SECRET, algorithms: ['HS256'] })
  for (const token of tokens) t.throws(() => verify(token), { code: 'FAST_JWT_INVALID_SIGNATURE' }, 'well formed, wrongly signed')
  t.same(seen.map((entry) => originOf(entry.head)), Array(6).fill(`http://127.0.0.1:${port}`))

  // Long enough for a client that answers the close frame to have done so.
  await delay(200)
  t.same(seen.slice(0, 3).map((entry) => [entry.extraBytes, entry.clientEnded]), [[0, false], [0, false], [0, false]], 'nothing after the request, no FIN')

  for (const entry of seen.slice(0, 3)) entry.socket.end()
  const ended = await phaseWhen(flood, (c) => c.open === 0)
  t.equal(ended.endedByServer['101']?.count, 3, 'each 101 socket closed once the server ended it')
  t.ok(ended.endedByServer['101']!.p50! >= 100, 'held until the server ended it')

  await within(flood.finish(), 10_000, 'the flood generator ending')
  t.equal(flood.child.exitCode, 0)
})

t.test('bad origin: a valid token with a refused Origin; without hold, each socket is ended once its close frame is read', async (t) => {
  const { port, seen } = await fakeServer(t, (entry) => entry.socket.write(Buffer.concat([Buffer.from(SWITCHING, 'latin1'), closeFrame(1008, 'Origin not allowed')])))
  const flood = startFlood(t, port, 3)
  start(flood, 'badOrigin', false)
  const counts = await phaseWhen(flood, (c) => c.attempts === 3 && c.open === 0)

  t.same(counts.statuses, { 101: 3 })
  t.same(counts.closeCodes, { 1008: 3 })
  t.same(counts.endedByServer, {}, 'ended by us, so not counted as the server\'s doing')
  await eventually(() => seen.length === 3 && seen.every((entry) => entry.clientEnded))
  t.same(seen.map((entry) => entry.clientEnded), [true, true, true])
  const verify = createVerifier({ key: SECRET, algorithms: ['HS256'] })
  t.equal(verify(tokenOf(seen[0]!.head)).sub, 'alice')
  t.same(seen.map((entry) => originOf(entry.head)), Array(3).fill('http://attacker.example'))
  t.equal(new Set(seen.map((entry) => entry.head)).size, 1, 'the same request each time')

  await within(flood.finish(), 10_000, 'the flood generator ending')
})

t.test('at its cap, a phase waits for the server to end a socket before it opens another', async (t) => {
  const { port, seen } = await fakeServer(t, (entry) => entry.socket.write(Buffer.concat([Buffer.from(SWITCHING, 'latin1'), closeFrame(4401, REASON)])))
  const flood = new Flood({ port, secret: SECRET, concurrency: 4, maxOpenPerPhase: 5, maxAttemptsPerPhase: 100 }, undefined)
  t.teardown(() => killAll([flood.child]))
  start(flood, 'badToken', true)
  const capped = await phaseWhen(flood, (c) => c.open === 5 && c.capReachedAfterMs !== null)
  await delay(200)
  t.equal(seen.length, 5, 'no sixth connection while five are held')
  t.equal(capped.attempts, 5)

  seen[0]!.socket.end()
  await eventually(() => seen.length === 6)
  t.equal(seen.length, 6, 'one more once the server ended one')
  await within(flood.finish(), 10_000, 'the flood generator ending')
})
