/**
 * The flood generator of `npm run attack`, a child process of bench/attack.ts (its own
 * process, so the legitimate user's timings are not taken inside this busy loop).
 *
 * Raw TCP sockets from one source address, each writing one upgrade request and then never
 * writing again: no answer to the close frame, no FIN. A socket stays open until the server
 * ends it. Incoming bytes are read and dropped: the 101 or 429 and the close frame are a few
 * dozen bytes, which the kernel would take into its receive buffer whether or not we read, so
 * to the server this client is the same as one that never reads; reading is how we see the
 * status, the close code and the server's FIN.
 */
import { connect, type Socket } from 'node:net'
import { createSigner } from 'fast-jwt'
import { REFUSED_ORIGIN, SESSION_PATH, USER_ID, type FloodCommand, type FloodConfig, type FloodKind, type FloodReport, type FloodSnapshot, type Lifetimes, type PhaseCounts } from './protocol.js'

const STATUS_INTERVAL_MS = 100
const MAX_HEAD_BYTES = 8192
const HEAD_END = Buffer.from('\r\n\r\n')
const CLOSE_OPCODE_BYTE = 0x88
const TOKEN_LIFETIME_MS = 3_600_000

const config = JSON.parse(process.env.ATTACK_FLOOD_CONFIG ?? 'null') as FloodConfig | null
if (config === null) throw new Error('ATTACK_FLOOD_CONFIG is required (bench/attack.ts starts this process)')

const host = `127.0.0.1:${config.port}`
const allowedOrigin = `http://${host}`
// Signed with another key: well formed, so the server gets as far as checking the signature.
// A fresh `jti` each time keeps the server's verification cache from helping.
const signForged = createSigner({ key: 'not-the-server-secret-0123456789abcdef', algorithm: 'HS256', expiresIn: TOKEN_LIFETIME_MS })
const validToken = createSigner({ key: config.secret, algorithm: 'HS256', expiresIn: TOKEN_LIFETIME_MS })({ sub: USER_ID })
let forged = 0

function upgradeRequest (token: string, origin: string): string {
  return `GET ${SESSION_PATH}?token=${token} HTTP/1.1\r\n` +
    `Host: ${host}\r\n` +
    'Upgrade: websocket\r\n' +
    'Connection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
    'Sec-WebSocket-Version: 13\r\n' +
    `Origin: ${origin}\r\n\r\n`
}

const badOriginRequest = upgradeRequest(validToken, REFUSED_ORIGIN)
const requests: Record<FloodKind, () => string> = {
  badToken: () => upgradeRequest(signForged({ sub: USER_ID, jti: String(++forged) }), allowedOrigin),
  badOrigin: () => badOriginRequest
}

function bump (counts: Record<string, number>, key: string): void {
  counts[key] = (counts[key] ?? 0) + 1
}

function summarise (values: number[]): Lifetimes {
  if (values.length === 0) return { count: 0, p50: null, max: null }
  const sorted = [...values].sort((a, b) => a - b)
  return { count: sorted.length, p50: sorted[Math.floor(sorted.length / 2)]!, max: sorted[sorted.length - 1]! }
}

class Phase {
  readonly counts: PhaseCounts
  readonly request: () => string
  readonly hold: boolean
  readonly lifetimes: Record<string, number[]> = {}

  constructor (command: Extract<FloodCommand, { type: 'start' }>) {
    this.request = requests[command.kind]
    this.hold = command.hold
    this.counts = {
      phase: command.phase,
      kind: command.kind,
      localAddress: command.localAddress,
      attempts: 0,
      statuses: {},
      noResponse: 0,
      errors: {},
      closeCodes: {},
      retryAfter: null,
      endedByServer: {},
      open: 0,
      maxOpen: 0,
      capReachedAfterMs: null,
      openAtSigterm: null,
      startedAt: Date.now(),
      stoppedAt: null
    }
  }

  snapshot (): PhaseCounts {
    const endedByServer: Record<string, Lifetimes> = {}
    for (const [status, values] of Object.entries(this.lifetimes)) endedByServer[status] = summarise(values)
    return { ...this.counts, statuses: { ...this.counts.statuses }, errors: { ...this.counts.errors }, closeCodes: { ...this.counts.closeCodes }, endedByServer }
  }
}

const phases: Phase[] = []
const sockets = new Set<Socket>()
let current: Phase | undefined
let opening = false
let inFlight = 0
// Off once the server got SIGTERM or we end the sockets ourselves: those ends are not the
// server's choice.
let recordLifetimes = true

function pump (): void {
  const phase = current
  if (phase === undefined) return
  while (opening && inFlight < config!.concurrency && phase.counts.open < config!.maxOpenPerPhase && phase.counts.attempts < config!.maxAttemptsPerPhase) {
    openOne(phase)
  }
  if (opening && phase.counts.open >= config!.maxOpenPerPhase) phase.counts.capReachedAfterMs ??= Date.now() - phase.counts.startedAt
}

