import { generateKeyPairSync } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import t from 'tap'
import { Type } from '@sinclair/typebox'
import { createSigner } from 'fast-jwt'
import type { MessageDefinition, SecureWsUser } from '../lib/index.js'
import { Client, SECRET, type Session, build, connect, eventually, sign, testRoute, closeOf, parseLogs, refusalLines } from './helpers.js'

const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
const TRY_AGAIN = { code: 1013, reason: 'Try again later' }

const nowS = (): number => Math.floor(Date.now() / 1000)

function base64url (value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url')
}

/** Opens a client and records the `Sec-WebSocket-Protocol` header of the server's 101 response. */
async function connectRecordingProtocol (url: string, token: string): Promise<{ client: Client, header: () => string | string[] | undefined }> {
  let header: string | string[] | undefined
  let upgraded = false
  const client = new Client(url, { token, via: 'protocol' })
  client.ws.once('upgrade', (response: IncomingMessage) => {
    upgraded = true
    header = response.headers['sec-websocket-protocol']
  })
  await client.opened
  return {
    client,
    header: () => {
      if (!upgraded) throw new Error('the server did not complete the upgrade')
      return header
    }
  }
}

/** The fixture route plus a `me` message answering the connection's user id and scopes. */
function routeWithMe (): ReturnType<typeof testRoute> {
  const route = testRoute()
  const messages = route.messages as Record<string, MessageDefinition<any, Session, any>>
  return {
    ...route,
    outbound: { ...route.outbound, me: Type.Object({ user: Type.String(), scopes: Type.Array(Type.String()) }) },
    messages: {
      ...messages,
      me: { handler: (conn) => { conn.send('me', { user: conn.user.id, scopes: [...conn.user.scopes] }) } }
    }
  }
}

