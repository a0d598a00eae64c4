import t from 'tap'
import { createSigner } from 'fast-jwt'
import { connect } from './helpers.js'
import { startExample } from './example-process.js'

// Regressions found by trying the example from outside: tokens in odd URLs reached the log,
// and the production demo route answered 400 (not 404) to a bad body.
const SECRET = 'example-logs-test-secret-0123456789'
const sign = createSigner({ key: SECRET, algorithm: 'HS256', expiresIn: 60_000 })

t.test('no log line holds a token, whatever the URL carries it', async (t) => {
  const { port, output } = await startExample(t, { WS_JWT_SECRET: SECRET })
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
  const { port } = await startExample(t, { WS_JWT_SECRET: SECRET, NODE_ENV: 'production' })
  for (const body of ['{"user":"alice"}', '{}', '{"user":"no such user!"}', '[]']) {
    const res = await fetch(`http://127.0.0.1:${port}/demo/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
    await res.arrayBuffer()
    t.equal(res.status, 404, `body ${JSON.stringify(body)}`)
  }
})
