/**
 * Drives frames at the fuzz server over a few real connections, each with a window of frames
 * in flight, and judges every answer against the oracle. A frame that must close the
 * connection is sent alone, once the frames before it are answered, so each close is
 * attributed to exactly one frame; the lane then reconnects. A frame with no answer within
 * `hangMs` is a failure (and its connection is cut off and replaced).
 */
import WebSocket from 'ws'
import { Failures, describeFrame } from './failures.js'
import { frameStream } from './frames.js'
import { RATE_LIMITED_MESSAGE, expectedOutcome, isDocumentedError, type Expected, type Frame, type OutcomeKind } from './oracle.js'
import { FUZZ_ORIGIN, startFuzzServer, type FuzzServer } from './server.js'

export interface FuzzOptions {
  frames: number
  seed: number
  /** Connections sending at once. @default 4 */
  connections?: number
  /** Frames in flight per connection. @default 32 */
  window?: number
  /** How long a frame may go unanswered before it counts as a hang. @default 10000 */
  hangMs?: number
  /** Called every `progressEveryMs` while the run goes on. */
  onProgress?: (progress: FuzzProgress) => void
  progressEveryMs?: number
}

export interface FuzzProgress {
  answered: number
  frames: number
  elapsedMs: number
  failures: number
}

export interface FuzzResult {
  frames: number
  answered: number
  elapsedMs: number
  framesPerSecond: number
  outcomes: Partial<Record<OutcomeKind, number>>
  /** Connections opened, reconnects after a close included. */
  connections: number
  failures: Failures
}

interface Planned {
  frame: Frame
  expected: Expected
}

interface InFlight extends Planned {
  sentAt: number
}

const CONNECT_ATTEMPTS = 3
const OBJECT_PROTOTYPE_NAMES = new Set(Object.getOwnPropertyNames(Object.prototype))

function describeExpected (expected: Expected): string {
  return 'reply' in expected ? JSON.stringify(expected.reply) : `close ${expected.close.code} ${JSON.stringify(expected.close.reason)}`
}

/** What a string becomes once encoded as UTF-8: each lone surrogate turns into U+FFFD. */
function wellFormed (s: string): string {
  return s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd')
}

/** The reply the oracle predicts, field for field (a lone surrogate may arrive as U+FFFD). */
function isExpectedReply (reply: unknown, expected: Readonly<Record<string, string>>): boolean {
  if (reply === null || typeof reply !== 'object' || Array.isArray(reply)) return false
  const keys = Object.keys(reply)
  if (keys.length !== Object.keys(expected).length) return false
  return keys.every((key) => {
    const got = (reply as Record<string, unknown>)[key]
    const want = expected[key]
    return want !== undefined && (got === want || got === wellFormed(want))
  })
}

class Run {
  readonly outcomes: Partial<Record<OutcomeKind, number>> = {}
  answered = 0
  issued = 0
  connections = 0
  readonly done: Promise<void>
  #finish!: () => void
  readonly #source: Iterator<Frame>
  #lanesGivenUp = 0

