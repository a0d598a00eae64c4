import t from 'tap'
import { build, connect, sign, closeOf } from './helpers.js'

const LOGGED_OUT = { code: 4403, reason: 'Logged out' }
const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
const nowS = (): number => Math.floor(Date.now() / 1000)

t.test('revokeUser closes every connection of the user with 4403 Logged out, and only theirs', async (t) => {
  const { url, app } = await build(t)
  const alice = [await connect(url('/ws/alice-1'), { token: sign('alice') }), await connect(url('/ws/alice-1'), { token: sign('alice') })]
  const bob = await connect(url('/ws/bob-1'), { token: sign('bob') })
  t.equal(await app.secureWs.revokeUser('alice'), 2, 'resolves with how many closed here')
  for (const c of alice) t.same(await closeOf(c), LOGGED_OUT)
  bob.send({ type: 'ping' })
  t.same(await bob.next(), { type: 'pong' })
  t.equal(app.secureWs.stats().closes.loggedOut, 2)
  await bob.close()
})

t.test('after revokeUser, tokens issued at or before it are refused with 4401; later ones work', async (t) => {
  const { url, app, logs } = await build(t)
  const issued = nowS() - 1
  await app.secureWs.revokeUser('alice')
  for (const token of [sign('alice', { iat: issued }), sign('alice', { iat: undefined })]) {
    const c = await connect(url('/ws/alice-1'), { token })
    t.same(await closeOf(c), INVALID_TOKEN)
  }
  t.ok(logs.some((line) => line.includes('"tokenRefusal":"revoked"')), 'the refusal says why')
  t.end()
})

t.test('a token issued after the revocation is admitted; one issued at or before it is not', async (t) => {
  const { url, app } = await build(t)
  await app.secureWs.revokeUser('alice', { issuedBefore: Date.now() - 10_000 })
  const fresh = await connect(url('/ws/alice-1'), { token: sign('alice') })
  t.ok(await fresh.admitted(), 'issued after')
  await fresh.close()
  const old = await connect(url('/ws/alice-1'), { token: sign('alice', { iat: nowS() - 20 }) })
  t.same(await closeOf(old), INVALID_TOKEN, 'issued before')
  const exact = await connect(url('/ws/alice-1'), { token: sign('alice', { iat: Math.floor((Date.now() - 10_000) / 1000) }) })
  t.same(await closeOf(exact), INVALID_TOKEN, 'issued in the same second, at or before it')
})

t.test('a revocation expires after its ttlMs', async (t) => {
  const { url, app } = await build(t)
  await app.secureWs.revokeUser('alice', { ttlMs: 300 })
  const token = sign('alice', { iat: nowS() - 5 })
  const refused = await connect(url('/ws/alice-1'), { token })
  t.same(await closeOf(refused), INVALID_TOKEN)
  await new Promise((resolve) => setTimeout(resolve, 400))
  const admitted = await connect(url('/ws/alice-1'), { token })
  t.ok(await admitted.admitted())
  await admitted.close()
})

t.test('revokeUser validates its arguments', async (t) => {
  const { app } = await build(t)
  await t.rejects(app.secureWs.revokeUser(''), { code: 'FST_SECURE_WS_INVALID_OPTION', message: 'revokeUser: userId must be a non-empty string' })
  await t.rejects(app.secureWs.revokeUser('alice', { ttlMs: 0 }), { code: 'FST_SECURE_WS_INVALID_OPTION', message: 'revokeUser: ttlMs must be a positive integer' })
  await t.rejects(app.secureWs.revokeUser('alice', { issuedBefore: Number.NaN }), { code: 'FST_SECURE_WS_INVALID_OPTION', message: 'revokeUser: issuedBefore must be a time in ms since the epoch' })
})
