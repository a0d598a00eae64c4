/**
 * `npm run attack`: a bounded attack on the example server (examples/server.ts), everything
 * on 127.0.0.1, about 45 s in all. bench/README.md ("Attack run") explains how to read it.
 *
 * 0. warm-up, unmeasured: both refusal paths from 127.0.0.4, each socket ended by us as
 *    soon as it is answered, so that nothing stays open.
 * 1. baseline: the legitimate user alone; the server's descriptors and CPU rate.
 * 2. bad token: from 127.0.0.1, raw sockets send upgrades with forged tokens and an allowed
 *    Origin as fast as the server answers, and never answer anything: each socket stays open
 *    until the server ends it. Then up to DRAIN_MS for the server to end them.
 * 3. bad origin: from 127.0.0.3 (127.0.0.1 may be locked out by then, and that lockout must
 *    not hide whether these refusals count as auth failures), valid tokens, refused Origin.
 * 4. SIGTERM to the server while the last flood is still running; time to exit.
 *
 * Throughout, a legitimate user from 127.0.0.2 connects, pings and closes every 100 ms.
 * The flood generator (bench/attack/flood.ts) and the user (bench/attack/user.ts) are
 * processes of their own; this one samples /proc/<pid> every 100 ms and keeps the score.
 *
 * Environment: ATTACK_SECONDS (default 20, flood time, split between the two floods),
 * ATTACK_CONCURRENCY (default 128 upgrades awaiting an answer at once), ATTACK_MAX_OPEN
 * (default 6000 flood sockets held open per phase: bounds the run, not the attack),
 * ATTACK_PIN (default 0; 1: server on core 0, flood on core 1; unpinned, the server
 * can move away from a core that other work holds, and the flood, niced, gives way), ATTACK_OUT (default
 * bench/attack-results.json), ATTACK_SHUTDOWN_WAIT_SECONDS (default 10: how long a server
 * that got SIGTERM may take before it is killed), ATTACK_SERVER_LOG (keep the server's output
 * there).
 */
import { randomBytes } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, release, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { Flood, User, killAll } from './attack/children.js'
import { cpuClock, cpuSeconds, fdCount, rssBytes } from './attack/proc.js'
import type { FloodKind, PhaseCounts } from './attack/protocol.js'
import { analyse, summary, timeline, toJson, TARGETS, type ProcSample, type RunRecord, type Shutdown, type Window } from './attack/report.js'
import { freePort, startExampleServer, type ExampleServer } from './attack/server.js'

const ROOT = resolve(__dirname, '..')
const SAMPLE_INTERVAL_MS = 100
const BASELINE_MS = 3000
// A long-running server has compiled its refusal paths; a cold one spends its first few
// thousand upgrades in V8's compiler (bench/README.md), which would be charged to the flood.
const WARMUP_MS = 1500
const SETTLE_MS = 1000
// The contract ends a refused socket after a ~1 s grace; twice that is room enough.
const DRAIN_MS = 2000
const USER_INTERVAL_MS = 100
const USER_TIMEOUT_MS = 5000
const FLOOD_ADDRESS = '127.0.0.1'
const USER_ADDRESS = '127.0.0.2'
const SECOND_FLOOD_ADDRESS = '127.0.0.3'
const WARMUP_ADDRESS = '127.0.0.4'

function readNumber (name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!(Number.isFinite(value) && value >= min && value <= max)) throw new Error(`${name} must be a number from ${min} to ${max}, got "${raw}"`)
  return value
}

const FLOOD_SECONDS = readNumber('ATTACK_SECONDS', 20, 2, 300)
const CONCURRENCY = Math.round(readNumber('ATTACK_CONCURRENCY', 128, 1, 2000))
const MAX_OPEN = Math.round(readNumber('ATTACK_MAX_OPEN', 6000, 100, 8000))
const PIN = process.env.ATTACK_PIN === '1' && cpus().length >= 2
const OUT = resolve(ROOT, process.env.ATTACK_OUT ?? 'bench/attack-results.json')
const PHASE_MS = FLOOD_SECONDS * 1000 / 2
// Past the 5 s target, so a slow exit is timed rather than only failed.
const SHUTDOWN_WAIT_MS = readNumber('ATTACK_SHUTDOWN_WAIT_SECONDS', 10, 5, 120) * 1000

function gitDescribe (): string | null {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'lib', 'examples'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== ''
    return dirty ? `${commit} (lib/ or examples/ modified)` : commit
  } catch {
    return null
  }
}