  constructor (readonly server: FuzzServer, readonly failures: Failures, readonly options: Required<Omit<FuzzOptions, 'onProgress'>>) {
    this.#source = frameStream(options.seed)
    this.done = new Promise((resolve) => { this.#finish = resolve })
  }

  take (): Planned | undefined {
    if (this.issued >= this.options.frames) return undefined
    this.issued++
    const frame = this.#source.next().value as Frame
    return { frame, expected: expectedOutcome(frame) }
  }

  /** When no lane can connect any more, the run ends with the frames it could send. */
  laneGaveUp (): void {
    if (++this.#lanesGivenUp === this.options.connections) this.#finish()
  }

  /** One frame has had its outcome: `kind` when it was a defined one, undefined when a failure was recorded. */
  settle (kind: OutcomeKind | undefined): void {
    if (kind !== undefined) this.outcomes[kind] = (this.outcomes[kind] ?? 0) + 1
    this.answered++
    if (this.answered === this.options.frames) this.#finish()
  }
}

class Lane {
  #ws: WebSocket | undefined
  #opened = false
  #connectingSince = 0
  #failedConnects = 0
  #inFlight: InFlight[] = []
  /** A frame that closes the connection, waiting for the frames before it to be answered. */
  #held: Planned | undefined
  #closerSent = false
  #rateLimited = false
  /** Cut off by the watchdog, which has reported why; its close says nothing more. */
  #abandoned = false
  #stopping = false
  #stopped: (() => void) | undefined

  constructor (readonly run: Run) {}

  connect (): void {
    const { server } = this.run
    const ws = new WebSocket(`${server.url}?token=${server.token()}`, { origin: FUZZ_ORIGIN, perMessageDeflate: false })
    this.#ws = ws
    this.#opened = false
    this.#closerSent = false
    this.#rateLimited = false
    this.#abandoned = false
    this.#connectingSince = Date.now()
    ws.on('open', () => {
      this.#opened = true
      this.#connectingSince = 0
      this.#failedConnects = 0
      this.run.connections++
      this.pump()
    })
    ws.on('message', (data, isBinary) => this.#onAnswer(data as Buffer, isBinary))
    ws.on('close', (code, reason) => this.#onClose(code, reason.toString()))
    // ws emits 'close' after every 'error'; that is where it is handled.
    ws.on('error', () => {})
  }

  pump (): void {
    const ws = this.#ws
    if (this.#stopping || ws === undefined || ws.readyState !== WebSocket.OPEN || this.#closerSent || this.#rateLimited) return
    for (;;) {
      if (this.#held !== undefined) {
        if (this.#inFlight.length > 0) return
        this.#send(ws, this.#held)
        this.#held = undefined
        this.#closerSent = true
        return
      }
      if (this.#inFlight.length >= this.run.options.window) return
      const next = this.run.take()
      if (next === undefined) return
      if ('close' in next.expected) this.#held = next
      else this.#send(ws, next)
    }
  }

  #send (ws: WebSocket, planned: Planned): void {
    this.#inFlight.push({ ...planned, sentAt: Date.now() })
    ws.send(planned.frame.bytes, { binary: planned.frame.binary })
  }

  #onAnswer (data: Buffer, isBinary: boolean): void {
    const { failures } = this.run
    const head = this.#inFlight.shift()
    const got = data.toString()
    if (head === undefined) {
      failures.add('answer to no frame', got.slice(0, 300))
      return
    }
    let reply: unknown
    try {
      reply = isBinary ? undefined : JSON.parse(got)
    } catch {}
    const { expected, frame } = head
    if ('reply' in expected && isExpectedReply(reply, expected.reply)) {
      this.run.settle(expected.kind)
    } else if (isExpectedReply(reply, { type: 'error', message: RATE_LIMITED_MESSAGE })) {
      this.#rateLimited = true
      this.run.settle('error:rate-limited')
    } else {
      const message = (reply as { message?: unknown } | undefined)?.message
      const kind = typeof message === 'string' && !isDocumentedError(message) ? 'error text outside the documented set' : 'answer other than the expected one'
      failures.add(kind, `${describeFrame(frame.bytes, frame.binary)}\n  expected ${describeExpected(expected)}\n  got ${got.slice(0, 300)}`)
      this.run.settle(undefined)
    }
    this.pump()
  }

  #onClose (code: number, reason: string): void {
    const { failures } = this.run
    const inFlight = this.#inFlight.splice(0)
    const closer = this.#closerSent ? inFlight[0] : undefined
    // Stopping aborts a handshake under way; that is no failure.
    if (!this.#opened && !this.#stopping) this.#failedConnects++
    if (this.#abandoned) {
      // The watchdog reported it and settled what was in flight.
    } else if (!this.#opened) {
      if (!this.#stopping) failures.add('could not connect', `close ${code} ${JSON.stringify(reason)}`)
    } else if (closer !== undefined && 'close' in closer.expected && inFlight.length === 1 &&
        closer.expected.close.code === code && closer.expected.close.reason === reason) {
      this.run.settle(closer.expected.kind)
    } else if (this.#rateLimited && code === 1008 && reason === 'Rate limit exceeded') {
      for (let i = 0; i < inFlight.length; i++) this.run.settle('close:1008 rate limited')
    } else if (inFlight.length > 0 || !this.#stopping) {
      const first = inFlight[0]
      failures.add('close other than the expected one', `close ${code} ${JSON.stringify(reason)} with ${inFlight.length} frame(s) in flight` +
        (first === undefined ? '' : `; first ${describeFrame(first.frame.bytes, first.frame.binary)}, expected ${describeExpected(first.expected)}`))
      for (let i = 0; i < inFlight.length; i++) this.run.settle(undefined)
    }
    if (this.#stopping) {
      this.#stopped?.()
    } else if (this.#failedConnects >= CONNECT_ATTEMPTS) {
      this.#giveUp()
    } else {
      this.connect()
    }
  }

  /** This lane cannot connect: its held frame is lost, and the other lanes carry on without it. */
  #giveUp (): void {
    this.#stopping = true
    if (this.#held !== undefined) {
      this.#held = undefined
      this.run.settle(undefined)
    }
    this.run.laneGaveUp()
  }

  /** Cuts off a connection whose oldest frame, or whose handshake, has waited longer than `hangMs`. */
  watch (now: number): void {
    const ws = this.#ws
    if (ws === undefined || this.#stopping || this.#abandoned) return
    const head = this.#inFlight[0]
    const { failures, options } = this.run
    if (head !== undefined && now - head.sentAt > options.hangMs) {
      failures.add(`no answer within ${options.hangMs} ms`, `${describeFrame(head.frame.bytes, head.frame.binary)}, expected ${describeExpected(head.expected)}; ${this.#inFlight.length} frame(s) in flight`)
      for (let i = 0; i < this.#inFlight.length; i++) this.run.settle(undefined)
      this.#inFlight = []
    } else if (this.#connectingSince !== 0 && now - this.#connectingSince > options.hangMs) {
      failures.add(`no handshake within ${options.hangMs} ms`, '')
    } else {
      return
    }
    this.#abandoned = true
    ws.terminate()
  }

  /** Closes the connection once the run is over; resolves at its close, or cuts it off after `hangMs`. */
  async stop (): Promise<void> {
    const ws = this.#ws
    if (this.#stopping || ws === undefined || ws.readyState === WebSocket.CLOSED) {
      this.#stopping = true
      return
    }
    this.#stopping = true
    const closed = new Promise<void>((resolve) => { this.#stopped = resolve })
    ws.close(1000)
    const timer = setTimeout(() => {
      this.run.failures.add('no close handshake at the end of the run', '')
      ws.terminate()
    }, this.run.options.hangMs)
    await closed
    clearTimeout(timer)
  }
}

async function waitFor (predicate: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > end) return false
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return true
}

/** Starts the fuzz server, sends `frames` frames at it, checks what is left, and stops it. */
export async function fuzz (options: FuzzOptions): Promise<FuzzResult> {
  const settings = { connections: 4, window: 32, hangMs: 10_000, progressEveryMs: 5_000, ...options }
  const failures = new Failures()
  const server = await startFuzzServer(failures)
  const run = new Run(server, failures, settings)
  const started = performance.now()
  const lanes = Array.from({ length: settings.connections }, () => new Lane(run))
  const watchdog = setInterval(() => { for (const lane of lanes) lane.watch(Date.now()) }, 250)
  const progress = setInterval(() => {
    options.onProgress?.({ answered: run.answered, frames: settings.frames, elapsedMs: performance.now() - started, failures: failures.total })
  }, settings.progressEveryMs)
  try {
    for (const lane of lanes) lane.connect()
    if (settings.frames > 0) await run.done
    const elapsedMs = performance.now() - started
    clearInterval(progress)
    await Promise.all(lanes.map((lane) => lane.stop()))
    // Each slot is freed when its socket ends; none may stay behind.
    if (!await waitFor(() => server.app.secureWs.stats().connections === 0, settings.hangMs)) {
      failures.add('connections still held after every client closed', JSON.stringify(server.app.secureWs.stats()))
    }
    const added = Object.getOwnPropertyNames(Object.prototype).filter((name) => !OBJECT_PROTOTYPE_NAMES.has(name))
    if (added.length > 0) failures.add('Object.prototype polluted', added.join(', '))
    return {
      frames: settings.frames,
      answered: run.answered,
      elapsedMs,
      framesPerSecond: run.answered / (elapsedMs / 1000),
      outcomes: run.outcomes,
      connections: run.connections,
      failures
    }
  } finally {
    clearInterval(watchdog)
    clearInterval(progress)
    for (const lane of lanes) await lane.stop()
    await server.close()
  }
}
