import t from 'tap'
import { Registry } from 'prom-client'
import type { SecureWsAuditEvent } from '../lib/index.js'
import { ORIGIN, build, connect, sign, closeOf, parseLogs } from './helpers.js'

/** Events without their timing, which a test cannot know. */
function withoutDuration (events: SecureWsAuditEvent[]): unknown[] {
  return events.map((event) => {
    if (event.type !== 'closed') return event
    const { durationMs, ...rest } = event
    return { ...rest, durationMs: typeof durationMs === 'number' && durationMs >= 0 }
  })
}

t.test('the audit hook sees refusals, connections, invalid and forbidden messages, rate limits and closes, and never a token', async (t) => {
  const events: SecureWsAuditEvent[] = []
  const { url } = await build(t, { options: { audit: (event) => { events.push(event) }, limits: { messagesPerSecond: 4 } } })
  const tokens = [sign('alice'), sign('bob')]

  const badOrigin = await connect(url('/ws/alice-1'), { token: tokens[0], origin: 'https://evil.test' })
  await closeOf(badOrigin)
  const badSignature = await connect(url('/ws/alice-1'), { token: tokens[0]!.slice(0, -3) + 'abc' })
  await closeOf(badSignature)
  const missing = await connect(url('/ws/alice-1'))
  await closeOf(missing)
  const denied = await connect(url('/ws/bob-1'), { token: tokens[0] })
  await closeOf(denied)

  const alice = await connect(url('/ws/alice-1'), { token: tokens[0] })
  alice.send('{not json')
  await alice.next()
  alice.send({ type: 'echo', payload: { text: 5 } })
  await alice.next()
  alice.send({ type: 'admin' })
  await alice.next()
  await alice.close()

  const bob = await connect(url('/ws/bob-1'), { token: tokens[1] })
  for (let i = 0; i < 5; i++) bob.send({ type: 'ping' })
  await closeOf(bob)

  const route = '/ws/:sessionId'
  const ip = '127.0.0.1'
  const connectionIds = events.filter((e) => e.type === 'connected').map((e) => (e as { connectionId: string }).connectionId)
  t.equal(connectionIds.length, 2)
  const [aliceId, bobId] = connectionIds
  t.same(withoutDuration(events), [
    { type: 'refused', kind: 'originNotAllowed', userId: undefined, ip, origin: 'https://evil.test', route, tokenRefusal: undefined },
    { type: 'refused', kind: 'invalidToken', userId: undefined, ip, origin: ORIGIN, route, tokenRefusal: 'badSignature' },
    { type: 'refused', kind: 'invalidToken', userId: undefined, ip, origin: ORIGIN, route, tokenRefusal: 'missing' },
    { type: 'refused', kind: 'accessDenied', userId: 'alice', ip, origin: ORIGIN, route, tokenRefusal: undefined },
    { type: 'connected', userId: 'alice', connectionId: aliceId, ip, origin: ORIGIN, route },
    { type: 'invalidMessage', userId: 'alice', connectionId: aliceId, route, error: 'invalidJson', messageType: undefined },
    { type: 'invalidMessage', userId: 'alice', connectionId: aliceId, route, error: 'invalidPayload', messageType: 'echo' },
    { type: 'forbidden', userId: 'alice', connectionId: aliceId, route, messageType: 'admin' },
    { type: 'closed', kind: 'client', code: 1005, userId: 'alice', connectionId: aliceId, route, durationMs: true },
    { type: 'connected', userId: 'bob', connectionId: bobId, ip, origin: ORIGIN, route },
    { type: 'rateLimited', userId: 'bob', connectionId: bobId, route },
    { type: 'closed', kind: 'rateLimited', code: 1008, userId: 'bob', connectionId: bobId, route, durationMs: true }
  ])
  const all = JSON.stringify(events)
  for (const token of tokens) t.notOk(all.includes(token), 'no event holds a token')
})

t.test('a lockout is one audit event and one log line, not one per attempt', async (t) => {
  const events: SecureWsAuditEvent[] = []
  const { url, logs } = await build(t, { options: { audit: (event) => { events.push(event) }, limits: { authFailuresPerMinute: 3 } } })
  for (let i = 0; i < 3; i++) await closeOf(await connect(url('/ws/alice-1'), { token: 'bad' }))
  for (let i = 0; i < 3; i++) {
    const locked = await connect(url('/ws/alice-1'), { token: sign('alice') })
    t.equal(locked.status, 429)
  }
  const lockouts = events.filter((e) => e.type === 'lockedOut')
  t.equal(lockouts.length, 1)
  t.match(lockouts[0], { type: 'lockedOut', ip: '127.0.0.1', lockedOutForS: Number })
  t.equal(events.filter((e) => e.type === 'refused' && e.kind === 'tooManyAuthFailures').length, 3, 'each 429 is audited')
  t.equal(parseLogs(logs).filter((line) => line.msg === 'client address locked out after failed authentications').length, 1)
})

t.test('an audit hook that throws is logged and changes nothing', async (t) => {
  const { url, logs } = await build(t, { options: { audit: () => { throw new Error('siem down') } } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  c.send({ type: 'ping' })
  t.same(await c.next(), { type: 'pong' })
  await c.close()
  t.ok(parseLogs(logs).some((line) => line.msg === 'fastify-secure-ws: audit hook failed'))
})

t.test('prometheus: the contract\'s metrics, every reason from 0, no user id, address, session or token', async (t) => {
  const registry = new Registry()
  const { url, app } = await build(t, { options: { prometheus: { registry }, limits: { messagesPerSecond: 3 } } })
  const page0 = await registry.metrics()
  for (const reason of ['originNotAllowed', 'invalidToken', 'accessDenied', 'tooManyConnections', 'storeUnavailable', 'tooManyAuthFailures']) {
    t.match(page0, `secure_ws_refusals_total{reason="${reason}"} 0`)
  }
  for (const reason of ['rateLimited', 'messageTooBig', 'tokenExpired', 'loggedOut', 'disconnected', 'heartbeatTimeout', 'slowConsumer', 'shuttingDown', 'internalError']) {
    t.match(page0, `secure_ws_closes_total{reason="${reason}"} 0`)
  }
  t.match(page0, '# TYPE secure_ws_connections gauge')
  t.match(page0, 'secure_ws_messages_total 0')

  const token = sign('alice')
  await closeOf(await connect(url('/ws/alice-1'), { token: 'bad' }))
  const open = await connect(url('/ws/alice-1'), { token })
  open.send({ type: 'ping' })
  await open.next()
  t.match(await registry.metrics(), 'secure_ws_connections 1')
  const limited = await connect(url('/ws/alice-1'), { token })
  for (let i = 0; i < 3; i++) limited.send({ type: 'ping' })
  await closeOf(limited)
  await open.close()
  await app.secureWs.disconnectUser('nobody')

  const page = await registry.metrics()
  t.match(page, 'secure_ws_refusals_total{reason="invalidToken"} 1')
  t.match(page, 'secure_ws_closes_total{reason="rateLimited"} 1')
  t.match(page, 'secure_ws_messages_total 4', 'every inbound frame counts, the one over the limit too')
  t.match(page, 'secure_ws_connections 0')
  t.same(await registry.metrics(), page, 'a second scrape adds nothing that did not happen')
  for (const secret of ['alice', '127.0.0.1', 'alice-1', token]) t.notOk(page.includes(secret), `the page does not hold ${secret}`)
})
