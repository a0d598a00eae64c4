// Attack table, part 4: hostile frames from an admitted client: invalid UTF-8, fragment floods,
// deeply nested JSON. Each row asserts what the client receives and that the server goes on.
import t, { type Test } from 'tap'
import { type Built, build, connect, eventually, parseLogs, sign } from './helpers.js'
import { OP, type RawPeer, clientFrame, peerAnswersPing, rawUpgradePeer, textMessages } from './frames.js'

const PROTOCOL_ERROR_LINE = 'websocket protocol error; connection closed'

/** A raw peer admitted as alice, proven by an answered ping. */
async function admitted (t: Test, built: Built, user: 'alice' | 'bob' = 'alice'): Promise<RawPeer> {
  const peer = rawUpgradePeer(t, built.app, { path: `/ws/${user}-1`, token: sign(user) })
  t.equal((await peer.head).status, 101)
  t.ok(await peerAnswersPing(peer), 'admitted')
  return peer
}

/** One text message split into `count` frames of `payload` (the first a text frame, the rest continuations). */
function fragmented (payloads: Array<string | Buffer>): Buffer {
  return Buffer.concat(payloads.map((payload, i) => clientFrame(i === 0 ? OP.text : OP.continuation, payload, { fin: i === payloads.length - 1 })))
}

t.test('invalid UTF-8 in a text frame closes with 1007 and nothing of it is processed', async (t) => {
  const cases: Record<string, Buffer> = {
    'a lone 0xff': Buffer.from([0x7b, 0xff, 0x7d]),
    'inside a JSON string the echo handler would return': Buffer.concat([Buffer.from('{"type":"echo","payload":{"text":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}}')]),
    'an overlong encoding of "/"': Buffer.concat([Buffer.from('{"type":"echo","payload":{"text":"'), Buffer.from([0xc0, 0xaf]), Buffer.from('"}}')]),
    'a UTF-16 surrogate half': Buffer.concat([Buffer.from('{"type":"echo","payload":{"text":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}}')])
  }
  for (const [name, bytes] of Object.entries(cases)) {
    t.test(name, async (t) => {
      const built = await build(t)
      const peer = await admitted(t, built)
      // A valid message on each side: the one before is answered, the one after never read.
      peer.write(Buffer.concat([clientFrame(OP.text, '{"type":"whoami"}'), clientFrame(OP.text, bytes), clientFrame(OP.text, '{"type":"ping"}')]))
      t.same(await peer.closeFrame(), { code: 1007, reason: '' })
      t.same(textMessages(peer), [{ type: 'pong' }, { type: 'whoami', user: 'alice', session: 'alice-1' }], 'no echo, no error frame, no pong after it')
      await peer.ended
      t.match(parseLogs(built.logs).filter((line) => line.msg === PROTOCOL_ERROR_LINE), [{ level: 40, code: 'WS_ERR_INVALID_UTF8' }])
      t.ok(await eventually(() => built.app.secureWs.stats().connections === 0), 'the connection is gone')
      t.same(built.app.secureWs.stats().store.slots, {})
    })
  }

  t.test('split across fragments: the bad sequence is caught in the assembled message', async (t) => {
    const built = await build(t)
    const peer = await admitted(t, built)
    peer.write(fragmented(['{"type":"echo","payload":{"text":"', Buffer.from([0xe2, 0x82]), Buffer.from([0x28]), '"}}']))
    t.same(await peer.closeFrame(), { code: 1007, reason: '' })
    t.same(textMessages(peer), [{ type: 'pong' }])
  })

  t.test('valid multi-byte UTF-8 split across fragments is processed (control)', async (t) => {
    const built = await build(t)
    const peer = await admitted(t, built)
    const euro = Buffer.from('€')
    peer.write(fragmented(['{"type":"echo","payload":{"text":"', euro.subarray(0, 2), euro.subarray(2), '"}}']))
    t.ok(await eventually(() => textMessages(peer).length === 2))
    t.same(textMessages(peer)[1], { type: 'echo', text: '€' })
  })
})

