/**
 * `logout` in the example, as /work/shared/example-contract.md words it: every connection of
 * the user, this one included, is closed with 4403 `Logged out`; from then on a token of
 * that user whose `iat` is at or before the logout (or that has no `iat`) is refused with
 * 4401 at connect and at refresh; a token issued after the logout works; other users are
 * not affected.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { startExample, type ExampleProcess } from './example-process.js'
import { INVALID_TOKEN, LOGGED_OUT, PONG, admittedClient, openClient, tokenSigner } from './example-helpers.js'

const SECRET = 'example-logout-test-secret-0123456789abcde'
const sign = tokenSigner(SECRET)
const ALICE = '/ws/sessions/alice-1'
const BOB = '/ws/sessions/bob-1'

/** A connect with `token` that completes the upgrade and is then closed 4401, nothing before. */
async function assertRefusedAtConnect (t: Test, example: ExampleProcess, token: string, what: string): Promise<void> {
  const client = await openClient(t, example, ALICE, { token })
  t.equal(await client.opened, true, `${what}: the upgrade completes`)
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: INVALID_TOKEN }, `${what}: refused 4401 at connect`)
}

/** A refresh with `token` on a connection admitted with `valid` closes it 4401. */
async function assertRefusedAtRefresh (t: Test, example: ExampleProcess, valid: string, token: string, what: string): Promise<void> {
  const client = await admittedClient(t, example, ALICE, { token: valid })
  client.send({ type: 'refresh', payload: { token } })
  t.strictSame(await client.nextEvent(), { kind: 'closed', closed: INVALID_TOKEN }, `${what}: refused 4401 at refresh`)
}

t.test('logout closes every connection of the user with 4403 "Logged out" and revokes the tokens issued until then', async (t) => {
  const example = await startExample(t, { WS_JWT_SECRET: SECRET })
  const issuedBefore = Math.floor(Date.now() / 1000) - 30
  const aliceOld = sign({ sub: 'alice', iat: issuedBefore })
  const bobOld = sign({ sub: 'bob', iat: issuedBefore })
  const alice = [
    await admittedClient(t, example, ALICE, { token: aliceOld }),
    await admittedClient(t, example, ALICE, { token: sign({ sub: 'alice' }) }),
    await admittedClient(t, example, ALICE, { token: sign({ sub: 'alice', iat: undefined }) })
  ]
  const bob = await admittedClient(t, example, BOB, { token: bobOld })

  const sentAt = Date.now()
  alice[0]!.send({ type: 'logout' })
  for (const [i, client] of alice.entries()) {
    t.strictSame(await client.nextEvent(), { kind: 'closed', closed: LOGGED_OUT }, `alice's connection ${i + 1} of 3${i === 0 ? ' (the one that logged out)' : ''} closes 4403`)
  }
  const loggedOutBy = Date.now()
  t.strictSame(await bob.ask({ type: 'ping' }), PONG, 'bob\'s connection is not affected')

  // `iat` at or before the logout: before it, in its very second, or none at all.
  const atLogout = sign({ sub: 'alice', iat: Math.floor(sentAt / 1000) })
  const withoutIat = sign({ sub: 'alice', iat: undefined })
  t.notOk('iat' in JSON.parse(Buffer.from(withoutIat.split('.')[1]!, 'base64url').toString()), 'the token without iat has none')
  await assertRefusedAtConnect(t, example, aliceOld, 'a token issued before the logout')
  await assertRefusedAtConnect(t, example, atLogout, 'a token issued in the second of the logout')
  await assertRefusedAtConnect(t, example, withoutIat, 'a token without iat')

  // A token issued at least a second after the logout, once that time has come.
  const issuedAfter = Math.ceil((loggedOutBy + 1000) / 1000)
  await sleep(issuedAfter * 1000 - Date.now())
  const fresh = sign({ sub: 'alice', iat: issuedAfter })
  const admitted = await admittedClient(t, example, ALICE, { token: fresh })
  t.pass('a token issued after the logout is admitted')
  t.strictSame(await admitted.ask({ type: 'get_status' }), { type: 'status', data: { id: 'alice-1', owner: 'alice', state: 'running' } }, 'and works')
  const exp = issuedAfter + 600
  t.strictSame(await admitted.ask({ type: 'refresh', payload: { token: sign({ sub: 'alice', iat: issuedAfter, exp }) } }), { type: 'refreshed', exp }, 'a refresh with a token issued after the logout works')

  await assertRefusedAtRefresh(t, example, fresh, aliceOld, 'a token issued before the logout')
  await assertRefusedAtRefresh(t, example, fresh, atLogout, 'a token issued in the second of the logout')
  await assertRefusedAtRefresh(t, example, fresh, withoutIat, 'a token without iat')

  const bobAgain = await admittedClient(t, example, BOB, { token: bobOld })
  t.pass('bob\'s token issued before alice\'s logout still connects')
  await bobAgain.end()
  t.strictSame(await bob.ask({ type: 'ping' }), PONG, 'bob\'s first connection is still open')
})
