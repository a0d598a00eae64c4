/**
 * `GET /metrics` of the example, as /work/shared/example-contract.md words it: 200 in the
 * Prometheus text format (`text/plain; version=0.0.4`) with at least secure_ws_connections
 * (gauge), secure_ws_refusals_total{reason}, secure_ws_closes_total{reason} and
 * secure_ws_messages_total (counters); each listed reason at 0 before it first happens; the
 * values move as the contract says; no line holds a user id, an IP address, a session id or
 * a token. Each check compares two scrapes and asserts every counter that moved.
 */
import t, { type Test } from 'tap'
import { startExample, type ExampleProcess } from './example-process.js'
import { freePort } from './redis-server.js'
import {
  INVALID_TOKEN, NO_ANSWER_TO_PING, PONG, ExampleClient, admittedClient, openClient, scrapeMetrics, tokenSigner, type Closed, type MetricsPage
} from './example-helpers.js'

const SECRET = 'example-metrics-test-secret-0123456789abcd'
const sign = tokenSigner(SECRET)
const REFUSAL_REASONS = ['originNotAllowed', 'invalidToken', 'accessDenied', 'tooManyConnections', 'storeUnavailable', 'tooManyAuthFailures']
const CLOSE_REASONS = ['rateLimited', 'messageTooBig', 'tokenExpired', 'loggedOut', 'disconnected', 'heartbeatTimeout', 'slowConsumer', 'shuttingDown', 'internalError']
const MAX_PAYLOAD_BYTES = 1000
const AUTH_FAILURES = 3
const ALICE = '/ws/sessions/alice-1'

/** Every token this file handed to a server: none may appear on the page. */
const tokens: string[] = []
const token = (claims: Record<string, unknown>): string => {
  const signed = sign(claims)
  tokens.push(signed)
  return signed
}

const example = startExample(t, {
  WS_JWT_SECRET: SECRET,
  WS_MAX_CONNECTIONS_PER_USER: '2',
  WS_MAX_MESSAGES_PER_SECOND: '5',
  WS_MAX_MESSAGES_PER_MINUTE: '100000',
  WS_MAX_PAYLOAD_BYTES: String(MAX_PAYLOAD_BYTES),
  WS_MAX_AUTH_FAILURES_PER_MINUTE: String(AUTH_FAILURES),
  WS_HEARTBEAT_INTERVAL_MS: '300'
})

const refusals = (reason: string): string => `secure_ws_refusals_total{reason="${reason}"}`
const closes = (reason: string): string => `secure_ws_closes_total{reason="${reason}"}`
const MESSAGES = 'secure_ws_messages_total'
const CONNECTIONS = 'secure_ws_connections'

/** What moved between two scrapes, among the counters of this contract. */
function moved (before: MetricsPage, after: MetricsPage): Record<string, number> {
  const changes: Record<string, number> = {}
  for (const name of [...after.values.keys()].filter((name) => /^secure_ws_(refusals_total|closes_total|messages_total)\b/.test(name))) {
    const change = after.values.get(name)! - (before.values.get(name) ?? 0)
    if (change !== 0) changes[name] = change
  }
  return changes
}

/** Scrapes until `name` reads `value` (the server sees a close a moment after the client), at most ~2 s. */
async function settled (server: ExampleProcess, name: string, value: number): Promise<MetricsPage> {
  let page = await scrapeMetrics(server)
  for (let i = 0; i < 40 && page.values.get(name) !== value; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50))
    page = await scrapeMetrics(server)
  }
  return page
}

/** Opens a client that is refused with `expected`. */
async function refused (t: Test, server: ExampleProcess, path: string, options: ConstructorParameters<typeof ExampleClient>[2], expected: Closed): Promise<void> {
  const client = await openClient(t, server, path, options)
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: expected }, `refused ${expected.code} "${expected.reason}"`)
}

