// Attack table, part 3: hostile handshakes: forged and look-alike origins, algorithm confusion,
// oversized tokens and headers, extensions the server did not offer.
import { createHmac, generateKeyPairSync, sign as signWith, type KeyObject } from 'node:crypto'
import t, { type Test } from 'tap'
import { createSigner } from 'fast-jwt'
import { type Built, ORIGIN, build, closeOf, connect, parseLogs, refusalLines, sign } from './helpers.js'
import { OP, clientFrame, eventuallyAsync, peerAnswersPing, rawUpgradePeer, serverConnections, type UpgradeRequest } from './frames.js'

const ORIGIN_REFUSED = { code: 1008, reason: 'Origin not allowed' }
const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
const HEADERS_TOO_LARGE = { error: 'Request Header Fields Too Large', message: 'Exceeded maximum allowed HTTP header size', statusCode: 431 }

/** Opens a raw upgrade and returns its status and, after a 101, the server's close frame or proof it serves the peer. */
async function handshake (t: Test, built: Built, request: UpgradeRequest): Promise<{ status: number, close?: { code: number, reason: string }, admitted?: true }> {
  const peer = rawUpgradePeer(t, built.app, request)
  const { status } = await peer.head
  if (status !== 101) return { status }
  if (await peerAnswersPing(peer)) return { status, admitted: true }
  return { status, close: await peer.closeFrame() }
}

t.test('origins', async (t) => {
  // The lockout is about tokens; these rows send many good tokens from one address.
  const built = await build(t, { options: { limits: { authFailuresPerMinute: 0 } } })

  t.test('the allowed origin, sent raw, is admitted (control)', async (t) => {
    t.same(await handshake(t, built, { path: '/ws/alice-1', token: sign('alice') }), { status: 101, admitted: true })
  })

  const duplicated: Record<string, string[]> = {
    'the allowed origin twice': [`Origin: ${ORIGIN}`, `Origin: ${ORIGIN}`],
    'allowed, then another': [`Origin: ${ORIGIN}`, 'Origin: http://evil.test'],
    'another, then allowed': ['Origin: http://evil.test', `Origin: ${ORIGIN}`],
    'the allowed origin twice, in two spellings of the name': [`Origin: ${ORIGIN}`, `origin: ${ORIGIN}`],
    'null, then allowed': ['Origin: null', `Origin: ${ORIGIN}`]
  }
  for (const [name, lines] of Object.entries(duplicated)) {
    t.test(`duplicated Origin headers: ${name}`, async (t) => {
      t.same(await handshake(t, built, { path: '/ws/alice-1', token: sign('alice'), origin: null, extraHeaders: lines }), { status: 101, close: ORIGIN_REFUSED })
    })
  }

  const refused: Record<string, string> = {
    'the opaque origin': 'null',
    'allowed origin as a subdomain of another host, other scheme': 'https://app.test:8080.evil.test',
    'allowed origin as a subdomain of another host': 'http://app.test:8080.evil.test',
    'a port with a digit more': 'http://app.test:80800',
    'the port twice': 'http://app.test:8080:8080',
    'upper case with another port': 'HTTP://APP.TEST:8081',
    'upper case with the default port': 'HTTP://APP.TEST',
    'the allowed origin as userinfo of another host': 'http://app.test:8080@evil.test',
    'userinfo on the allowed host': 'http://evil.test@app.test:8080',
    'an encoded @': 'http://app.test:8080%40evil.test',
    'a trailing dot on the host': 'http://app.test.:8080',
    'a trailing slash': `${ORIGIN}/`,
    'a list of two origins': `${ORIGIN} http://evil.test`,
    'a comma-joined pair': `${ORIGIN},http://evil.test`,
    'a look-alike host in Cyrillic (raw UTF-8)': 'http://\u0430pp.test:8080',
    'a look-alike host in punycode': 'http://xn--pp-7kc.test:8080',
    'another scheme on the allowed host': 'ws://app.test:8080',
    'a file origin': 'file://app.test'
  }
  for (const [name, origin] of Object.entries(refused)) {
    t.test(`${name}: ${JSON.stringify(origin)}`, async (t) => {
      t.same(await handshake(t, built, { path: '/ws/alice-1', token: sign('alice'), origin }), { status: 101, close: ORIGIN_REFUSED })
    })
  }

  await t.test('none of them took a slot', async (t) => {
    t.same(built.app.secureWs.stats().store.slots, {})
    t.equal(refusalLines(built.logs).filter((line) => line.refusal === 'originNotAllowed').length, Object.keys(duplicated).length + Object.keys(refused).length)
  })
})

