import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { freePort } from './redis-server.js'

/** A running example server, started as a user would start it. */
export interface ExampleProcess {
  port: number
  child: ChildProcess
  /** Everything it wrote to stdout and stderr so far. */
  output: () => string
  /** `ws://127.0.0.1:<port><path>` */
  url: (path: string) => string
  /** The origin its default allowlist admits. */
  origin: string
}

/**
 * Starts examples/server.ts on a free port with `env` (WS_JWT_SECRET is required), through
 * `node --import tsx` or through `npm run example`, and resolves once it prints its URL.
 * The process is killed in teardown if the test left it running.
 */
export async function startExample (t: { teardown: (fn: () => unknown) => void }, env: Record<string, string>, via: 'node' | 'npm' = 'node'): Promise<ExampleProcess> {
  const port = await freePort()
  const childEnv: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), HOST: '127.0.0.1', ...env }
  // tap's loaders are not the user's.
  delete childEnv.NODE_OPTIONS
  const root = join(__dirname, '..')
  const child = via === 'npm'
    ? spawn('npm', ['run', 'example'], { cwd: root, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, ['--import', 'tsx', join(root, 'examples', 'server.ts')], { cwd: root, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let output = ''
  child.stderr!.on('data', (chunk: Buffer) => { output += chunk.toString() })
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes(`http://127.0.0.1:${port}`)) resolve()
    })
    child.once('exit', (code) => reject(new Error(`example exited with ${code}: ${output}`)))
  })
  return { port, child, output: () => output, url: (path) => `ws://127.0.0.1:${port}${path}`, origin: `http://127.0.0.1:${port}` }
}
