import t from 'tap'
import { Type } from '@sinclair/typebox'
import { build, connect, sign, type BuildOptions, type Client } from './helpers.js'

const INVALID_ENVELOPE = { type: 'error', message: 'A message must be a JSON object with a string "type"' }
const FORBIDDEN_KEY = { type: 'error', message: 'Invalid message: forbidden property name' }

async function alice (t: tap.Test, route?: BuildOptions['route']): Promise<Client> {
  // Limits high enough that these tests exercise dispatch, not the rate limiter.
  const { url } = await build(t, { options: { limits: { messagesPerSecond: 1000, messagesPerMinute: 10_000 } }, ...(route === undefined ? {} : { route }) })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.teardown(() => c.close())
  t.equal(await c.opened, true, 'connection opened')
  return c
}

/** The connection is still usable: a ping sent now is answered with a pong. */
async function stillOpen (t: tap.Test, c: Client): Promise<void> {
  c.send({ type: 'ping' })
  t.strictSame(await c.next(), { type: 'pong' }, 'a following ping is answered')
  t.equal(c.ws.readyState, c.ws.OPEN, 'connection still open')
}

t.test('ping is answered with exactly {type:"pong"}', async (t) => {
  const c = await alice(t)
  c.send({ type: 'ping' })
  t.strictSame(await c.next(), { type: 'pong' })
})

t.test('echo with a valid payload is answered with that payload', async (t) => {
  const c = await alice(t)
  c.send({ type: 'echo', payload: { text: 'hello' } })
  t.strictSame(await c.next(), { type: 'echo', text: 'hello' })
})

t.test('invalid JSON answers "Invalid JSON" and keeps the connection open', async (t) => {
  const c = await alice(t)
  c.send('{"type":"ping"')
  t.strictSame(await c.next(), { type: 'error', message: 'Invalid JSON' })
  c.send('not json at all')
  t.strictSame(await c.next(), { type: 'error', message: 'Invalid JSON' })
  await stillOpen(t, c)
})

t.test('invalid JSON that quotes a forbidden word is still "Invalid JSON"', async (t) => {
  const c = await alice(t)
  // V8's parse error quotes the text, so its message names "prototype" here.
  for (const frame of ['prototype', '{"type":"echo","constructor":{"prototype":', '{"__proto__"']) {
    c.send(frame)
    t.strictSame(await c.next(), { type: 'error', message: 'Invalid JSON' }, `not JSON: ${frame}`)
  }
  await stillOpen(t, c)
})

t.test('forbidden words as values, escapes and a byte order mark are not refused', async (t) => {
  const c = await alice(t)
  const frames: Array<[string, string]> = [
    ['{"type":"echo","payload":{"text":"__proto__ constructor prototype"}}', '__proto__ constructor prototype'],
    ['{"type":"echo","payload":{"text":"tab\\there \\u0041"}}', 'tab\there A'],
    ['{"type":"echo","payload":{"text":"x","constructor":"not an object"}}', 'x'],
    ['\ufeff{"type":"echo","payload":{"text":"bom"}}', 'bom']
  ]
  for (const [frame, text] of frames) {
    c.send(frame)
    t.strictSame(await c.next(), { type: 'echo', text }, `accepted: ${frame}`)
  }
})

t.test('a frame that is not an object with a string "type" is refused', async (t) => {
  const c = await alice(t)
  const frames = ['[{"type":"ping"}]', '42', '"ping"', 'null', 'true', '{}', '{"type":1}', '{"type":null}', '{"type":["ping"]}', '{"payload":{"text":"x"}}']
  for (const frame of frames) {
    c.send(frame)
    t.strictSame(await c.next(), INVALID_ENVELOPE, `refused: ${frame}`)
  }
  await stillOpen(t, c)
})

t.test('an unknown message type answers "Unknown message type"', async (t) => {
  const c = await alice(t)
  c.send({ type: 'nope' })
  t.strictSame(await c.next(), { type: 'error', message: 'Unknown message type' })
  // A type named like an Object.prototype member is not a declared message either.
  for (const type of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
    c.send({ type })
    t.strictSame(await c.next(), { type: 'error', message: 'Unknown message type' }, `refused: ${type}`)
  }
  await stillOpen(t, c)
})