/** Samples the server every SAMPLE_INTERVAL_MS until stopped or the server is gone. */
function startSampler (server: ExampleServer, flood: Flood, samples: ProcSample[]): () => void {
  const take = (): void => {
    try {
      samples.push({ at: Date.now(), fds: fdCount(server.pid), cpuSeconds: cpuSeconds(server.pid), rssBytes: rssBytes(server.pid), floodOpen: flood.open, floodInFlight: flood.inFlight, floodCpuSeconds: flood.cpuSeconds })
    } catch {
      // The server exited between two samples.
      clearInterval(timer)
    }
  }
  const timer = setInterval(take, SAMPLE_INTERVAL_MS)
  take()
  return () => clearInterval(timer)
}

class Windows {
  readonly list: Window[] = []
  constructor (private readonly server: ExampleServer) {}

  open (name: string): Window {
    const window: Window = { name, startAt: Date.now(), endAt: 0, cpuStart: cpuSeconds(this.server.pid), cpuEnd: 0, logStart: this.server.logBytes(), logEnd: 0 }
    this.list.push(window)
    return window
  }

  close (window: Window, counts?: PhaseCounts): void {
    window.cpuEnd = cpuSeconds(this.server.pid)
    window.endAt = Date.now()
    window.logEnd = this.server.logBytes()
    if (counts !== undefined) window.counts = counts
  }
}

function countsOf (phases: PhaseCounts[], name: string): PhaseCounts {
  const counts = phases.find((p) => p.phase === name)
  if (counts === undefined) throw new Error(`the flood generator has no phase ${name}`)
  return counts
}

async function floodPhase (flood: Flood, windows: Windows, name: string, kind: FloodKind, localAddress: string): Promise<Window> {
  const window = windows.open(name)
  flood.send({ type: 'start', phase: name, kind, localAddress, hold: true })
  await delay(PHASE_MS)
  return window
}

/** Both refusal paths, from an address of their own, every socket ended by us at once. */
async function warmUp (flood: Flood): Promise<void> {
  for (const kind of ['badToken', 'badOrigin'] as const) {
    flood.send({ type: 'start', phase: `warm-up ${kind}`, kind, localAddress: WARMUP_ADDRESS, hold: false })
    await delay(WARMUP_MS)
  }
  await flood.request({ type: 'stop' })
  const until = Date.now() + DRAIN_MS
  while (flood.open > 0 && Date.now() < until) await delay(SAMPLE_INTERVAL_MS)
  await delay(SETTLE_MS)
}

async function shutdownUnderFlood (server: ExampleServer, flood: Flood): Promise<Shutdown> {
  const snapshot = flood.request({ type: 'sigterm' })
  const sentAt = performance.now()
  const at = Date.now()
  server.child.kill('SIGTERM')
  const atSigterm = await snapshot
  const timeout = delay(SHUTDOWN_WAIT_MS).then(() => null)
  const exit = await Promise.race([server.exited, timeout])
  const floodOpenAtSigterm = atSigterm.phases.reduce((sum, p) => sum + (p.openAtSigterm ?? 0), 0)
  if (exit === null) {
    server.child.kill('SIGKILL')
    await server.exited
    return { at, floodOpenAtSigterm, exitCode: null, signal: 'SIGKILL', seconds: SHUTDOWN_WAIT_MS / 1000, killed: true }
  }
  return { at, floodOpenAtSigterm, exitCode: exit.code, signal: exit.signal, seconds: (exit.at - sentAt) / 1000, killed: false }
}