/** `header.payload.signature` of a JWT, the signature made by `signer` over the first two parts. */
function jwt (header: object, claims: object, signer: (input: string) => string): string {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`
  return `${input}.${signer(input)}`
}

t.test('algorithm confusion against an RS256-only configuration', async (t) => {
  const pair = (): { privateKey: KeyObject, publicKey: KeyObject } => generateKeyPairSync('rsa', { modulusLength: 2048 })
  const server = pair()
  const attacker = pair()
  const publicPem = server.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  const built = await build(t, { options: { jwt: { key: publicPem, algorithms: ['RS256'] }, limits: { authFailuresPerMinute: 0 } } })
  const now = Math.floor(Date.now() / 1000)
  const claims = { sub: 'alice', iat: now, exp: now + 60 }
  const rs256 = (key: KeyObject) => (input: string): string => signWith('sha256', Buffer.from(input), key).toString('base64url')
  const hmac = (secret: string | Buffer) => (input: string): string => createHmac('sha256', secret).update(input).digest('base64url')

  t.test('a token the server\'s key signed with RS256 is admitted (control)', async (t) => {
    const c = await connect(built.url('/ws/alice-1'), { token: jwt({ alg: 'RS256', typ: 'JWT' }, claims, rs256(server.privateKey)) })
    t.ok(await c.admitted())
    await c.close()
  })

  const forged: Record<string, string> = {
    'HS256 with the public key (PEM) as the HMAC secret': jwt({ alg: 'HS256', typ: 'JWT' }, claims, hmac(publicPem)),
    'HS256 with the public key (PEM, no final newline) as the secret': jwt({ alg: 'HS256', typ: 'JWT' }, claims, hmac(publicPem.trimEnd())),
    'HS256 with the public key (DER) as the secret': jwt({ alg: 'HS256', typ: 'JWT' }, claims, hmac(server.publicKey.export({ type: 'spki', format: 'der' }))),
    'alg none, empty signature': jwt({ alg: 'none', typ: 'JWT' }, claims, () => ''),
    'alg None': jwt({ alg: 'None', typ: 'JWT' }, claims, () => ''),
    'alg NONE': jwt({ alg: 'NONE', typ: 'JWT' }, claims, () => ''),
    'alg none with the RS256 signature of the real key kept': jwt({ alg: 'none', typ: 'JWT' }, claims, rs256(server.privateKey)),
    'PS256, signed by the server\'s own private key (not pinned)': createSigner({ key: server.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), algorithm: 'PS256' })(claims),
    'RS256 signed by another key': jwt({ alg: 'RS256', typ: 'JWT' }, claims, rs256(attacker.privateKey)),
    'RS256 signed by another key that the header embeds as a jwk': jwt({ alg: 'RS256', typ: 'JWT', jwk: attacker.publicKey.export({ format: 'jwk' }) }, claims, rs256(attacker.privateKey)),
    'RS256 signed by another key that the header points to (jku)': jwt({ alg: 'RS256', typ: 'JWT', jku: 'http://127.0.0.1:1/keys' }, claims, rs256(attacker.privateKey))
  }
  for (const [name, token] of Object.entries(forged)) {
    for (const via of ['query', 'protocol'] as const) {
      t.test(`${name} (via ${via})`, async (t) => {
        const c = await connect(built.url('/ws/alice-1'), { token, via })
        t.equal(await c.opened, true)
        t.same(await closeOf(c), INVALID_TOKEN)
      })
    }
  }
  await t.test('none was admitted', async (t) => {
    t.same(built.app.secureWs.stats().store.slots, {})
    t.equal(refusalLines(built.logs).filter((line) => line.refusal === 'invalidToken').length, Object.keys(forged).length * 2)
  })
})

t.test('oversized tokens and headers', async (t) => {
  const built = await build(t)
  const { app } = built
  const bigToken = 'A'.repeat(100 * 1024)

  const overflows: Record<string, UpgradeRequest> = {
    'a 100 KB token in ?token=': { path: '/ws/alice-1', token: bigToken },
    'a 100 KB token in Sec-WebSocket-Protocol': { path: '/ws/alice-1', extraHeaders: [`Sec-WebSocket-Protocol: bearer, ${bigToken}`] },
    '20 KB of other headers': { path: '/ws/alice-1', token: sign('alice'), extraHeaders: Array.from({ length: 20 }, (_, i) => `X-Pad-${i}: ${'p'.repeat(1000)}`) }
  }
  for (const [name, request] of Object.entries(overflows)) {
    t.test(`${name}: HTTP 431 past Node's 16 KB header limit, the socket closed`, async (t) => {
      const peer = rawUpgradePeer(t, app, request)
      const head = await peer.head
      t.equal(head.status, 431)
      await peer.ended
      t.same(JSON.parse(peer.body().toString()), HEADERS_TOO_LARGE)
      t.equal(await eventuallyAsync(async () => await serverConnections(app) === 0), true, 'the server holds nothing for it')
    })
  }

  t.test('a 12 KB token under the limit reaches verification and is refused with 4401', async (t) => {
    for (const via of ['query', 'protocol'] as const) {
      const c = await connect(built.url('/ws/alice-1'), { token: 'B'.repeat(12 * 1024), via })
      t.same(await closeOf(c), INVALID_TOKEN, `via ${via}`)
    }
  })

  await t.test('the server keeps serving, and logged none of those tokens', async (t) => {
    const c = await connect(built.url('/ws/alice-1'), { token: sign('alice') })
    t.ok(await c.admitted())
    await c.close()
    t.notOk(built.logs.some((line) => line.includes('AAAAAAAAAAAAAAAA') || line.includes('BBBBBBBBBBBBBBBB')), 'no log line holds a token')
  })
})

