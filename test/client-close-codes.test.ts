import t from 'tap'
import { DEFAULT_CLOSE_REASONS } from '../lib/close-codes.js'
import { CLOSE_FRAMES, closeKindOf, closePolicyOf } from '../lib/client/close-codes.js'
import { fullJitter } from '../lib/client/backoff.js'
import { expiryOf } from '../lib/client/token.js'
import { sign } from './helpers.js'

// The client cannot import the server's table (it ships without server code), so it keeps
// its own; these tests fail as soon as the two disagree.

const serverFrames = Object.entries(DEFAULT_CLOSE_REASONS).map(([kind, { code, reason }]) => ({ kind, code, reason }))
const frameKey = (code: number, reason: string): string => `${code} ${reason}`

t.test('the client knows exactly the close frames the server sends', async (t) => {
  const server = new Set(serverFrames.map(({ code, reason }) => frameKey(code, reason)))
  const client = new Set(Object.values(CLOSE_FRAMES).map(([code, reason]) => frameKey(code, reason)))
  t.strictSame([...client].sort(), [...server].sort())
  t.equal(client.size, Object.keys(CLOSE_FRAMES).length, 'one client kind per distinct frame')
})

t.test('every server close kind reads back as the client kind of its frame', async (t) => {
  for (const { kind, code, reason } of serverFrames) {
    const clientKind = closeKindOf(code, reason)
    t.not(clientKind, 'unknown', `${kind} is known`)
    t.strictSame(CLOSE_FRAMES[clientKind as keyof typeof CLOSE_FRAMES], [code, reason], `${kind} → ${clientKind}`)
  }
  // Where a frame has one cause, the client says it by the server's own name.
  for (const kind of ['originNotAllowed', 'accessDenied', 'rateLimited', 'loggedOut', 'slowConsumer', 'heartbeatTimeout', 'shuttingDown'] as const) {
    const { code, reason } = DEFAULT_CLOSE_REASONS[kind]
    t.equal(closeKindOf(code, reason), kind)
  }
  t.equal(closeKindOf(4401, DEFAULT_CLOSE_REASONS.tokenExpired.reason), 'invalidToken', 'refused and expired tokens share a frame')
  t.equal(closeKindOf(1013, DEFAULT_CLOSE_REASONS.storeUnavailable.reason), 'tryAgainLater')
})

t.test('frames outside the table: by code when only one kind has it, else unknown', async (t) => {
  t.equal(closeKindOf(1000, ''), 'normal')
  t.equal(closeKindOf(1006, ''), 'connectionLost')
  t.equal(closeKindOf(1009, 'Max payload size exceeded'), 'messageTooBig', 'ws\'s own 1009 reason')
  t.equal(closeKindOf(4408, 'custom'), 'heartbeatTimeout')
  t.equal(closeKindOf(1008, 'custom'), 'unknown', 'several 1008 kinds: the reason decides')
  t.equal(closeKindOf(4403, ''), 'unknown')
  t.equal(closeKindOf(4000, 'app'), 'unknown')
})

// The decision for each code the server sends; a new code in the server's table fails here
// until someone decides whether clients should come back after it.
const POLICY: Record<number, 'retry' | 'retryOnce' | 'stop'> = {
  1001: 'retry', // shutting down: another instance, or this one restarted
  1008: 'stop', // origin, access, connection limit, rate limit: the same again would be refused
  1009: 'stop', // a frame too big: the client's bug
  1011: 'retry', // internal error
  1013: 'retry', // try again later, slow consumer
  4401: 'retryOnce', // token refused or expired: once, with a fresh token
  4403: 'stop', // logged out, disconnected by the server
  4408: 'retry' // heartbeat missed: the network, most likely
}

t.test('reconnect policy for every code the server sends', async (t) => {
  const codes = [...new Set(serverFrames.map(({ code }) => code))].sort()
  t.strictSame(codes, Object.keys(POLICY).map(Number).sort(), 'the server sends exactly these codes')
  for (const code of codes) t.equal(closePolicyOf(code), POLICY[code], `${code}`)
  t.equal(closePolicyOf(1006), 'retry', 'connection lost')
  t.equal(closePolicyOf(1000), 'stop', 'normal closure')
  t.equal(closePolicyOf(4000), 'stop', 'an app\'s own code')
})

t.test('full jitter: uniform below a cap that doubles per attempt up to the maximum', async (t) => {
  const top = fullJitter(100, 1000, () => 0.999999)
  t.strictSame([0, 1, 2, 3, 4, 5, 60].map(top), [99, 199, 399, 799, 999, 999, 999])
  const bottom = fullJitter(100, 1000, () => 0)
  t.strictSame([0, 3, 60].map(bottom), [0, 0, 0])
  const half = fullJitter(100, 1000, () => 0.5)
  t.strictSame([0, 1, 2].map(half), [50, 100, 200])
  const defaults = fullJitter(undefined, undefined, () => 0.999999)
  t.strictSame([0, 6, 7].map(defaults), [499, 29_999, 29_999], 'defaults: 500 ms doubling, capped at 30 s')
})

t.test('a JWT\'s expiry is read from its payload, without verification', async (t) => {
  const exp = Math.floor(Date.now() / 1000) + 123
  t.equal(expiryOf(sign('alice', { exp })), exp * 1000)
  // base64url: `-` and `_` where base64 has `+` and `/`, no padding.
  const payload = Buffer.from(JSON.stringify({ sub: 'ü>?>', exp: 42 })).toString('base64url')
  t.match(payload, /[-_]/, 'the payload uses the url-safe alphabet')
  t.equal(expiryOf(`x.${payload}.y`), 42_000)
  t.equal(expiryOf('not-a-jwt'), undefined)
  t.equal(expiryOf(`x.${Buffer.from('{"exp":"soon"}').toString('base64url')}.y`), undefined)
  t.equal(expiryOf('x.!!!.y'), undefined)
})