t.test('a payload that breaks its schema answers "Invalid payload: ..."', async (t) => {
  const c = await alice(t)
  c.send({ type: 'echo', payload: { text: 1 } })
  t.strictSame(await c.next(), { type: 'error', message: 'Invalid payload: /text Expected string' })

  c.send({ type: 'echo' })
  const missing = await c.next()
  t.equal(missing.type, 'error')
  t.match(missing.message, /^Invalid payload/)
  t.strictSame(Object.keys(missing).sort(), ['message', 'type'])

  c.send({ type: 'echo', payload: { text: 'x'.repeat(101) } })
  const tooLong = await c.next()
  t.equal(tooLong.type, 'error')
  t.match(tooLong.message, /^Invalid payload/)
  t.notMatch(tooLong.message, 'xxxx', 'the error does not echo the value')
  await stillOpen(t, c)
})

t.test('a binary frame answers "Binary frames are not supported"', async (t) => {
  const c = await alice(t)
  c.ws.send(Buffer.from(JSON.stringify({ type: 'ping' })), { binary: true })
  t.strictSame(await c.next(), { type: 'error', message: 'Binary frames are not supported' })
  await stillOpen(t, c)
})

t.test('prototype pollution attempts are refused and pollute nothing', async (t) => {
  const c = await alice(t)
  const attempts = [
    '{"type":"echo","__proto__":{"polluted":true},"payload":{"text":"x"}}',
    '{"type":"echo","payload":{"text":"x","__proto__":{"polluted":true}}}',
    '{"type":"echo","constructor":{"prototype":{"polluted":true}},"payload":{"text":"x"}}',
    '{"type":"echo","payload":{"text":"x","constructor":{"prototype":{"polluted":true}}}}',
    // The same keys spelled with \u escapes, which a literal search for them would miss.
    '{"type":"echo","\\u005f_proto__":{"polluted":true},"payload":{"text":"x"}}',
    '{"type":"echo","payload":{"text":"x","\\u0063onstructor":{"prototype":{"polluted":true}}}}'
  ]
  for (const frame of attempts) {
    c.send(frame)
    t.strictSame(await c.next(), FORBIDDEN_KEY, `refused: ${frame}`)
  }
  t.equal(({} as any).polluted, undefined, 'a fresh object has no "polluted"')
  t.equal(Object.hasOwn(Object.prototype, 'polluted'), false, 'Object.prototype untouched')
  // The handler never ran: the next frame is the ping's answer, not an echo.
  await stillOpen(t, c)
})

t.test('messages declared with the function form behave like the object form', async (t) => {
  const c = await alice(t, {
    messages: (message) => ({
      ping: message((conn) => { conn.send('pong', {}) }),
      echo: message({ payload: Type.Object({ text: Type.String({ maxLength: 100 }) }) }, (conn, payload) => {
        conn.send('echo', { text: payload.text })
      }),
      admin: message({ scopes: ['admin'] }, (conn) => { conn.send('pong', {}) })
    })
  })
  c.send({ type: 'ping' })
  t.strictSame(await c.next(), { type: 'pong' })
  c.send({ type: 'echo', payload: { text: 'fn' } })
  t.strictSame(await c.next(), { type: 'echo', text: 'fn' })
  c.send({ type: 'echo', payload: { text: 1 } })
  t.strictSame(await c.next(), { type: 'error', message: 'Invalid payload: /text Expected string' })
  c.send({ type: 'admin' })
  t.strictSame(await c.next(), { type: 'error', message: 'Forbidden' })
  c.send({ type: 'whoami' })
  t.strictSame(await c.next(), { type: 'error', message: 'Unknown message type' }, 'only the returned messages exist')
  c.send('{')
  t.strictSame(await c.next(), { type: 'error', message: 'Invalid JSON' })
  await stillOpen(t, c)
})

// Found by the fuzzer: a handler typed to receive `undefined` was handed the client's JSON unchecked.
t.test('a message declared without a payload schema refuses a payload instead of passing it unchecked', async (t) => {
  const seen: unknown[] = []
  const c = await alice(t, {
    outbound: { pong: Type.Object({}) },
    messages: (message) => ({ ping: message((conn, payload) => { seen.push(payload); conn.send('pong', {}) }) })
  })
  for (const payload of [{ admin: true }, null, 0, '', []]) {
    c.send({ type: 'ping', payload })
    t.strictSame(await c.next(), { type: 'error', message: 'Invalid payload: this message takes no payload' }, JSON.stringify(payload))
  }
  await stillOpen(t, c)
  t.strictSame(seen, [undefined], 'the handler only ever saw the message without a payload')
})