t.test('GET /metrics: 200, Prometheus text format, the four metrics with every reason at 0 before it happens', async (t) => {
  const server = await example
  const page = await scrapeMetrics(server)
  t.equal(page.status, 200)
  t.ok(page.contentType.startsWith('text/plain; version=0.0.4'), `content type ${page.contentType}`)
  t.equal(page.types.get('secure_ws_connections'), 'gauge')
  t.equal(page.types.get('secure_ws_refusals_total'), 'counter')
  t.equal(page.types.get('secure_ws_closes_total'), 'counter')
  t.equal(page.types.get('secure_ws_messages_total'), 'counter')
  t.equal(page.values.get(CONNECTIONS), 0)
  t.equal(page.values.get(MESSAGES), 0)
  for (const reason of REFUSAL_REASONS) t.equal(page.values.get(refusals(reason)), 0, `refusals ${reason} at 0`)
  for (const reason of CLOSE_REASONS) t.equal(page.values.get(closes(reason)), 0, `closes ${reason} at 0`)
})

t.test('secure_ws_refusals_total: each refusal counts under its reason, nothing else moves', async (t) => {
  const server = await example
  const step = async (what: string, act: () => Promise<void>, expected: Record<string, number>): Promise<void> => {
    const before = await scrapeMetrics(server)
    await act()
    t.strictSame(moved(before, await scrapeMetrics(server)), expected, what)
  }
  await step('origin not allowed', async () => await refused(t, server, ALICE, { origin: 'http://evil.test', token: token({ sub: 'alice' }) }, { code: 1008, reason: 'Origin not allowed' }), { [refusals('originNotAllowed')]: 1 })
  await step('invalid token', async () => await refused(t, server, ALICE, { token: 'not.a.token' }, INVALID_TOKEN), { [refusals('invalidToken')]: 1 })
  await step('access denied', async () => await refused(t, server, '/ws/sessions/bob-1', { token: token({ sub: 'alice' }) }, { code: 1008, reason: 'Access denied' }), { [refusals('accessDenied')]: 1 })

  const held = [await admittedClient(t, server, ALICE, { token: token({ sub: 'alice' }) }), await admittedClient(t, server, ALICE, { token: token({ sub: 'alice' }) })]
  await step('too many connections', async () => await refused(t, server, ALICE, { token: token({ sub: 'alice' }) }, { code: 1008, reason: 'Too many connections' }), { [refusals('tooManyConnections')]: 1 })
  for (const client of held) await client.end()

  // From an address of its own, so that 127.0.0.1 is not locked out for the other checks.
  await step(`${AUTH_FAILURES} invalid tokens from 127.0.0.2`, async () => {
    for (let i = 0; i < AUTH_FAILURES; i++) await refused(t, server, ALICE, { token: token({ sub: 'alice', exp: 1 }), localAddress: '127.0.0.2' }, INVALID_TOKEN)
  }, { [refusals('invalidToken')]: AUTH_FAILURES })
  await step('locked out', async () => {
    const client = new ExampleClient(server, ALICE, { token: token({ sub: 'alice' }), localAddress: '127.0.0.2' })
    t.teardown(() => client.end())
    t.equal(await client.opened, false)
    t.equal(client.refusal?.status, 429)
  }, { [refusals('tooManyAuthFailures')]: 1 })
})

t.test('secure_ws_refusals_total: a refusal for an unreachable store counts as storeUnavailable', async (t) => {
  // Nothing listens on this port: the store is down from the start.
  const server = await startExample(t, { WS_JWT_SECRET: SECRET, WS_REDIS_URL: `redis://127.0.0.1:${await freePort()}` })
  const before = await scrapeMetrics(server)
  await refused(t, server, ALICE, { token: token({ sub: 'alice' }) }, { code: 1013, reason: 'Try again later' })
  t.strictSame(moved(before, await scrapeMetrics(server)), { [refusals('storeUnavailable')]: 1 })
})

