import t from 'tap'
import { build, connect, sign } from './helpers.js'

t.test('smoke', async (t) => {
  const { url, app } = await build(t)
  const c = await connect(url('/ws/alice-1'), { token: sign('alice') })
  c.send({ type: 'ping' })
  t.same(await c.next(), { type: 'pong' })
  c.send({ type: 'session' })
  t.same(await c.next(), { type: 'session', data: { id: 'alice-1', ownerId: 'alice' } })
  c.send({ type: 'echo', payload: { text: 1 } })
  t.same(await c.next(), { type: 'error', message: 'Invalid payload: /text Expected string' })
  c.send({ type: 'boom' })
  t.same(await c.next(), { type: 'error', message: 'Internal server error' })
  const p = await connect(url('/ws/alice-1'), { token: sign('alice'), via: 'protocol' })
  t.equal(p.ws.protocol, 'bearer')
  const bad = await connect(url('/ws/alice-1'), { token: 'garbage', via: 'protocol' })
  t.same(await bad.closed, { code: 4401, reason: 'Invalid or expired authentication token' })
  t.same(app.secureWs.stats().users, { alice: 2 })
  await c.close()
  await p.close()
  t.same(app.secureWs.stats().store.slots, {})
})