t.test('tiny-fragment floods', async (t) => {
  // ws (8.23) refuses a message of more than 16,384 fragments (its maxFragments) with 1008 and
  // no reason, before maxPayload is reached; the plugin counts the assembled message once.
  const MAX_FRAGMENTS = 16 * 1024

  t.test('a message in exactly 16,384 one-byte fragments is processed', async (t) => {
    const built = await build(t)
    const peer = await admitted(t, built)
    const text = '{"type":"ping"}'.padEnd(MAX_FRAGMENTS, ' ')
    peer.write(fragmented([...text]))
    t.ok(await eventually(() => textMessages(peer).length === 2, 5000))
    t.same(textMessages(peer), [{ type: 'pong' }, { type: 'pong' }])
  })

  const floods: Record<string, Buffer> = {
    'one fragment more': fragmented([...'{"type":"ping"}'.padEnd(MAX_FRAGMENTS + 1, ' ')]),
    '100,000 one-byte fragments, never finished': Buffer.concat([clientFrame(OP.text, '{', { fin: false }), ...Array.from({ length: 100_000 }, () => clientFrame(OP.continuation, ' ', { fin: false }))]),
    '100,000 empty fragments, never finished': Buffer.concat([clientFrame(OP.text, '{', { fin: false }), ...Array.from({ length: 100_000 }, () => clientFrame(OP.continuation, '', { fin: false }))])
  }
  for (const [name, flood] of Object.entries(floods)) {
    t.test(`${name}: 1008 from ws, and another client is served throughout`, async (t) => {
      const built = await build(t)
      const other = await connect(built.url('/ws/bob-1'), { token: sign('bob') })
      const peer = await admitted(t, built)
      peer.write(flood)
      other.send({ type: 'whoami' })
      t.same(await peer.closeFrame(), { code: 1008, reason: '' })
      t.same(textMessages(peer), [{ type: 'pong' }], 'the flood produced no message')
      t.same(await other.next(), { type: 'whoami', user: 'bob', session: 'bob-1' })
      t.match(parseLogs(built.logs).filter((line) => line.msg === PROTOCOL_ERROR_LINE), [{ level: 40, code: 'WS_ERR_TOO_MANY_BUFFERED_PARTS' }])
      t.ok(await eventually(() => built.app.secureWs.stats().users.alice === undefined), 'alice\'s connection is gone')
      await other.close()
    })
  }

  t.test('fragments adding up past maxPayloadBytes: 1009 from ws', async (t) => {
    const built = await build(t)
    const peer = await admitted(t, built)
    // 65 fragments of 1 KiB: 66,560 bytes, over the 65,536 limit, in frames far under it.
    peer.write(fragmented(Array.from({ length: 65 }, () => Buffer.alloc(1024, 0x20))))
    t.same(await peer.closeFrame(), { code: 1009, reason: '' })
    t.same(textMessages(peer), [{ type: 'pong' }])
  })
})

t.test('deeply nested JSON answers an error frame and the connection stays usable', async (t) => {
  const DEPTH = 100_000
  const arrays = '['.repeat(DEPTH) + ']'.repeat(DEPTH)
  const objects = '{"a":'.repeat(DEPTH) + '1' + '}'.repeat(DEPTH)
  // 100,000 levels take 200-600 KB; the limits are raised so the parser, not the size check, meets them.
  const built = await build(t, { options: { limits: { maxPayloadBytes: 1024 * 1024, messagesPerSecond: 100, messagesPerMinute: 1000 } } })
  const c = await connect(built.url('/ws/alice-1'), { token: sign('alice') })
  const rows: Record<string, [string, unknown]> = {
    'nested arrays as a payload that must be an object': [`{"type":"echo","payload":${arrays}}`, { type: 'error', message: 'Invalid payload: / Expected object' }],
    'nested arrays where a string must be': [`{"type":"echo","payload":{"text":${arrays}}}`, { type: 'error', message: 'Invalid payload: /text Expected string' }],
    'nested objects, with a word that makes the prototype-poisoning scan run': [`{"type":"echo","payload":${objects},"note":"constructor"}`, { type: 'error', message: 'Invalid payload: /text Expected required property' }],
    'nested objects behind an escape (the scan again)': [`{"type":"echo","payload":${objects},"note":"\\n"}`, { type: 'error', message: 'Invalid payload: /text Expected required property' }],
    'unbalanced: 100,000 opening brackets': [`{"type":"echo","payload":${'['.repeat(DEPTH)}}`, { type: 'error', message: 'Invalid JSON' }],
    'nested arrays as the whole message': [arrays, { type: 'error', message: 'A message must be a JSON object with a string "type"' }],
    'nested arrays given to a message without a payload schema': [`{"type":"ping","payload":${arrays}}`, { type: 'error', message: 'Invalid payload: this message takes no payload' }]
  }
  for (const [name, [text, answer]] of Object.entries(rows)) {
    await t.test(name, async (t) => {
      c.send(text)
      t.same(await c.next(10_000), answer)
      c.send({ type: 'ping' })
      t.same(await c.next(), { type: 'pong' }, 'still usable')
    })
  }
  await c.close()
  t.same(parseLogs(built.logs).filter((line) => (line.level ?? 0) >= 50), [], 'nothing failed inside the server')

  t.test('at the default maxPayloadBytes the same nesting is too big: 1009 from ws', async (t) => {
    const small = await build(t)
    const peer = await admitted(t, small)
    peer.write(clientFrame(OP.text, `{"type":"echo","payload":${arrays}}`))
    t.same(await peer.closeFrame(), { code: 1009, reason: '' })
    t.same(textMessages(peer), [{ type: 'pong' }])
  })
})