function recordHead (phase: Phase, head: string): number {
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(head)
  const status = match === null ? 0 : Number(match[1])
  bump(phase.counts.statuses, match === null ? 'unparsed' : match[1]!)
  if (status === 429) {
    const retry = /\r\nretry-after:\s*(\d+)/i.exec(head)
    const seen = phase.counts.retryAfter ?? { min: Number.POSITIVE_INFINITY, max: 0, missing: 0 }
    if (retry === null) seen.missing++
    else {
      seen.min = Math.min(seen.min, Number(retry[1]))
      seen.max = Math.max(seen.max, Number(retry[1]))
    }
    phase.counts.retryAfter = seen
  }
  return status
}

function openOne (phase: Phase): void {
  const { counts } = phase
  counts.attempts++
  counts.open++
  counts.maxOpen = Math.max(counts.maxOpen, counts.open)
  inFlight++
  const socket = connect({ host: '127.0.0.1', port: config!.port, localAddress: counts.localAddress, allowHalfOpen: true, noDelay: true })
  sockets.add(socket)
  let pending: Buffer | undefined = Buffer.alloc(0)
  let status = 0
  let answeredAt = 0
  let frame: Buffer | undefined
  let ended = false

  const serverEnded = (): void => {
    if (ended || status === 0) return
    ended = true
    if (status === 101 && frame !== undefined) bump(counts.closeCodes, 'none')
    if (recordLifetimes) (phase.lifetimes[status] ??= []).push(performance.now() - answeredAt)
  }

  const endOurselves = (): void => {
    ended = true
    socket.destroy()
  }

  socket.write(phase.request())
  socket.on('data', (chunk: Buffer) => {
    if (pending !== undefined) {
      pending = Buffer.concat([pending, chunk])
      const end = pending.indexOf(HEAD_END)
      if (end === -1 && pending.length < MAX_HEAD_BYTES) return
      status = recordHead(phase, pending.subarray(0, end === -1 ? pending.length : end + 2).toString('latin1'))
      answeredAt = performance.now()
      inFlight--
      if (status === 101) frame = pending.subarray(end + HEAD_END.length)
      pending = undefined
      setImmediate(pump)
      chunk = Buffer.alloc(0)
      if (frame === undefined && !phase.hold) return endOurselves()
    }
    if (frame !== undefined) {
      frame = Buffer.concat([frame, chunk])
      if (frame.length < 2) return
      if (frame[0] !== CLOSE_OPCODE_BYTE) bump(counts.closeCodes, `opcode ${frame[0]! & 0x0f}`)
      else if ((frame[1]! & 0x7f) < 2) bump(counts.closeCodes, 'no code')
      else if (frame.length < 4) return
      else bump(counts.closeCodes, String(frame.readUInt16BE(2)))
      frame = undefined
      if (!phase.hold) endOurselves()
    }
  })
  socket.on('end', () => {
    serverEnded()
    socket.destroy()
  })
  socket.on('error', (err: NodeJS.ErrnoException) => {
    bump(counts.errors, err.code ?? err.message)
    // The listener is gone (the server is shutting down): stop rather than spin on refusals.
    if (err.code === 'ECONNREFUSED') opening = false
  })
  socket.on('close', () => {
    sockets.delete(socket)
    counts.open--
    if (status === 0) {
      inFlight--
      counts.noResponse++
    } else serverEnded()
    // A phase held at its cap may open again.
    setImmediate(pump)
  })
}

const ownCpuSeconds = (): number => {
  const { user, system } = process.cpuUsage()
  return (user + system) / 1e6
}

function snapshot (): FloodSnapshot {
  return { at: Date.now(), open: sockets.size, inFlight, cpuSeconds: ownCpuSeconds(), phases: phases.map((phase) => phase.snapshot()) }
}

function report (message: FloodReport): void {
  process.send!(message)
}

const statusTimer = setInterval(() => report({ type: 'status', at: Date.now(), open: sockets.size, inFlight, cpuSeconds: ownCpuSeconds() }), STATUS_INTERVAL_MS)

process.on('message', (command: FloodCommand) => {
  switch (command.type) {
    case 'start':
      if (current !== undefined) current.counts.stoppedAt ??= Date.now()
      current = new Phase(command)
      phases.push(current)
      opening = true
      pump()
      break
    case 'stop':
      opening = false
      if (current !== undefined) current.counts.stoppedAt ??= Date.now()
      report({ type: 'snapshot', snapshot: snapshot() })
      break
    case 'snapshot':
      report({ type: 'snapshot', snapshot: snapshot() })
      break
    case 'sigterm':
      recordLifetimes = false
      for (const phase of phases) phase.counts.openAtSigterm = phase.counts.open
      report({ type: 'snapshot', snapshot: snapshot() })
      break
    case 'finish':
      opening = false
      recordLifetimes = false
      if (current !== undefined) current.counts.stoppedAt ??= Date.now()
      clearInterval(statusTimer)
      for (const socket of sockets) socket.destroy()
      setImmediate(() => {
        report({ type: 'snapshot', snapshot: snapshot() })
        process.disconnect?.()
      })
      break
  }
})
// The orchestrator died without saying so: nothing must stay behind.
process.on('disconnect', () => {
  clearInterval(statusTimer)
  for (const socket of sockets) socket.destroy()
})
