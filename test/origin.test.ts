import t from 'tap'
import { ORIGIN, build, connect, sign, closeOf, refusalLines } from './helpers.js'

const ORIGIN_REFUSED = { code: 1008, reason: 'Origin not allowed' }

t.test('an allowed origin connects and its messages are answered', async (t) => {
  const { url } = await build(t)
  const c = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: ORIGIN })
  t.equal(c.ws.readyState, c.ws.OPEN)
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  await c.close()
})

t.test('a missing Origin is refused with 1008 Origin not allowed by default', async (t) => {
  const { url } = await build(t)
  const c = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: null })
  t.same(await closeOf(c), ORIGIN_REFUSED)
})

t.test('allowMissingOrigin: true admits a client that sends no Origin', async (t) => {
  const { url, app } = await build(t, { options: { allowMissingOrigin: true } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: null })
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  t.same(app.secureWs.stats().users, { alice: 1 })
  await c.close()
})

t.test('allowMissingOrigin: true still refuses an Origin that is not allowed', async (t) => {
  const { url } = await build(t, { options: { allowMissingOrigin: true } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: 'http://evil.test:8080' })
  t.same(await closeOf(c), ORIGIN_REFUSED)
})

t.test('origins that are not exactly an allowed one are refused', async (t) => {
  const { url, app } = await build(t)
  const refused: Record<string, string> = {
    'wrong scheme': 'https://app.test:8080',
    'wrong port': 'http://app.test:8081',
    'default port instead of 8080': 'http://app.test',
    'wrong host': 'http://other.test:8080',
    'allowed origin as a subdomain of another host': 'http://app.test:8080.evil.test',
    'allowed host with a suffix': 'http://app.test.evil:8080',
    'allowed host as a prefix of a longer label': 'http://app.testevil:8080',
    userinfo: 'http://user@app.test:8080',
    'userinfo with password': 'http://user:pw@app.test:8080',
    'a path': 'http://app.test:8080/x',
    'a query': 'http://app.test:8080?x=1',
    'the opaque origin null': 'null',
    'not an origin at all': 'app.test:8080'
  }
  for (const [name, origin] of Object.entries(refused)) {
    t.test(`${name}: ${origin}`, async (t) => {
      const c = await connect(url('/ws/alice-1'), { token: sign('alice'), origin })
      t.equal(await c.opened, true, 'the upgrade completes so the client can read the close reason')
      t.same(await closeOf(c), ORIGIN_REFUSED)
    })
  }
  await t.test('none of them was admitted', async (t) => {
    t.same(app.secureWs.stats().users, {})
    t.same(app.secureWs.stats().store.slots, {})
  })
})

t.test('host case and an explicit default port do not matter', async (t) => {
  const { url } = await build(t, { options: { origins: ['https://x.test', 'http://y.test:8443', ORIGIN] } })
  const matching = ['https://X.TEST:443', 'https://x.test:443', 'HTTPS://x.Test', 'http://Y.TEST:8443', 'HTTP://APP.TEST:8080']
  for (const origin of matching) {
    t.test(origin, async (t) => {
      const c = await connect(url('/ws/alice-1'), { token: sign('alice'), origin })
      c.send({ type: 'whoami' })
      t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
      await c.close()
    })
  }
})

t.test('an allowlist entry with an explicit default port matches the header without one', async (t) => {
  const { url } = await build(t, { options: { origins: ['https://x.test:443'] } })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: 'https://x.test' })
  c.send({ type: 'whoami' })
  t.same(await c.next(), { type: 'whoami', user: 'alice', session: 'alice-1' })
  await c.close()
})

t.test('the origin is checked first: a bad origin with a bad token gets 1008 Origin not allowed, not 4401', async (t) => {
  const { url, logs } = await build(t)
  const noToken = await connect(url('/ws/alice-1'), { origin: 'http://evil.test' })
  t.same(await closeOf(noToken), ORIGIN_REFUSED)
  const badToken = await connect(url('/ws/alice-1'), { origin: 'http://evil.test', token: 'not-a-token' })
  t.same(await closeOf(badToken), ORIGIN_REFUSED)
  const badTokenOtherSession = await connect(url('/ws/bob-1'), { origin: 'http://evil.test', token: 'not-a-token', via: 'protocol' })
  t.same(await closeOf(badTokenOtherSession), ORIGIN_REFUSED)
  t.same(refusalLines(logs).map((line) => line.refusal), ['originNotAllowed', 'originNotAllowed', 'originNotAllowed'])
})

t.test('each origin refusal writes exactly one log line with the refusal and ip, and no user id', async (t) => {
  const { url, logs } = await build(t)
  const first = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: 'http://evil.test' })
  t.same(await closeOf(first), ORIGIN_REFUSED)
  const second = await connect(url('/ws/alice-1'), { token: sign('alice'), origin: null })
  t.same(await closeOf(second), ORIGIN_REFUSED)
  const lines = refusalLines(logs)
  t.equal(lines.length, 2)
  for (const line of lines) {
    t.equal(line.refusal, 'originNotAllowed')
    t.equal(line.ip, '127.0.0.1')
    t.notOk('userId' in line, 'the user is not known yet when the origin is refused')
  }
})