t.test('transport', async (t) => {
  t.test('a valid token in ?token= connects', async (t) => {
    const { url } = await build(t)
    const c = await connect(url('/ws/alice-1'), { token: sign('alice'), via: 'query' })
    c.send({ type: 'whoami' })
    t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
    await c.close()
  })

  t.test('a valid token in Sec-WebSocket-Protocol: bearer, <token> connects and negotiates bearer', async (t) => {
    const { url } = await build(t)
    const token = sign('alice')
    const { client, header } = await connectRecordingProtocol(url('/ws/alice-1'), token)
    t.equal(client.ws.protocol, 'bearer')
    t.equal(header(), 'bearer', 'the response names only the bearer subprotocol')
    client.send({ type: 'whoami' })
    t.same(await client.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
    await client.close()
  })

  t.test('an invalid token in the subprotocol still completes the handshake, then gets 4401', async (t) => {
    const { url } = await build(t)
    const token = sign('alice', { exp: nowS() - 60 })
    const { client, header } = await connectRecordingProtocol(url('/ws/alice-1'), token)
    t.equal(await client.opened, true)
    t.equal(client.ws.protocol, 'bearer')
    t.equal(header(), 'bearer')
    t.same(await closeOf(client), INVALID_TOKEN)
  })

  t.test('the token is never echoed in the response Sec-WebSocket-Protocol header', async (t) => {
    const { url } = await build(t)
    for (const token of [sign('alice'), 'garbage.token.value']) {
      const { client, header } = await connectRecordingProtocol(url('/ws/alice-1'), token)
      const value = header()
      t.equal(value, 'bearer')
      t.notOk(String(value).includes(token), 'the header does not contain the token')
      client.ws.close()
      await closeOf(client)
    }
  })

  t.test('bearer offered without a token is refused with 4401', async (t) => {
    const { url } = await build(t)
    const c = await connect(url('/ws/alice-1'), { protocols: ['bearer'] })
    t.equal(c.ws.protocol, 'bearer')
    t.same(await closeOf(c), INVALID_TOKEN)
  })

  t.test('the token is the protocol right after bearer, wherever bearer stands in the list', async (t) => {
    const { url } = await build(t)
    const token = sign('alice')
    for (const protocols of [['chat', 'bearer', token], ['bearer', token, 'chat'], ['chat', 'bearer', token, 'v2']]) {
      const c = await connect(url('/ws/alice-1'), { protocols })
      t.equal(c.ws.protocol, 'bearer', `${protocols.length} offered: bearer is chosen`)
      c.send({ type: 'ping' })
      t.same(await c.next(), { type: 'pong' }, `admitted with bearer at ${protocols.indexOf('bearer')}`)
      await c.close()
    }
    for (const protocols of [['chat', 'bearer'], [token, 'bearer']]) {
      const c = await connect(url('/ws/alice-1'), { protocols })
      t.same(await closeOf(c), INVALID_TOKEN, `[${protocols.map((p) => p === token ? '<token>' : p).join(', ')}] carries no token after bearer`)
    }
  })

  t.test('an empty ?token= is refused with 4401', async (t) => {
    const { url } = await build(t)
    const c = await connect(url('/ws/alice-1?token='))
    t.same(await closeOf(c), INVALID_TOKEN)
  })
})

t.test('tokens refused with 4401', async (t) => {
  // More refusals than the lockout allows from one address: this table is about the token checks.
  const { url, app, logs } = await build(t, { options: { jwt: { key: SECRET, algorithms: ['HS256'], clockToleranceMs: 2000 }, limits: { authFailuresPerMinute: 0 } } })
  const now = nowS()
  const { privateKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' }
  })
  const hs256 = (claims: Record<string, unknown>, key: string = SECRET): string => createSigner({ key, algorithm: 'HS256' })(claims)
  const cases: Record<string, string> = {
    'malformed: not a JWT': 'garbage',
    'malformed: three garbage parts': 'not.a.jwt',
    'malformed: truncated signature': sign('alice').slice(0, -5),
    'bad signature: signed with another secret': hs256({ sub: 'alice', exp: now + 60, iat: now }, 'another-secret-that-is-long-enough-for-hs256'),
    'tampered payload': ((): string => {
      const [h, , s] = sign('alice').split('.')
      return `${h}.${base64url({ sub: 'bob', exp: now + 60, iat: now })}.${s}`
    })(),
    expired: sign('alice', { exp: now - 60 }),
    'nbf in the future beyond the tolerance': sign('alice', { nbf: now + 30 }),
    'iat in the future beyond the tolerance': sign('alice', { iat: now + 30 }),
    'alg none': `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url({ sub: 'alice', exp: now + 60, iat: now })}.`,
    'HS384 with the same secret': createSigner({ key: SECRET, algorithm: 'HS384' })({ sub: 'alice', exp: now + 60, iat: now }),
    'HS512 with the same secret': createSigner({ key: SECRET, algorithm: 'HS512' })({ sub: 'alice', exp: now + 60, iat: now }),
    RS256: createSigner({ key: privateKey, algorithm: 'RS256' })({ sub: 'alice', exp: now + 60, iat: now }),
    'no sub': sign(undefined),
    'empty sub': sign(''),
    'non-string sub': sign(undefined, { sub: 42 }),
    'no exp': hs256({ sub: 'alice', iat: now })
  }
  t.test('no token', async (t) => {
    const c = await connect(url('/ws/alice-1'))
    t.equal(await c.opened, true, 'the upgrade completes so the client can read 4401')
    t.same(await closeOf(c), INVALID_TOKEN)
  })
  for (const [name, token] of Object.entries(cases)) {
    for (const via of ['query', 'protocol'] as const) {
      t.test(`${name} (via ${via})`, async (t) => {
        const c = await connect(url('/ws/alice-1'), { token, via })
        t.equal(await c.opened, true, 'the upgrade completes so the client can read 4401')
        t.same(await closeOf(c), INVALID_TOKEN)
      })
    }
  }
  await t.test('none was admitted, each refusal was logged once as invalidToken without a user id', async (t) => {
    t.same(app.secureWs.stats().users, {})
    t.same(app.secureWs.stats().store.slots, {})
    const lines = refusalLines(logs)
    t.equal(lines.length, 1 + Object.keys(cases).length * 2)
    for (const line of lines) {
      t.equal(line.refusal, 'invalidToken')
      t.equal(line.ip, '127.0.0.1')
      t.notOk('userId' in line)
    }
  })
})

