import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import t from 'tap'
import { createSigner } from 'fast-jwt'
import { connect } from './helpers.js'
import { freePort } from './redis-server.js'

// The quick start's own command: signals sent to `npm run example` must reach the server.
const SECRET = 'npm-example-test-secret-0123456789'

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`${signal} to \`npm run example\` closes every WebSocket with 1001 and npm exits 0`, async (t) => {
    const port = await freePort()
    const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), HOST: '127.0.0.1', WS_JWT_SECRET: SECRET }
    // tap's loaders are not the user's.
    delete env.NODE_OPTIONS
    const npm = spawn('npm', ['run', 'example'], { cwd: join(__dirname, '..'), env, stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => { if (npm.exitCode === null) npm.kill('SIGKILL') })
    let output = ''
    npm.stderr!.on('data', (chunk: Buffer) => { output += chunk.toString() })
    await new Promise<void>((resolve, reject) => {
      npm.stdout!.on('data', (chunk: Buffer) => {
        output += chunk.toString()
        if (output.includes(`http://127.0.0.1:${port}`)) resolve()
      })
      npm.once('exit', (code) => reject(new Error(`npm exited with ${code}: ${output}`)))
    })
    const token = createSigner({ key: SECRET, algorithm: 'HS256', expiresIn: 60_000 })({ sub: 'alice' })
    const client = await connect(`ws://127.0.0.1:${port}/ws/sessions/alice-1`, { token, origin: `http://127.0.0.1:${port}` })
    t.ok(await client.admitted(), 'connected through npm run example')
    npm.kill(signal)
    t.same(await client.closed, { code: 1001, reason: 'Server shutting down' })
    const [code] = await once(npm, 'exit')
    t.equal(code, 0, 'npm exits 0')
  })
}
