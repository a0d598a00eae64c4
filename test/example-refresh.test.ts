/**
 * `refresh` in the example, as /work/shared/example-contract.md words it: a valid token for
 * the same user is answered `{"type":"refreshed","exp":<the new token's exp>}`; from then on
 * the connection is closed with 4401 at the new token's `exp` (at most 5 s after it, the
 * clock tolerance), not the old one's, and the new token's `scope` counts for every later
 * message; a token that fails any check or names another user closes the connection with
 * 4401 `Invalid or expired authentication token`. (A revoked token: example-logout.test.ts.)
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { createSigner } from 'fast-jwt'
import { within } from './helpers.js'
import { startExample } from './example-process.js'
import { INVALID_TOKEN, PONG, admittedClient, nowSeconds, tokenSigner, unsignedToken, type Received } from './example-helpers.js'

const SECRET = 'example-refresh-test-secret-0123456789abcd'
const sign = tokenSigner(SECRET)
const CLOCK_TOLERANCE_MS = 5000
const FORBIDDEN = { type: 'error', message: 'Forbidden' }
const refresh = (token: string): unknown => ({ type: 'refresh', payload: { token } })

// Message rates raised: the checks here ask many questions of one user in a second.
const example = startExample(t, { WS_JWT_SECRET: SECRET, WS_MAX_MESSAGES_PER_SECOND: '1000', WS_MAX_MESSAGES_PER_MINUTE: '100000' })

interface ExpiryOutcome {
  oldExp: number
  newExp: number
  answer: unknown
  /** The answer to a ping sent once the old token is past its exp and the tolerance. */
  pastOldExp: unknown
  closed: Received
  closedAt: number
}

/**
 * A connection whose token expires in 3 s is refreshed with one that expires in 12 s, and
 * watched until it closes. Runs beside the other tests: it takes up to 17 s.
 */
async function expiryScenario (): Promise<ExpiryOutcome> {
  const server = await example
  const oldExp = nowSeconds() + 3
  const newExp = nowSeconds() + 12
  const client = await admittedClient(t, server, '/ws/sessions/alice-1', { token: sign({ sub: 'alice', exp: oldExp }) })
  const answer = await client.ask(refresh(sign({ sub: 'alice', exp: newExp })))
  await sleep(oldExp * 1000 + CLOCK_TOLERANCE_MS + 1000 - Date.now())
  // It sends nothing unasked, so the next event is the pong, or the close if it came early.
  client.send({ type: 'ping' })
  const pinged = await client.nextEvent()
  const pastOldExp = pinged.kind === 'frame' ? pinged.frame : pinged
  const closed = await client.nextEvent(newExp * 1000 + CLOCK_TOLERANCE_MS + 5000 - Date.now())
  return { oldExp, newExp, answer, pastOldExp, closed, closedAt: Date.now() }
}
const expiry = expiryScenario().then((result) => ({ result }), (error: unknown) => ({ error, result: undefined }))

t.test('refresh with a valid token for the same user: refreshed with the new exp; the new scope counts for later messages', async (t) => {
  const server = await example
  const granting = await admittedClient(t, server, '/ws/sessions/alice-1', { token: sign({ sub: 'alice' }) })
  t.strictSame(await granting.ask({ type: 'stop' }), FORBIDDEN, 'without scope trade, stop is forbidden')
  const exp = nowSeconds() + 900
  t.strictSame(await granting.ask(refresh(sign({ sub: 'alice', exp, scope: 'read trade' }))), { type: 'refreshed', exp })
  t.strictSame(await granting.ask({ type: 'stop' }), { type: 'status', data: { id: 'alice-1', owner: 'alice', state: 'stopped' } }, 'after a refresh adding trade, stop succeeds')

  const revoking = await admittedClient(t, server, '/ws/sessions/bob-1', { token: sign({ sub: 'bob', scope: 'trade' }) })
  const bobExp = nowSeconds() + 700
  t.strictSame(await revoking.ask(refresh(sign({ sub: 'bob', exp: bobExp, scope: 'read' }))), { type: 'refreshed', exp: bobExp })
  t.strictSame(await revoking.ask({ type: 'stop' }), FORBIDDEN, 'after a refresh dropping trade, stop is forbidden')
  t.strictSame(await revoking.ask({ type: 'ping' }), PONG, 'and the connection stays open')
})

t.test('refresh with a token that fails any check, or names another user, closes 4401 "Invalid or expired authentication token"', async (t) => {
  const server = await example
  const now = nowSeconds()
  const cases: Array<[string, string]> = [
    ['badly signed', tokenSigner('not-the-secret-0123456789abcdef0123')({ sub: 'alice' })],
    ['expired', sign({ sub: 'alice', exp: now - 60 })],
    ['not yet valid (nbf in a minute)', sign({ sub: 'alice', nbf: now + 60 })],
    ['issued in the future (iat in a minute)', sign({ sub: 'alice', iat: now + 60 })],
    ['alg none', unsignedToken({ sub: 'alice', iat: now, exp: now + 600 })],
    ['HS512', createSigner({ key: SECRET, algorithm: 'HS512' })({ sub: 'alice', iat: now, exp: now + 600 })],
    ['no sub', sign({ sub: undefined })],
    ['no exp', sign({ sub: 'alice', exp: undefined })],
    ['malformed', 'not.a.token'],
    ['empty', ''],
    ['another user', sign({ sub: 'bob' })]
  ]
  for (const [what, token] of cases) {
    const client = await admittedClient(t, server, '/ws/sessions/alice-1', { token: sign({ sub: 'alice' }) })
    client.send(refresh(token))
    t.strictSame(await client.nextEvent(), { kind: 'closed', closed: INVALID_TOKEN }, what)
  }
})

async function expiryOutcome (): Promise<ExpiryOutcome> {
  const outcome = await within(expiry, 40_000, 'expiry scenario')
  if (outcome.result === undefined) throw outcome.error
  return outcome.result
}

t.test('after a refresh the connection closes with 4401 at the new token\'s exp, not the old one\'s', async (t) => {
  const { oldExp, newExp, answer, pastOldExp, closed, closedAt } = await expiryOutcome()
  t.strictSame(answer, { type: 'refreshed', exp: newExp })
  t.strictSame(pastOldExp, PONG, `still open ${CLOCK_TOLERANCE_MS / 1000 + 1} s after the old token's exp`)
  t.strictSame(closed, { kind: 'closed', closed: INVALID_TOKEN })
  // Timers may fire a little early against the wall clock; the old exp is 9 s earlier.
  t.ok(closedAt >= newExp * 1000 - 250, `closed ${closedAt - newExp * 1000} ms after the new exp, not before it (the old exp was ${newExp - oldExp} s earlier)`)
})

t.test('after a refresh the connection closes at most 5 s after the new token\'s exp', async (t) => {
  const { newExp, closedAt } = await expiryOutcome()
  // Delivery of the close frame over loopback on a busy machine.
  const DELIVERY_MS = 100
  t.ok(closedAt <= newExp * 1000 + CLOCK_TOLERANCE_MS + DELIVERY_MS, `closed ${closedAt - newExp * 1000} ms after the new exp: at most ${CLOCK_TOLERANCE_MS} ms (+${DELIVERY_MS} ms delivery)`)
})
