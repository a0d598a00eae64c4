/**
 * The example's newer settings (WS_HEARTBEAT_INTERVAL_MS, WS_MAX_BUFFERED_BYTES,
 * WS_MAX_AUTH_FAILURES_PER_MINUTE, WS_PRICE_INTERVAL_MS), as /work/shared/example-contract.md
 * words them under "Configuration": a malformed value stops start-up with a one-line error
 * naming the variable and exit code 1; `0` is malformed except for the heartbeat and the
 * lockout, which it turns off. What each setting does is checked in its own file.
 */
import t from 'tap'
import { startExample } from './example-process.js'
import { httpGet, runExampleToExit } from './example-helpers.js'

const SECRET = 'example-config-test-secret-0123456789abcdef'

const MALFORMED: Array<[string, string]> = [
  ['WS_HEARTBEAT_INTERVAL_MS', 'abc'],
  ['WS_HEARTBEAT_INTERVAL_MS', '-1000'],
  ['WS_HEARTBEAT_INTERVAL_MS', '1000.5'],
  ['WS_MAX_BUFFERED_BYTES', '0'],
  ['WS_MAX_BUFFERED_BYTES', 'abc'],
  ['WS_MAX_BUFFERED_BYTES', '-1'],
  ['WS_MAX_BUFFERED_BYTES', '1e6'],
  ['WS_MAX_AUTH_FAILURES_PER_MINUTE', 'abc'],
  ['WS_MAX_AUTH_FAILURES_PER_MINUTE', '-1'],
  ['WS_MAX_AUTH_FAILURES_PER_MINUTE', '2.5'],
  ['WS_PRICE_INTERVAL_MS', '0'],
  ['WS_PRICE_INTERVAL_MS', 'abc'],
  ['WS_PRICE_INTERVAL_MS', '-5'],
  ['WS_PRICE_INTERVAL_MS', '1.5']
]

t.test('a malformed value of a new variable stops start-up with one stderr line naming it, exit code 1', async (t) => {
  // Two at a time: the machine has two cores, and each run loads the whole app first.
  const queue = [...MALFORMED]
  const runOne = async (): Promise<void> => {
    for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
      const [name, value] = next
      const run = await runExampleToExit({ WS_JWT_SECRET: SECRET, [name]: value })
      const what = `${name}=${value}`
      const lines = run.stderr.split('\n').filter((line) => line.trim() !== '')
      t.strictSame({ code: run.code, signal: run.signal }, { code: 1, signal: null }, `${what}: exit code 1`)
      t.equal(lines.length, 1, `${what}: one stderr line`)
      t.match(lines[0] ?? '', name, `${what}: the line names ${name}`)
      t.notMatch(lines[0] ?? '', /\sat\s/, `${what}: no stack`)
      t.notMatch(run.stdout, /listening/, `${what}: never listened`)
    }
  }
  await Promise.all([runOne(), runOne()])
})

t.test('0 is a valid value for WS_HEARTBEAT_INTERVAL_MS and WS_MAX_AUTH_FAILURES_PER_MINUTE', async (t) => {
  const example = await startExample(t, { WS_JWT_SECRET: SECRET, WS_HEARTBEAT_INTERVAL_MS: '0', WS_MAX_AUTH_FAILURES_PER_MINUTE: '0' })
  const health = await httpGet(example, '/health')
  t.equal(health.status, 200)
  t.strictSame(JSON.parse(health.body), { status: 'ok' })
  t.equal(example.output().includes('error'), false, 'no error on start-up')
})
