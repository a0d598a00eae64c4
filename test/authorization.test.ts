import t from 'tap'
import { Type } from '@sinclair/typebox'
import { build, connect, sign, testRoute, type BuildOptions, type Client } from './helpers.js'

const FORBIDDEN = { type: 'error', message: 'Forbidden' }
const INTERNAL = { type: 'error', message: 'Internal server error' }

async function open (t: tap.Test, claims: Record<string, unknown> = {}, route?: BuildOptions['route']): Promise<{ c: Client, logs: string[] }> {
  const { url, logs } = await build(t, route === undefined ? {} : { route })
  const c = await connect(url('/ws/alice-1'), { token: sign('alice', claims) })
  t.teardown(() => c.close())
  t.equal(await c.opened, true, 'connection opened')
  return { c, logs }
}

async function stillOpen (t: tap.Test, c: Client): Promise<void> {
  c.send({ type: 'ping' })
  t.strictSame(await c.next(), { type: 'pong' }, 'a following ping is answered')
  t.equal(c.ws.readyState, c.ws.OPEN, 'connection still open')
}

/** The fixture's messages plus `guarded`, whose `authorize` is the given predicate. */
function withAuthorize (authorize: (conn: any, payload: { n: number }) => boolean | Promise<boolean>, ran: Array<{ n: number }>): BuildOptions['route'] {
  return {
    messages: {
      ...(testRoute().messages as Record<string, any>),
      guarded: {
        payload: Type.Object({ n: Type.Number() }),
        authorize,
        handler: (conn: any, payload: { n: number }) => {
          ran.push(payload)
          conn.send('echo', { text: `ran ${payload.n}` })
        }
      }
    }
  }
}

t.test('a message needing a scope the user lacks answers exactly Forbidden and keeps the connection', async (t) => {
  const { c } = await open(t, { scope: 'read' })
  c.send({ type: 'admin' })
  t.strictSame(await c.next(), FORBIDDEN)
  await stillOpen(t, c)
})

t.test('a user without any scope claim is Forbidden too', async (t) => {
  const { c } = await open(t)
  c.send({ type: 'admin' })
  t.strictSame(await c.next(), FORBIDDEN)
  await stillOpen(t, c)
})

t.test('a scope is matched whole, not as a substring', async (t) => {
  const { c } = await open(t, { scope: 'administrator read:admin' })
  c.send({ type: 'admin' })
  t.strictSame(await c.next(), FORBIDDEN)
})

t.test('a message needing a scope the user has runs', async (t) => {
  const { c } = await open(t, { scope: 'read admin' })
  c.send({ type: 'admin' })
  t.strictSame(await c.next(), { type: 'pong' })
})

t.test('every listed scope is required', async (t) => {
  const route = { messages: { ...(testRoute().messages as Record<string, any>), both: { scopes: ['admin', 'billing'], handler: (conn: any) => { conn.send('pong', {}) } } } }
  const { c } = await open(t, { scope: 'read admin' }, route)
  c.send({ type: 'both' })
  t.strictSame(await c.next(), FORBIDDEN, 'one of two scopes is not enough')

  const { c: full } = await open(t, { scope: 'admin billing' }, route)
  full.send({ type: 'both' })
  t.strictSame(await full.next(), { type: 'pong' }, 'both scopes run it')
})

t.test('authorize returning false answers Forbidden without running the handler', async (t) => {
  const ran: Array<{ n: number }> = []
  const seen: unknown[] = []
  const { c } = await open(t, {}, withAuthorize((conn, payload) => {
    seen.push([conn.user.id, conn.session.id, payload])
    return false
  }, ran))
  c.send({ type: 'guarded', payload: { n: 1 } })
  t.strictSame(await c.next(), FORBIDDEN)
  t.strictSame(seen, [['alice', 'alice-1', { n: 1 }]], 'authorize saw the connection and the validated payload')
  t.strictSame(ran, [], 'handler did not run')
  await stillOpen(t, c)
})

t.test('authorize returning a truthy non-boolean is not permission', async (t) => {
  const ran: Array<{ n: number }> = []
  const { c } = await open(t, {}, withAuthorize(() => 1 as unknown as boolean, ran))
  c.send({ type: 'guarded', payload: { n: 1 } })
  t.strictSame(await c.next(), FORBIDDEN)
  t.strictSame(ran, [])
})

t.test('authorize returning true runs the handler', async (t) => {
  const ran: Array<{ n: number }> = []
  const { c } = await open(t, {}, withAuthorize(() => true, ran))
  c.send({ type: 'guarded', payload: { n: 2 } })
  t.strictSame(await c.next(), { type: 'echo', text: 'ran 2' })
  t.strictSame(ran, [{ n: 2 }])
})

t.test('authorize returning Promise<true> runs the handler', async (t) => {
  const ran: Array<{ n: number }> = []
  const { c } = await open(t, {}, withAuthorize(async (_conn, payload) => {
    await new Promise((resolve) => setTimeout(resolve, 5))
    return payload.n > 0
  }, ran))
  c.send({ type: 'guarded', payload: { n: 3 } })
  t.strictSame(await c.next(), { type: 'echo', text: 'ran 3' })
  c.send({ type: 'guarded', payload: { n: -1 } })
  t.strictSame(await c.next(), FORBIDDEN, 'Promise<false> answers Forbidden')
  t.strictSame(ran, [{ n: 3 }])
  await stillOpen(t, c)
})

t.test('authorize that throws answers Internal server error and keeps the connection', async (t) => {
  const ran: Array<{ n: number }> = []
  const { c, logs } = await open(t, {}, withAuthorize(() => { throw new Error('authz backend at /srv/authz.ts down') }, ran))
  c.send({ type: 'guarded', payload: { n: 4 } })
  const frame = await c.next()
  t.strictSame(frame, INTERNAL)
  t.notMatch(JSON.stringify(frame), 'authz', 'the exception text is not sent')
  t.strictSame(ran, [])
  await stillOpen(t, c)
  t.ok(logs.some((line) => line.includes('authz backend')), 'the failure is logged on the server')
})

t.test('authorize that rejects answers Internal server error and keeps the connection', async (t) => {
  const ran: Array<{ n: number }> = []
  const { c } = await open(t, {}, withAuthorize(async () => { throw new Error('authz rejected /srv/authz.ts') }, ran))
  c.send({ type: 'guarded', payload: { n: 5 } })
  t.strictSame(await c.next(), INTERNAL)
  t.strictSame(ran, [])
  await stillOpen(t, c)
})

t.test('scopes are checked before authorize', async (t) => {
  let calls = 0
  const route = {
    messages: {
      ...(testRoute().messages as Record<string, any>),
      adminGuarded: { scopes: ['admin'], authorize: () => { calls++; return true }, handler: (conn: any) => { conn.send('pong', {}) } }
    }
  }
  const { c } = await open(t, { scope: 'read' }, route)
  c.send({ type: 'adminGuarded' })
  t.strictSame(await c.next(), FORBIDDEN)
  t.equal(calls, 0, 'authorize not consulted for a user lacking the scope')
})