t.test('nbf within the clock tolerance is accepted', async (t) => {
  const { url } = await build(t, { options: { jwt: { key: SECRET, algorithms: ['HS256'], clockToleranceMs: 2000 } } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice', { nbf: nowS() + 1 }) })
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  await c.close()
})

t.test('the user id from sub and the scopes from scope are bound to the connection', async (t) => {
  const { url } = await build(t, { route: routeWithMe() })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice', { scope: 'read admin' }) })
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  c.send({ type: 'me' })
  t.same(await c.next(), { type: 'me', user: 'alice', scopes: ['read', 'admin'] })
  c.send({ type: 'admin' })
  t.same(await c.next(), { type: 'pong' }, 'the admin scope admits the admin message')
  await c.close()

  const noScope = await connect(url('/ws/alice-1'), { token: sign('alice') })
  noScope.send({ type: 'me' })
  t.same(await noScope.next(), { type: 'me', user: 'alice', scopes: [] })
  noScope.send({ type: 'admin' })
  t.same(await noScope.next(), { type: 'error', message: 'Forbidden' })
  await noScope.close()

  const bob = await connect(url('/ws/bob-1'), { token: sign('bob', { scope: 'read' }), via: 'protocol' })
  bob.send({ type: 'whoami' })
  t.same(await bob.next(), { type: 'whoami', user: 'bob', session: 'bob-1' })
  bob.send({ type: 'me' })
  t.same(await bob.next(), { type: 'me', user: 'bob', scopes: ['read'] })
  await bob.close()
})

t.test('a connection is closed with 4401 once its token expires', async (t) => {
  const { url, app } = await build(t)
  const c = await connect(url('/ws/alice-1'), { token: sign('alice', { exp: nowS() + 2 }) })
  t.equal(await c.opened, true)
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  t.same(await closeOf(c, 8000), INVALID_TOKEN)
  // The client sees the close before the server has processed the TCP close; poll for the release.
  t.ok(await eventually(() => Object.keys(app.secureWs.stats().store.slots).length === 0 && app.secureWs.stats().connections === 0), 'the slot and the connection are released')
})

t.test('a custom verifyToken', async (t) => {
  const userFor = (token: string): SecureWsUser | null => {
    if (token === 'alice-token') return { id: 'alice', scopes: ['admin'] }
    if (token === 'stale-token') return { id: 'alice', scopes: [], expiresAt: Date.now() - 1000 }
    return null
  }

  t.test('admits the user it returns, from either transport, and receives the token', async (t) => {
    const seen: string[] = []
    const { url } = await build(t, {
      route: routeWithMe(),
      options: { jwt: undefined, verifyToken: (token) => { seen.push(token); return userFor(token) } }
    })
    for (const via of ['query', 'protocol'] as const) {
      const c = await connect(url('/ws/alice-1'), { token: 'alice-token', via })
      c.send({ type: 'me' })
      t.same(await c.next(), { type: 'me', user: 'alice', scopes: ['admin'] })
      c.send({ type: 'admin' })
      t.same(await c.next(), { type: 'pong' })
      await c.close()
    }
    t.same(seen, ['alice-token', 'alice-token'])
  })

  t.test('an async verifyToken works', async (t) => {
    const { url } = await build(t, { options: { jwt: undefined, verifyToken: async (token) => userFor(token) } })
    const c = await connect(url('/ws/alice-1'), { token: 'alice-token' })
    c.send({ type: 'whoami' })
    t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
    await c.close()
  })

  t.test('returning null refuses with 4401', async (t) => {
    const { url } = await build(t, { options: { jwt: undefined, verifyToken: () => null } })
    const c = await connect(url('/ws/alice-1'), { token: 'alice-token' })
    t.same(await closeOf(c), INVALID_TOKEN)
  })

  t.test('throwing refuses with 1013 Try again later, logged once per outage, and the server keeps serving', async (t) => {
    const { url, logs } = await build(t, {
      options: {
        jwt: undefined,
        verifyToken: (token) => {
          if (token === 'throw') throw new Error('token service unreachable')
          return userFor(token)
        }
      }
    })
    for (let i = 0; i < 3; i++) {
      const c = await connect(url('/ws/alice-1'), { token: 'throw' })
      t.same(await closeOf(c), TRY_AGAIN)
    }
    const after = await connect(url('/ws/alice-1'), { token: 'alice-token' })
    after.send({ type: 'whoami' })
    t.same(await after.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
    await after.close()
    t.same(refusalLines(logs).map((line) => line.refusal), ['authUnavailable', 'authUnavailable', 'authUnavailable'])
    const lines = parseLogs(logs)
    t.equal(lines.filter((line) => line.msg?.startsWith('verifyToken failed')).length, 1, 'the outage is logged once, with its error')
    t.equal(lines.filter((line) => line.msg === 'verifyToken answers again').length, 1, 'and its end once')
    t.notOk(logs.join('\n').includes('"throw"'), 'the token is not logged')
  })

  t.test('rejecting refuses with 1013 Try again later and the server keeps serving', async (t) => {
    const { url } = await build(t, {
      options: {
        jwt: undefined,
        verifyToken: async (token) => {
          if (token === 'throw') throw new Error('token service unreachable')
          return userFor(token)
        }
      }
    })
    const c = await connect(url('/ws/alice-1'), { token: 'throw' })
    t.same(await closeOf(c), TRY_AGAIN)
    const after = await connect(url('/ws/alice-1'), { token: 'alice-token' })
    after.send({ type: 'whoami' })
    t.same(await after.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
    await after.close()
  })

  t.test('returning expiresAt in the past refuses with 4401, logged with the user id', async (t) => {
    const { url, logs, app } = await build(t, { options: { jwt: undefined, verifyToken: userFor } })
    const c = await connect(url('/ws/alice-1'), { token: 'stale-token' })
    t.same(await closeOf(c), INVALID_TOKEN)
    t.same(app.secureWs.stats().store.slots, {})
    const lines = refusalLines(logs)
    t.equal(lines.length, 1)
    t.equal(lines[0]!.refusal, 'invalidToken')
    t.equal(lines[0]!.userId, 'alice')
    t.equal(lines[0]!.ip, '127.0.0.1')
  })
})

t.test('no log line contains the token', async (t) => {
  const { url, logs } = await build(t)
  const good = sign('alice')
  const bad = sign('alice', { exp: nowS() - 60 })
  const refusedForSession = sign('alice', { scope: 'other' })
  const tokens = [good, bad, refusedForSession, 'garbage-token-value']

  const viaQuery = await connect(url('/ws/alice-1'), { token: good })
  viaQuery.send({ type: 'boom' })
  t.same(await viaQuery.next(), { type: 'error', message: 'Internal server error' })
  const viaQueryWithOtherParams = await connect(url('/ws/alice-1?lang=en'), { token: good })
  const viaProtocol = await connect(url('/ws/alice-1'), { token: good, via: 'protocol' })
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: bad })), INVALID_TOKEN)
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: 'garbage-token-value' })), INVALID_TOKEN)
  t.same(await closeOf(await connect(url('/ws/alice-1'), { token: bad, via: 'protocol' })), INVALID_TOKEN)
  t.same(await closeOf(await connect(url('/ws/bob-1'), { token: refusedForSession })), { code: 1008, reason: 'Access denied' })
  await viaQuery.close()
  await viaQueryWithOtherParams.close()
  await viaProtocol.close()

  const requestUrls = parseLogs(logs).filter((line) => line.msg === 'incoming request').map((line) => line.req?.url)
  t.same(requestUrls, [
    '/ws/alice-1',
    '/ws/alice-1?lang=en',
    '/ws/alice-1',
    '/ws/alice-1',
    '/ws/alice-1',
    '/ws/alice-1',
    '/ws/bob-1'
  ], 'the logged request URLs carry no token')
  t.ok(logs.length > requestUrls.length, 'other lines were logged too')
  for (const token of tokens) {
    const leaking = logs.filter((line) => line.includes(token))
    t.same(leaking, [], 'no log line contains the token')
  }
  t.notOk(logs.some((line) => line.includes('token=')), 'no log line contains a token= query parameter')
})