t.test('permessage-deflate offered by a client the plugin did not enable it for', async (t) => {
  const built = await build(t)

  t.test('a ws client (which offers it by default) gets no extension', async (t) => {
    const c = await connect(built.url('/ws/alice-1'), { token: sign('alice') })
    t.ok(await c.admitted())
    t.equal(c.ws.extensions, '')
    await c.close()
  })

  t.test('the 101 names no extension, and a compressed frame sent anyway closes with 1002', async (t) => {
    const peer = rawUpgradePeer(t, built.app, { path: '/ws/alice-1', token: sign('alice'), extraHeaders: ['Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-webkit-deflate-frame'] })
    const head = await peer.head
    t.equal(head.status, 101)
    t.equal(head.headers['sec-websocket-extensions'], undefined)
    t.ok(await peerAnswersPing(peer), 'admitted')
    // RSV1 marks a compressed frame; without the extension it is a protocol error.
    peer.write(clientFrame(OP.text, Buffer.from([0x4b, 0x04, 0x00]), { rsv1: true }))
    t.same(await peer.closeFrame(), { code: 1002, reason: '' })
    await peer.ended
    const lines = parseLogs(built.logs).filter((line) => line.msg === 'websocket protocol error; connection closed')
    t.match(lines, [{ level: 40, code: 'WS_ERR_UNEXPECTED_RSV_1' }])
  })
})
