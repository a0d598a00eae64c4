import { execFile } from 'node:child_process'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'

// @fastify/websocket's npm package ships its own test suite; test/compat/run.sh runs it as
// published and again with this plugin registered beside it (see test/compat/README.md).
const ROOT = resolve(__dirname, '..')

t.test('@fastify/websocket\'s own tests pass with the plugin registered, as many as without it', async (t) => {
  const { stdout } = await promisify(execFile)('bash', [join(ROOT, 'test/compat/run.sh'), join(ROOT, 'node_modules/@fastify/websocket')], {
    cwd: ROOT,
    // The built plugin, as a consumer loads it: `npm test` builds before tap runs.
    env: { ...process.env, NODE_OPTIONS: '', SECURE_WS_ENTRY: join(ROOT, 'dist/index.js') },
    timeout: 100_000
  })
  const baseline = /^baseline:\s+pass (\d+)\/(\d+)/m.exec(stdout)
  const withPlugin = /^with fastify-secure-ws:\s+pass (\d+)\/(\d+)/m.exec(stdout)
  t.ok(baseline !== null && withPlugin !== null, stdout)
  t.ok(Number(baseline![2]) > 50, 'the suite ran')
  t.equal(baseline![1], baseline![2], 'every test passes as published')
  t.equal(withPlugin![1], baseline![1], 'and every one with the plugin registered')
})
