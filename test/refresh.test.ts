import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { Type } from '@sinclair/typebox'
import type { MessageDefinition, SecureWsUser } from '../lib/index.js'
import { type Session, build, connect, sign, testRoute, closeOf, parseLogs } from './helpers.js'

const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
const TRY_AGAIN = { code: 1013, reason: 'Try again later' }
const nowS = (): number => Math.floor(Date.now() / 1000)

/** The fixture route plus `refresh` (answers `refreshed` with the new expiry) and `me` (the user's scopes). */
function refreshRoute (): ReturnType<typeof testRoute> {
  const route = testRoute()
  const messages = route.messages as Record<string, MessageDefinition<any, Session, any>>
  return {
    ...route,
    outbound: {
      ...route.outbound,
      refreshed: Type.Object({ exp: Type.Integer() }),
      me: Type.Object({ scopes: Type.Array(Type.String()) })
    },
    messages: {
      ...messages,
      refresh: {
        payload: Type.Object({ token: Type.String() }),
        handler: async (conn, { token }: { token: string }) => {
          const user = await conn.refresh(token)
          if (user !== null) conn.send('refreshed', { exp: Math.floor(user.expiresAt! / 1000) })
        }
      },
      me: { handler: (conn) => { conn.send('me', { scopes: [...conn.user.scopes] }) } }
    }
  }
}

t.test('a valid token for the same user replaces the credential: new expiry, new scopes', async (t) => {
  const { url } = await build(t, { route: refreshRoute() })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice', { exp: nowS() + 2 }) })
  c.send({ type: 'admin' })
  t.same(await c.next(), { type: 'error', message: 'Forbidden' }, 'no admin scope before')
  const exp = nowS() + 30
  c.send({ type: 'refresh', payload: { token: sign('alice', { exp, scope: 'admin' }) } })
  t.same(await c.next(), { type: 'refreshed', exp })
  c.send({ type: 'me' })
  t.same(await c.next(), { type: 'me', scopes: ['admin'] })
  c.send({ type: 'admin' })
  t.same(await c.next(), { type: 'pong' }, 'the new scope counts')
  // Past the first token's expiry (the expiry check runs every 250 ms), still open.
  await sleep(2600)
  c.send({ type: 'ping' })
  t.same(await c.next(), { type: 'pong' }, 'open past the old exp')
  await c.close()
})

t.test('after a refresh the connection closes at the new token\'s exp', async (t) => {
  const { url } = await build(t, { route: refreshRoute() })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice', { exp: nowS() + 60 }) })
  const exp = nowS() + 2
  c.send({ type: 'refresh', payload: { token: sign('alice', { exp }) } })
  t.same(await c.next(), { type: 'refreshed', exp })
  t.same(await closeOf(c, 5000), INVALID_TOKEN, 'closed once the new, shorter credential expires')
})

const failing: Array<[string, () => string]> = [
  ['another user\'s token', () => sign('bob')],
  ['an expired token', () => sign('alice', { exp: nowS() - 10 })],
  ['a badly signed token', () => sign('alice').slice(0, -2) + 'xx'],
  ['garbage', () => 'not-a-jwt']
]
for (const [name, token] of failing) {
  t.test(`refresh with ${name} closes with 4401, logged with the reason and without the token`, async (t) => {
    const { url, app, logs } = await build(t, { route: refreshRoute() })
    const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
    const bad = token()
    c.send({ type: 'refresh', payload: { token: bad } })
    t.same(await closeOf(c), INVALID_TOKEN)
    t.same(app.secureWs.stats().closes.tokenExpired, 1, 'counted as a tokenExpired close')
    t.notOk(logs.join('\n').includes(bad), 'the token is not logged')
    t.ok(parseLogs(logs).some((line) => line.close === 'tokenExpired' && line.userId === 'alice'))
  })
}

t.test('refresh with a revoked token closes with 4401', async (t) => {
  const { url, app } = await build(t, { route: refreshRoute() })
  const old = sign('alice', { iat: nowS() - 5 })
  const c = await connect(url('/ws/bob-1'), { token: sign('bob') })
  await app.secureWs.revokeUser('alice', { issuedBefore: Date.now() - 1000 })
  const a = await connect(url('/ws/alice-1'), { token: sign('alice') })
  a.send({ type: 'refresh', payload: { token: old } })
  t.same(await closeOf(a), INVALID_TOKEN)
  c.send({ type: 'ping' })
  t.same(await c.next(), { type: 'pong' }, 'another user is not affected')
  await c.close()
})

t.test('refresh works through a custom verifyToken; a verifier that throws closes with 1013', async (t) => {
  const users: Record<string, SecureWsUser> = {
    first: { id: 'alice', scopes: [], expiresAt: Date.now() + 60_000 },
    second: { id: 'alice', scopes: ['admin'], expiresAt: Date.now() + 120_000 }
  }
  const { url } = await build(t, {
    route: refreshRoute(),
    options: {
      jwt: undefined,
      verifyToken: async (token) => {
        if (token === 'down') throw new Error('identity provider down')
        return users[token] ?? null
      }
    }
  })
  const c = await connect(url('/ws/alice-1'), { token: 'first' })
  c.send({ type: 'refresh', payload: { token: 'second' } })
  t.same(await c.next(), { type: 'refreshed', exp: Math.floor(users.second!.expiresAt! / 1000) })
  c.send({ type: 'admin' })
  t.same(await c.next(), { type: 'pong' })
  c.send({ type: 'refresh', payload: { token: 'down' } })
  t.same(await closeOf(c), TRY_AGAIN)
})

t.test('a failed refresh is logged once, with why the token was refused', async (t) => {
  const { url, logs } = await build(t, { route: refreshRoute() })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  c.send({ type: 'refresh', payload: { token: sign('bob') } })
  t.same(await closeOf(c), INVALID_TOKEN)
  const lines = parseLogs(logs).filter((line) => line.userId === 'alice' && line.msg === 'websocket connection closed by server')
  t.equal(lines.length, 1)
  t.match(lines[0], { close: 'tokenExpired', code: 4401, tokenRefusal: 'otherUser' })
})
