/**
 * The example's per-address lockout, as /work/shared/example-contract.md words it: once
 * WS_MAX_AUTH_FAILURES_PER_MINUTE upgrades from one client IP address have been refused with
 * 4401 within the last sixty seconds, every further upgrade from that address is refused
 * before the upgrade, whatever its token, with HTTP 429 and a Retry-After header (whole
 * seconds until the oldest of those failures leaves the window); other addresses are not
 * affected; `0` turns the lockout off; the default is 30.
 *
 * The addresses are two of this machine's loopback addresses: the clients bind 127.0.0.1
 * and 127.0.0.2 as their source (ws's localAddress), the server listens on 127.0.0.1.
 */
import t, { type Test } from 'tap'
import { startExample, type ExampleProcess } from './example-process.js'
import { INVALID_TOKEN, admittedClient, ExampleClient, nowSeconds, tokenSigner, type Teardown } from './example-helpers.js'

const SECRET = 'example-lockout-test-secret-0123456789abcd'
const sign = tokenSigner(SECRET)
const PATH = '/ws/sessions/alice-1'

/** Tokens that each fail one check, for failures that differ as real attacks would. */
const badTokens = (): string[] => [
  tokenSigner('not-the-secret-0123456789abcdef0123')({ sub: 'alice' }),
  sign({ sub: 'alice', exp: nowSeconds() - 60 }),
  'not.a.token',
  sign({ sub: undefined })
]

/** One upgrade from `localAddress` with `token`, refused with 4401 as the contract says. */
async function failAuth (t: Test, example: ExampleProcess, token: string, localAddress = '127.0.0.1'): Promise<void> {
  const client = new ExampleClient(example, PATH, { token, localAddress })
  t.teardown(() => client.end())
  t.equal(await client.opened, true, `from ${localAddress}: the upgrade completes`)
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: INVALID_TOKEN }, `from ${localAddress}: closed 4401`)
}

/** An upgrade with a valid token; resolves with the HTTP refusal, or undefined when admitted. */
async function refusalOf (t: Teardown, example: ExampleProcess, localAddress: string): Promise<ExampleClient['refusal']> {
  const client = new ExampleClient(example, PATH, { token: sign({ sub: 'alice' }), localAddress })
  t.teardown(() => client.end())
  if (await client.opened) {
    client.send({ type: 'ping' })
    const event = await client.nextEvent()
    if (event.kind === 'closed') throw new Error(`neither admitted nor answered 429: closed ${event.closed.code} "${event.closed.reason}"`)
    await client.end()
    return undefined
  }
  if (client.refusal === undefined) throw new Error('the upgrade failed without an HTTP answer')
  return client.refusal
}

t.test('after WS_MAX_AUTH_FAILURES_PER_MINUTE 4401s from an address, its next upgrade gets 429 with Retry-After; another address is not affected', async (t) => {
  const example = await startExample(t, { WS_JWT_SECRET: SECRET, WS_MAX_AUTH_FAILURES_PER_MINUTE: '3' })
  const firstFailure = Date.now()
  const [a, b, c] = badTokens()
  await failAuth(t, example, a!)
  await failAuth(t, example, b!)
  t.equal(await refusalOf(t, example, '127.0.0.1'), undefined, 'after two failures of three, a valid token is still admitted')
  await failAuth(t, example, c!)

  const refusal = await refusalOf(t, example, '127.0.0.1')
  t.equal(refusal?.status, 429, 'after the third failure, a valid token from the same address gets HTTP 429')
  const retryAfter = String(refusal?.headers['retry-after'])
  t.match(retryAfter, /^\d+$/, 'Retry-After is in whole seconds')
  const elapsedS = (Date.now() - firstFailure) / 1000
  t.ok(Number(retryAfter) <= 60, `Retry-After ${retryAfter} is at most 60`)
  t.ok(Number(retryAfter) >= Math.floor(60 - elapsedS), `Retry-After ${retryAfter}: until the oldest failure, ${elapsedS.toFixed(1)} s ago, leaves the window`)
  t.equal((await refusalOf(t, example, '127.0.0.1'))?.status, 429, 'and so is the next one')

  t.equal(await refusalOf(t, example, '127.0.0.2'), undefined, 'a valid token from 127.0.0.2 is admitted')
  await failAuth(t, example, a!, '127.0.0.2')
  t.pass('an invalid token from 127.0.0.2 is still refused with 4401, not 429')
})

t.test('WS_MAX_AUTH_FAILURES_PER_MINUTE defaults to 30', async (t) => {
  const example = await startExample(t, { WS_JWT_SECRET: SECRET })
  const tokens = badTokens()
  for (let i = 0; i < 29; i++) await failAuth(t, example, tokens[i % tokens.length]!)
  t.equal(await refusalOf(t, example, '127.0.0.1'), undefined, 'after 29 failures a valid token is admitted')
  await failAuth(t, example, tokens[0]!)
  t.equal((await refusalOf(t, example, '127.0.0.1'))?.status, 429, 'after the 30th, HTTP 429')
})

t.test('WS_MAX_AUTH_FAILURES_PER_MINUTE=0 turns the lockout off', async (t) => {
  const example = await startExample(t, { WS_JWT_SECRET: SECRET, WS_MAX_AUTH_FAILURES_PER_MINUTE: '0' })
  const tokens = badTokens()
  // More than the default 30, which a bug could fall back to.
  for (let i = 0; i < 40; i++) await failAuth(t, example, tokens[i % tokens.length]!)
  await admittedClient(t, example, PATH, { token: sign({ sub: 'alice' }) })
  t.pass('after 40 failures within a minute a valid token is still admitted')
})
