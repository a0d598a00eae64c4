/**
 * What the bench servers and the load generator agree on: the origin the servers allow,
 * the route, the frames, and the lines a server prints for the orchestrator.
 */
import { join } from 'node:path'
import { writeHeapSnapshot } from 'node:v8'

/** An integer setting from the environment, or `fallback` when unset; out of range throws naming it. */
export function readInt (name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer from ${min} to ${max}`)
  return n
}

/** The only origin every target admits; the load generator sends it on every upgrade. */
export const BENCH_ORIGIN = 'https://app.example.com'

/** Route of the Fastify and ws targets: the session id is the user's id (`u<n>`). */
export const ROUTE = '/ws/:sessionId'

export const PING_FRAME = '{"type":"ping"}'
export const PONG_FRAME = '{"type":"pong"}'

export interface ServerEnv {
  port: number
  secret: string
}

/** PORT and JWT_SECRET, as the orchestrator passes them. */
export function readServerEnv (): ServerEnv {
  const port = Number(process.env.PORT)
  if (!Number.isInteger(port) || port <= 0 || port >= 32768) throw new Error(`PORT must be a port below 32768, got "${process.env.PORT}"`)
  const secret = process.env.JWT_SECRET
  if (secret === undefined || secret === '') throw new Error('JWT_SECRET is required')
  return { port, secret }
}

export interface MemoryLine {
  heapUsed: number
  external: number
  arrayBuffers: number
}

/**
 * Prints `ready` for the orchestrator, and on SIGUSR2 runs a full collection (the server runs
 * with --expose-gc) and prints `mem {...}`, after which the orchestrator reads VmRSS. With
 * HEAP_SNAPSHOT_DIR set it also writes a heap snapshot there (1.heapsnapshot, 2...).
 * SIGTERM exits through process.exit so that `--cpu-prof` gets to write its profile.
 */
export function announceReady (): void {
  // For investigating memory: each SIGUSR2 also writes a heap snapshot there.
  const snapshotDir = process.env.HEAP_SNAPSHOT_DIR
  let snapshots = 0
  process.on('SIGUSR2', () => {
    const gc = (globalThis as { gc?: () => void }).gc
    gc?.()
    gc?.()
    if (snapshotDir !== undefined && snapshotDir !== '') writeHeapSnapshot(join(snapshotDir, `${++snapshots}.heapsnapshot`))
    const usage = process.memoryUsage()
    const line: MemoryLine = { heapUsed: usage.heapUsed, external: usage.external, arrayBuffers: usage.arrayBuffers }
    process.stdout.write(`mem ${JSON.stringify(line)}\n`)
  })
  process.on('SIGTERM', () => process.exit(0))
  // Every target enters the measured windows after one full collection, as a long-running
  // server has. Without it, V8 state depends on whether startup happened to trigger one: a
  // full collection makes `process.nextTick` (called by net for every read) take a slower
  // path for the rest of the process, ~1 us per message, so a target with a small startup
  // heap looked cheaper than it will be in production (profile in bench/README.md).
  ;(globalThis as { gc?: () => void }).gc?.()
  process.stdout.write('ready\n')
}

/** Starts a server's async main, failing loudly so the orchestrator sees the error. */
export function run (main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  })
}

/**
 * The app work every unsecured target does with a frame: parse JSON, dispatch on `type`,
 * answer. Returns the reply, if any. Shared so that every target does exactly the same.
 */
export function answerPlainly (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): string | undefined {
  if (isBinary) return undefined
  let message: { type?: unknown, payload?: { text?: unknown } }
  try {
    message = JSON.parse(data.toString())
  } catch {
    return undefined
  }
  switch (message?.type) {
    case 'ping':
      return JSON.stringify({ type: 'pong' })
    case 'say':
      return JSON.stringify({ type: 'said', text: message.payload?.text })
    default:
      return undefined
  }
}