async function main (): Promise<void> {
  if (process.platform !== 'linux') throw new Error('npm run attack reads /proc: Linux only')
  const began = Date.now()
  const loadBefore = loadavg()
  const port = await freePort()
  const secret = randomBytes(32).toString('hex')
  const logDir = mkdtempSync(join(tmpdir(), 'secure-ws-attack-'))
  const logPath = process.env.ATTACK_SERVER_LOG ?? join(logDir, 'server.log')
  let server: ExampleServer | undefined
  let flood: Flood | undefined
  let user: User | undefined
  let stopSampling = (): void => {}
  try {
    server = await startExampleServer(ROOT, { port, secret, core: PIN ? 0 : undefined, logPath })
    process.stdout.write(`example server pid ${server.pid} on 127.0.0.1:${port}${PIN ? ' (core 0; flood on core 1)' : ''}; warm-up, then ${FLOOD_SECONDS} s of flood in two phases, ${CONCURRENCY} upgrades in flight, at most ${MAX_OPEN} flood sockets held per phase; load average ${loadBefore.map((n) => n.toFixed(2)).join(' ')}\n`)
    flood = new Flood({ port, secret, concurrency: CONCURRENCY, maxOpenPerPhase: MAX_OPEN, maxAttemptsPerPhase: 1_000_000 }, PIN ? 1 : undefined)
    const samples: ProcSample[] = []
    stopSampling = startSampler(server, flood, samples)
    const windows = new Windows(server)
    user = new User({ port, secret, localAddress: USER_ADDRESS, intervalMs: USER_INTERVAL_MS, timeoutMs: USER_TIMEOUT_MS })
    await warmUp(flood)

    const baseline = windows.open('baseline')
    await delay(BASELINE_MS)
    windows.close(baseline)

    const tokenWindow = await floodPhase(flood, windows, 'bad token', 'badToken', FLOOD_ADDRESS)
    await flood.request({ type: 'stop' })
    const drainUntil = Date.now() + DRAIN_MS
    while (flood.open > 0 && Date.now() < drainUntil) await delay(SAMPLE_INTERVAL_MS)
    windows.close(tokenWindow, countsOf((await flood.request({ type: 'snapshot' })).phases, 'bad token'))

    const originWindow = await floodPhase(flood, windows, 'bad origin', 'badOrigin', SECOND_FLOOD_ADDRESS)
    windows.close(originWindow, countsOf((await flood.request({ type: 'snapshot' })).phases, 'bad origin'))

    // The flood goes on; the user stops first so that its last attempt is not cut by the shutdown.
    await user.stop()
    const shutdown = await shutdownUnderFlood(server, flood)
    stopSampling()
    const last = await flood.finish()

    const record: RunRecord = { samples, windows: windows.list, user: user.samples, shutdown }
    const results = analyse(record, last.phases)
    process.stdout.write(`\n${timeline(record)}\n\n${summary(results)}\n`)
    if (shutdown.killed || shutdown.exitCode !== 0) process.stdout.write(`\nserver output, without its request and refusal lines:\n${server.quietLines(10).join('\n')}\n`)

    const out = {
      date: new Date(began).toISOString(),
      durationSeconds: (Date.now() - began) / 1000,
      commit: gitDescribe(),
      node: process.version,
      kernel: release(),
      cpus: cpus().length,
      loadAverageBefore: loadBefore,
      loadAverageAfter: loadavg(),
      cpuClock,
      settings: { warmupMs: WARMUP_MS, floodSeconds: FLOOD_SECONDS, concurrency: CONCURRENCY, maxOpenPerPhase: MAX_OPEN, pinned: PIN, baselineMs: BASELINE_MS, drainMs: DRAIN_MS, userIntervalMs: USER_INTERVAL_MS, floodAddress: FLOOD_ADDRESS, secondFloodAddress: SECOND_FLOOD_ADDRESS, userAddress: USER_ADDRESS },
      targetLimits: TARGETS,
      ...results,
      timeline: {
        columns: ['ms', 'serverFds', 'serverCpuSeconds', 'serverRssBytes', 'floodOpen', 'floodInFlight', 'floodCpuSeconds'],
        rows: samples.map((s) => [s.at - baseline.startAt, s.fds, s.cpuSeconds, s.rssBytes, s.floodOpen, s.floodInFlight, Math.round(s.floodCpuSeconds * 1000) / 1000])
      }
    }
    writeFileSync(OUT, `${toJson(out)}\n`)
    const line = {
      pass: results.targets.every((c) => c.pass),
      baselineFds: results.baseline.serverFds,
      serverFdsMax: results.flood.serverFdsMax,
      serverFdsAboveBaseline: results.flood.serverFdsAboveBaseline,
      floodOpenMax: results.flood.floodOpenMax,
      cpuUsPerRefusedUpgrade: results.flood.cpuUsPerRefusedUpgrade === null ? null : Math.round(results.flood.cpuUsPerRefusedUpgrade),
      cpuUsPer429: results.flood.cpuUsPer429 === null ? null : Math.round(results.flood.cpuUsPer429 * 10) / 10,
      http429: results.flood.http429,
      refused101: results.phases.reduce((sum, p) => sum + p.refused101, 0),
      legitConnectMaxMs: results.flood.legit.connectMaxMs,
      legitConnectP50Ms: results.flood.legit.connectP50Ms,
      legitFailures: results.flood.legit.failures,
      shutdown,
      targets: Object.fromEntries(results.targets.map((c) => [c.name, c.pass]))
    }
    process.stdout.write(`\nATTACK ${JSON.stringify(line)}\nwritten to ${OUT}\n`)
  } finally {
    stopSampling()
    killAll([server?.child, flood?.child, user?.child])
    if (process.env.ATTACK_SERVER_LOG === undefined) rmSync(logDir, { recursive: true, force: true })
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
