import t from 'tap'
import { build, connect, sign, type Client } from './helpers.js'

const INTERNAL = { type: 'error', message: 'Internal server error' }

/** Records every text frame exactly as it came over the wire. */
function rawFrames (c: Client): string[] {
  const raw: string[] = []
  c.ws.on('message', (data, isBinary) => { if (!isBinary) raw.push(data.toString()) })
  return raw
}

/** Log lines (parsed) for failed handlers. */
function handlerFailures (logs: string[]): Array<Record<string, any>> {
  return logs.map((line) => JSON.parse(line)).filter((entry) => entry.msg === 'websocket message handler failed')
}

/** Waits until callbacks queued by the last turn (including unhandled-rejection checks) have run. */
function settle (): Promise<void> {
  return new Promise((resolve) => setImmediate(() => setTimeout(resolve, 20)))
}

t.test('a throwing or rejecting handler answers exactly "Internal server error" and reveals nothing', async (t) => {
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.removeListener('unhandledRejection', onUnhandled) })

  const { url } = await build(t)
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.teardown(() => c.close())
  const raw = rawFrames(c)

  for (const type of ['boom', 'asyncBoom']) {
    c.send({ type })
    t.strictSame(await c.next(), INTERNAL, `${type}: the generic error frame`)
    c.send({ type: 'ping' })
    t.strictSame(await c.next(), { type: 'pong' }, `${type}: the connection stays open and a later ping is answered`)
  }
  t.equal(c.ws.readyState, c.ws.OPEN)

  t.equal(raw.length, 4)
  for (const frame of [raw[0]!, raw[2]!]) {
    t.equal(frame, '{"type":"error","message":"Internal server error"}', 'byte for byte the generic frame')
    for (const leak of ['hunter2', 'password', 'internals', '/srv/', 'secret.ts', '.ts:', 'stack', 'Error:', '    at ']) {
      t.equal(frame.includes(leak), false, `the frame does not contain ${JSON.stringify(leak)}`)
    }
  }

  await settle()
  t.strictSame(unhandled, [], 'no unhandledRejection fired')
})

t.test('the server logs the failure with the user and connection ids', async (t) => {
  const { url, logs } = await build(t)
  const a = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const b = await connect(url('/ws/bob-1'), { token: sign('bob') })
  t.teardown(() => a.close())
  t.teardown(() => b.close())

  a.send({ type: 'boom' })
  t.strictSame(await a.next(), INTERNAL)
  a.send({ type: 'asyncBoom' })
  t.strictSame(await a.next(), INTERNAL)
  b.send({ type: 'boom' })
  t.strictSame(await b.next(), INTERNAL)

  const failures = handlerFailures(logs)
  t.equal(failures.length, 3, 'one error line per failure')
  t.strictSame(failures.map((f) => f.userId), ['alice', 'alice', 'bob'])
  for (const f of failures) {
    t.equal(f.level, 50, 'logged at error level')
    t.type(f.connectionId, 'string')
    t.not(f.connectionId, '')
  }
  t.equal(failures[0]!.connectionId, failures[1]!.connectionId, 'the same connection has the same id')
  t.not(failures[0]!.connectionId, failures[2]!.connectionId, 'another connection has another id')
  t.match(failures[0]!.err?.message, 'hunter2', 'the server keeps the exception for the operator')
  t.match(failures[1]!.err?.message, 'async internals', 'the rejection is logged too')
  t.type(failures[0]!.err?.stack, 'string', 'with its stack')
})

t.test('failures on one connection leave the other connections alone', async (t) => {
  const { url } = await build(t)
  const a = await connect(url('/ws/alice-1'), { token: sign('alice') })
  const b = await connect(url('/ws/bob-1'), { token: sign('bob') })
  t.teardown(() => a.close())
  t.teardown(() => b.close())
  a.send({ type: 'boom' })
  a.send({ type: 'asyncBoom' })
  t.strictSame(await a.next(), INTERNAL)
  t.strictSame(await a.next(), INTERNAL)
  b.send({ type: 'whoami' })
  t.strictSame(await b.next(), { type: 'whoami', user: 'bob', session: 'bob-1' })
  t.strictSame(b.pending, [], 'bob received no error frame')
})