t.test('secure_ws_messages_total counts every inbound frame, valid or not, but not one refused for its size', async (t) => {
  const server = await example
  const client = await admittedClient(t, server, '/ws/sessions/bob-1', { token: token({ sub: 'bob' }) })
  await new Promise((resolve) => setTimeout(resolve, 1200))
  const before = await scrapeMetrics(server)
  t.strictSame(await client.ask({ type: 'ping' }), PONG)
  t.strictSame(await client.ask('{"type":'), { type: 'error', message: 'Invalid JSON' })
  t.strictSame(await client.ask({ type: 'nope' }), { type: 'error', message: 'Unknown message type' })
  client.ws.send(Buffer.from([1, 2, 3]), { binary: true })
  t.strictSame(await client.next(), { type: 'error', message: 'Binary frames are not supported' })
  t.strictSame(moved(before, await scrapeMetrics(server)), { [MESSAGES]: 4 }, 'four frames, four messages')

  const beforeBig = await scrapeMetrics(server)
  client.send(JSON.stringify({ type: 'ping', pad: 'x'.repeat(MAX_PAYLOAD_BYTES) }))
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: { code: 1009, reason: '' } })
  t.strictSame(moved(beforeBig, await settled(server, closes('messageTooBig'), 1)), { [closes('messageTooBig')]: 1 }, 'the frame too big closes the connection, and is no message')
})

t.test('secure_ws_closes_total: server closes count under their reason, a client\'s close does not', async (t) => {
  const server = await example
  const step = async (what: string, act: () => Promise<void>, expected: Record<string, number>): Promise<void> => {
    await new Promise((resolve) => setTimeout(resolve, 1200)) // out of the previous step's one-second window
    const before = await settled(server, CONNECTIONS, 0)
    await act()
    t.strictSame(moved(before, await settled(server, CONNECTIONS, 0)), expected, what)
  }

  await step('a client that closes', async () => {
    const client = await admittedClient(t, server, ALICE, { token: token({ sub: 'alice' }) })
    t.equal((await scrapeMetrics(server)).values.get(CONNECTIONS), 1, 'the gauge counts the open connection')
    await client.end()
  }, { [MESSAGES]: 1 })

  await step('past the message rate', async () => {
    const client = await admittedClient(t, server, ALICE, { token: token({ sub: 'alice' }) })
    for (let i = 0; i < 5; i++) client.send({ type: 'ping' })
    for (let i = 0; i < 4; i++) t.strictSame(await client.next(), PONG)
    t.strictSame(await client.next(), { type: 'error', message: 'Rate limit exceeded. Connection closed.' })
    t.strictSame(await client.nextEvent(), { kind: 'closed', closed: { code: 1008, reason: 'Rate limit exceeded' } })
  }, { [MESSAGES]: 6, [closes('rateLimited')]: 1 })

  await step('a refresh with an invalid token', async () => {
    const client = await admittedClient(t, server, ALICE, { token: token({ sub: 'alice' }) })
    client.send({ type: 'refresh', payload: { token: 'not.a.token' } })
    t.strictSame(await client.nextEvent(), { kind: 'closed', closed: INVALID_TOKEN })
  }, { [MESSAGES]: 2, [closes('tokenExpired')]: 1 })

  await step('a logout with two connections', async () => {
    const clients = [await admittedClient(t, server, ALICE, { token: token({ sub: 'alice' }) }), await admittedClient(t, server, ALICE, { token: token({ sub: 'alice' }) })]
    clients[0]!.send({ type: 'logout' })
    for (const client of clients) t.strictSame(await client.nextEvent(), { kind: 'closed', closed: { code: 4403, reason: 'Logged out' } })
  }, { [MESSAGES]: 3, [closes('loggedOut')]: 2 })

  await step('no answer to pings', async () => {
    const client = await admittedClient(t, server, '/ws/sessions/bob-1', { token: token({ sub: 'bob' }), autoPong: false })
    t.strictSame(await client.nextEvent(), { kind: 'closed', closed: NO_ANSWER_TO_PING })
  }, { [MESSAGES]: 1, [closes('heartbeatTimeout')]: 1 })
})

t.test('no line of the page holds a user id, an IP address, a session id or a token', async (t) => {
  const server = await example
  const page = await scrapeMetrics(server)
  t.ok(tokens.length > 10, 'many tokens were used')
  const leaks = page.text.split('\n').filter((line) =>
    /alice|bob|\b\d{1,3}(\.\d{1,3}){3}\b|::1|::ffff|localhost/i.test(line) || tokens.some((used) => line.includes(used) || line.includes(used.split('.')[2]!)))
  t.strictSame(leaks, [])
})
