import t, { type Test } from 'tap'
import { connect, sign } from './helpers.js'
import { instances, ping, redisTargets, requireRedis, sleep, type RedisTarget } from './redis-server.js'

const RATE_ERROR = { type: 'error', message: 'Rate limit exceeded. Connection closed.' }
const RATE_CLOSE = { code: 1008, reason: 'Rate limit exceeded' }

// The window is a minute long, so this takes a minute: B's own message must leave it before
// A's do, and B must then still hear that A's have left. One Redis and the cluster run side
// by side, so the file stays within the test timeout.
async function letBackIn (t: Test, redis: RedisTarget, on: string): Promise<void> {
  const limits = { messagesPerSecond: 100, messagesPerMinute: 6 }
  const [a, b] = await instances(t, redis, 2, {}, { limits })
  const token = sign('alice', { exp: Math.floor(Date.now() / 1000) + 300 })
  const onB = await connect(b!.url('/ws/alice-1'), { token })
  // Holds alice's counter on B throughout, so it is never swept and started afresh.
  const keeper = await connect(b!.url('/ws/alice-1'), { token })
  t.equal(await keeper.opened, true, `${on}: B holds alice's counter`)
  t.same(await ping(onB), { type: 'pong' }, `${on}: B: one message`)
  await sleep(2000)
  const onA = await connect(a!.url('/ws/alice-1'), { token })
  for (let i = 0; i < 5; i++) t.same(await ping(onA), { type: 'pong' }, `${on}: A: message ${i + 2} of the minute accepted`)
  await onA.close()
  // B's message has left the minute; A's five, two seconds younger, are still in it.
  await sleep(58_500)
  t.same(await ping(onB), { type: 'pong' }, `${on}: B: one more fits beside A's five`)
  t.same(await ping(onB), RATE_ERROR, `${on}: B refuses the next while A's five are in the minute`)
  t.same(await onB.closed, RATE_CLOSE, `${on}: closed for the rate limit`)
  // A's have left by now; B must have heard so, not go on refusing for up to a minute.
  await sleep(4000)
  t.same(await ping(keeper), { type: 'pong' }, `${on}: B admits a message once A's have left the minute`)
  await keeper.close()
}

if (requireRedis(t)) {
  t.test('a user refused on other instances\' counts is let back in once those counts leave the minute', async (t) => {
    const targets = await redisTargets(t)
    await Promise.all(targets.map(([name, redis]) => letBackIn(t, redis, name)))
  })
}
