import { once } from 'node:events'
import t from 'tap'
import { createSigner } from 'fast-jwt'
import { connect } from './helpers.js'
import { startExample } from './example-process.js'

// The quick start's own command: signals sent to `npm run example` must reach the server.
const SECRET = 'npm-example-test-secret-0123456789'

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`${signal} to \`npm run example\` closes every WebSocket with 1001 and npm exits 0`, async (t) => {
    const { port, child: npm } = await startExample(t, { WS_JWT_SECRET: SECRET }, 'npm')
    const token = createSigner({ key: SECRET, algorithm: 'HS256', expiresIn: 60_000 })({ sub: 'alice' })
    const client = await connect(`ws://127.0.0.1:${port}/ws/sessions/alice-1`, { token, origin: `http://127.0.0.1:${port}` })
    t.ok(await client.admitted(), 'connected through npm run example')
    npm.kill(signal)
    t.same(await client.closed, { code: 1001, reason: 'Server shutting down' })
    const [code] = await once(npm, 'exit')
    t.equal(code, 0, 'npm exits 0')
  })
}
