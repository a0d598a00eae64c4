/**
 * Starts examples/server.ts the way a user does (`node --import tsx examples/server.ts`, as
 * test/example-process.ts does), with the default environment except WS_JWT_SECRET and PORT,
 * optionally pinned to one core. Its output goes to a file rather than a pipe: a pipe the
 * orchestrator was slow to drain would stall the server's synchronous log writes, and the
 * run would then measure the harness, not the server.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { commandLine } from './proc.js'
export { freePort } from '../../test/redis-server.js'

const STARTUP_TIMEOUT_MS = 30_000

export interface ExampleServer {
  pid: number
  port: number
  child: ChildProcess
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null, at: number }>
  /** Bytes the server has written to stdout and stderr so far. */
  logBytes: () => number
  logTail: (bytes?: number) => string
  /** The last `count` lines that are neither a request line nor a refusal: start-up, shutdown, errors. */
  quietLines: (count: number) => string[]
}

const NOISE = /"msg":"(incoming request|request completed|websocket connection refused)"/

function exampleEnv (port: number, secret: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  // The example's defaults are what is under attack: nothing of ours may tune it.
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('WS_') && name !== 'NODE_OPTIONS' && name !== 'LOG_LEVEL' && name !== 'HOST') env[name] = value
  }
  return { ...env, PORT: String(port), HOST: '127.0.0.1', WS_JWT_SECRET: secret }
}

export async function startExampleServer (root: string, options: { port: number, secret: string, core: number | undefined, logPath: string }): Promise<ExampleServer> {
  const { port, secret, core, logPath } = options
  const argv = [process.execPath, '--import', 'tsx', join(root, 'examples', 'server.ts')]
  const log = openSync(logPath, 'w')
  // taskset execs node, so the pid we get is the server's own.
  const [command, ...args] = core === undefined ? argv : ['taskset', '-c', String(core), ...argv]
  const child = spawn(command!, args, { cwd: root, env: exampleEnv(port, secret), stdio: ['ignore', log, log] })
  closeSync(log)
  if (child.pid === undefined) throw new Error('could not start examples/server.ts')
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null, at: number }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal, at: performance.now() }))
  })
  const server: ExampleServer = {
    pid: child.pid,
    port,
    child,
    exited,
    logBytes: () => statSync(logPath).size,
    logTail: (bytes = 2000) => readFileSync(logPath, 'utf8').slice(-bytes),
    quietLines: (count) => readFileSync(logPath, 'utf8').split('\n').filter((line) => line !== '' && !NOISE.test(line)).slice(-count)
  }
  const ready = `http://127.0.0.1:${port}`
  const deadline = Date.now() + STARTUP_TIMEOUT_MS
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`examples/server.ts exited with ${child.exitCode ?? child.signalCode}: ${server.logTail()}`)
    if (readFileSync(logPath, 'utf8').includes(ready)) break
    if (Date.now() > deadline) throw new Error(`examples/server.ts did not print ${ready} within ${STARTUP_TIMEOUT_MS} ms: ${server.logTail()}`)
    await delay(50)
  }
  if (!commandLine(server.pid).includes('examples/server.ts')) throw new Error(`pid ${server.pid} is not the example server: ${commandLine(server.pid)}`)
  return server
}
