/** The attack run's two client processes, as the orchestrator drives them. */
import { spawn, type ChildProcess } from 'node:child_process'
import { setPriority } from 'node:os'
import { join } from 'node:path'
import type { FloodCommand, FloodConfig, FloodReport, FloodSnapshot, UserConfig, UserReport, UserSample } from './protocol.js'

const STOP_TIMEOUT_MS = 5000
// The flood may take all of its core; the orchestrator and the legitimate user, which float,
// must still be scheduled at once when they wake.
const FLOOD_NICENESS = 10

function start (script: string, core: number | undefined, env: Record<string, string>): ChildProcess {
  const argv = [process.execPath, '--import', 'tsx', join(__dirname, script)]
  const [command, ...args] = core === undefined ? argv : ['taskset', '-c', String(core), ...argv]
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env }
  // A test runner's loaders are not ours.
  delete childEnv.NODE_OPTIONS
  const child = spawn(command!, args, { env: childEnv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  if (child.pid === undefined) throw new Error(`could not start ${script}`)
  return child
}

function exited (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

/** Ends `child` if it has not ended within STOP_TIMEOUT_MS. */
async function reap (child: ChildProcess): Promise<void> {
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
  await exited(child)
  clearTimeout(timer)
}

export class Flood {
  readonly child: ChildProcess
  /** The generator's latest count of open flood sockets and of upgrades awaiting an answer. */
  open = 0
  inFlight = 0
  cpuSeconds = 0
  #waiting: Array<(snapshot: FloodSnapshot) => void> = []

  constructor (config: FloodConfig, core: number | undefined) {
    this.child = start('flood.ts', core, { ATTACK_FLOOD_CONFIG: JSON.stringify(config) })
    try {
      setPriority(this.child.pid!, FLOOD_NICENESS)
    } catch {}
    this.child.on('message', (report: FloodReport) => {
      if (report.type === 'status') {
        this.open = report.open
        this.inFlight = report.inFlight
        this.cpuSeconds = report.cpuSeconds
      } else {
        this.open = report.snapshot.open
        this.inFlight = report.snapshot.inFlight
        this.cpuSeconds = report.snapshot.cpuSeconds
        this.#waiting.shift()?.(report.snapshot)
      }
    })
  }

  send (command: FloodCommand): void {
    this.child.send(command)
  }

  /** Sends a command the generator answers with a snapshot, and waits for that snapshot. */
  async request (command: Extract<FloodCommand, { type: 'stop' | 'snapshot' | 'sigterm' | 'finish' }>): Promise<FloodSnapshot> {
    const answer = new Promise<FloodSnapshot>((resolve, reject) => {
      this.#waiting.push(resolve)
      exited(this.child).then(() => reject(new Error(`flood generator exited (${this.child.exitCode ?? this.child.signalCode}) before answering ${command.type}`)), () => {})
    })
    this.send(command)
    return answer
  }

  /** Destroys every flood socket and ends the process; returns its last snapshot. */
  async finish (): Promise<FloodSnapshot> {
    const last = await this.request({ type: 'finish' })
    await reap(this.child)
    return last
  }
}

export class User {
  readonly child: ChildProcess
  readonly samples: UserSample[] = []
  #stopped: Promise<void>

  constructor (config: UserConfig) {
    this.child = start('user.ts', undefined, { ATTACK_USER_CONFIG: JSON.stringify(config) })
    this.#stopped = new Promise((resolve) => {
      this.child.on('message', (report: UserReport) => {
        if (report.type === 'sample') this.samples.push(report.sample)
        else resolve()
      })
      exited(this.child).then(resolve, () => {})
    })
  }

  /** Lets the current attempt end, then ends the process. */
  async stop (): Promise<void> {
    if (this.child.connected) this.child.send({ type: 'stop' })
    await this.#stopped
    await reap(this.child)
  }
}

/** Kills whatever is still running, for the run's error path. */
export function killAll (children: Array<ChildProcess | undefined>): void {
  for (const child of children) {
    if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
}