t.test('a verified token kept in the cache is still refused once it expires', async (t) => {
  const { url } = await build(t)
  const token = sign('alice', { exp: nowS() + 2 })
  const first = await connect(url('/ws/alice-1'), { token })
  t.ok(await first.admitted(), 'admitted while valid (and now cached)')
  await first.close()
  const again = await connect(url('/ws/alice-1'), { token })
  t.ok(await again.admitted(), 'the cached token admits a reconnect while valid')
  t.same(await closeOf(again, 8000), INVALID_TOKEN, 'closed when it expires')
  const late = await connect(url('/ws/alice-1'), { token })
  t.same(await closeOf(late), INVALID_TOKEN, 'the same token is refused after its exp, cache or not')
})

t.test('the cached user cannot be changed by one connection for the next', async (t) => {
  const { url } = await build(t, {
    route: {
      messages: {
        tamper: { handler: (conn) => { (conn.user.scopes as string[]).push('admin') } },
        admin: { scopes: ['admin'], handler: (conn) => { conn.send('pong', {}) } }
      }
    }
  })
  const token = sign('alice', { scope: 'read' })
  const first = await connect(url('/ws/alice-1'), { token })
  first.send({ type: 'tamper' })
  t.same(await first.next(), { type: 'error', message: 'Internal server error' }, 'the frozen scopes refuse the change')
  const second = await connect(url('/ws/alice-1'), { token })
  second.send({ type: 'admin' })
  t.same(await second.next(), { type: 'error', message: 'Forbidden' }, 'the next connection with the same token has the original scopes')
  await first.close()
  await second.close()
})

t.test('a claim named __proto__ copied by the jwt.user mapper does not become the user\'s prototype', async (t) => {
  const { url } = await build(t, {
    options: { jwt: { key: SECRET, algorithms: ['HS256'], user: (claims) => ({ ...claims, id: claims.sub as string, scopes: [] }) } },
    route: {
      outbound: { flags: Type.Object({ admin: Type.Boolean(), inherited: Type.Boolean() }) },
      messages: {
        flags: {
          handler: (conn) => {
            const user = conn.user as SecureWsUser & { admin?: unknown }
            conn.send('flags', { admin: user.admin === true, inherited: Object.getPrototypeOf(user) !== Object.prototype })
          }
        }
      }
    }
  })
  // JSON.parse, as fast-jwt decodes claims, makes "__proto__" an own property; a spread copies it as one.
  const token = sign('alice', JSON.parse('{"__proto__":{"admin":true}}') as Record<string, unknown>)
  for (const attempt of ['first connection (verified)', 'second connection (cached)']) {
    const c = await connect(url('/ws/alice-1'), { token })
    c.send({ type: 'flags' })
    t.same(await c.next(), { type: 'flags', admin: false, inherited: false }, attempt)
    await c.close()
  }
})
