import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import t from 'tap'
import { createSigner } from 'fast-jwt'
import { connect } from './helpers.js'
import { freePort } from './redis-server.js'

// Regressions found by trying the example from outside: tokens in odd URLs reached the log,
// and the production demo route answered 400 (not 404) to a bad body.
const SECRET = 'example-logs-test-secret-0123456789'
const sign = createSigner({ key: SECRET, algorithm: 'HS256', expiresIn: 60_000 })

async function start (t: { teardown: (fn: () => unknown) => void }, env: Record<string, string> = {}): Promise<{ port: number, output: () => string, child: ChildProcess }> {
  const port = await freePort()
  const childEnv: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), HOST: '127.0.0.1', WS_JWT_SECRET: SECRET, ...env }
  delete childEnv.NODE_OPTIONS
  const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '..', 'examples', 'server.ts')], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let output = ''
  child.stderr!.on('data', (chunk: Buffer) => { output += chunk.toString() })
  await new Promise<void>((resolve) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes(`http://127.0.0.1:${port}`)) resolve()
    })
  })
  return { port, output: () => output, child }
}

t.test('no log line holds a token, whatever the URL carries it', async (t) => {
  const { port, output } = await start(t)
  const origin = `http://127.0.0.1:${port}`
  const tokens: string[] = []
  const fresh = (): string => { const token = sign({ sub: 'alice', jti: String(tokens.length) }); tokens.push(token); return token }
  // Upgrades with the token where the scrubber must still find it.
  for (const query of [`x=1?token=${fresh()}`, `%74oken=${fresh()}`, `TOKEN=${fresh()}`, `a=b&token=${fresh()}&c=d`]) {
    const client = await connect(`ws://127.0.0.1:${port}/ws/sessions/alice-1?${query}`, { origin })
    await client.opened
    client.ws.close()
    await client.closed
  }
  // Plain HTTP requests, to the WebSocket route and elsewhere.
  for (const path of ['/ws/sessions/alice-1', '/health', '/nowhere']) {
    const res = await fetch(`http://127.0.0.1:${port}${path}?token=${fresh()}`)
    await res.arrayBuffer()
  }
  await new Promise((resolve) => setTimeout(resolve, 200))
  const lines = output().split('\n')
  for (const token of tokens) {
    t.same(lines.filter((line) => line.includes(token) || line.includes(token.split('.')[2]!)), [], 'no line holds the token or its signature')
  }
})

// Bodies that are JSON: one that does not parse gets Fastify's 400 on any URL, before routing.
t.test('with NODE_ENV=production, POST /demo/token answers 404 whatever the JSON body', async (t) => {
  const { port } = await start(t, { NODE_ENV: 'production' })
  for (const body of ['{"user":"alice"}', '{}', '{"user":"no such user!"}', '[]']) {
    const res = await fetch(`http://127.0.0.1:${port}/demo/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
    await res.arrayBuffer()
    t.equal(res.status, 404, `body ${JSON.stringify(body)}`)
  }
})
