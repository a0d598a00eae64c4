import t from 'tap'
import { Redis } from 'ioredis'
import { connect, parseLogs, sign, type Client } from './helpers.js'
import { adminClient, everyoneHearing, freshPrefix, instances, ping, RedisServer, redisTargets, requireRedis, sleep } from './redis-server.js'

const RATE_ERROR = { type: 'error', message: 'Rate limit exceeded. Connection closed.' }
const RATE_CLOSE = { code: 1008, reason: 'Rate limit exceeded' }

/** Every frame until the connection closes, and its close; 'still open' if it stays open 3 s after the last frame. */
async function rest (client: Client): Promise<{ frames: unknown[], closed: unknown }> {
  const frames: unknown[] = []
  for (;;) {
    try {
      frames.push(await client.next(3000))
    } catch {
      const closed = await Promise.race([client.closed, sleep(100).then(() => 'still open')])
      if (closed === 'still open') client.ws.terminate()
      return { frames, closed }
    }
  }
}

if (requireRedis(t)) {
  t.test('message limits shared through Redis', async (t) => {
    for (const [name, redis] of await redisTargets(t)) {
      t.test(name, async (t) => {
        t.test('6 + 6 pings on two instances within one sync: the user passed 10/s together and is closed on both, without sending more', async (t) => {
          const [a, b] = await instances(t, redis, 2)
          const token = sign('alice')
          const onA = await connect(a!.url('/ws/alice-1'), { token })
          const onB = await connect(b!.url('/ws/alice-1'), { token })
          for (let i = 0; i < 6; i++) {
            onA.send({ type: 'ping' })
            onB.send({ type: 'ping' })
          }
          const [fromA, fromB] = await Promise.all([rest(onA), rest(onB)])
          for (const [name, { frames, closed }] of [['A', fromA], ['B', fromB]] as const) {
            const pongs = frames.filter((frame) => (frame as { type?: string }).type === 'pong').length
            t.same(frames, [...Array.from({ length: pongs }, () => ({ type: 'pong' })), RATE_ERROR], `${name}: pongs, then the rate-limit error`)
            t.same(closed, RATE_CLOSE, `${name}: closed for the rate limit`)
          }
        })

        t.test('a user who never sends more than 10 in any second on ONE instance is never closed', async (t) => {
          const [a] = await instances(t, redis, 2)
          const client = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
          // Bursts of ten, each sent 1010 ms after the previous one was answered: no second holds
          // more than ten, while a 1050 ms window (the old sync's) would hold twenty.
          for (let burst = 0; burst < 6; burst++) {
            for (let i = 0; i < 10; i++) client.send({ type: 'ping' })
            const answers: unknown[] = []
            for (let i = 0; i < 10; i++) answers.push(await client.next())
            t.same(answers, Array(10).fill({ type: 'pong' }), `burst ${burst + 1}: ten pongs`)
            await sleep(1010)
          }
          t.same(await ping(client), { type: 'pong' }, 'still open')
          await client.close()
        })

        t.test('10 on B, then 10 on A 900 ms later: the user is closed for the second they went over', async (t) => {
          const [a, b] = await instances(t, redis, 2)
          const token = sign('alice')
          const onA = await connect(a!.url('/ws/alice-1'), { token })
          const onB = await connect(b!.url('/ws/alice-1'), { token })
          for (let i = 0; i < 10; i++) onB.send({ type: 'ping' })
          for (let i = 0; i < 10; i++) t.same(await onB.next(), { type: 'pong' })
          await sleep(900)
          for (let i = 0; i < 10; i++) onA.send({ type: 'ping' })
          const { frames, closed } = await rest(onA)
          const pongs = frames.length - 1
          t.same(frames, [...Array(pongs).fill({ type: 'pong' }), RATE_ERROR], `A: what it took before it heard of B's ten (${pongs}), then the rate-limit error`)
          t.same(closed, RATE_CLOSE)
          if (pongs === 0) {
            // Together they took ten: B's connection did nothing wrong.
            t.same(await ping(onB), RATE_ERROR, 'B refuses its own eleventh, as it would alone')
          } else {
            // Together they took more than ten in that second: B's connection sent in it too.
            t.same(await rest(onB), { frames: [RATE_ERROR], closed: RATE_CLOSE }, 'B is closed too, without sending more')
          }
        })
        t.test('an instance whose clock is 1.5 s ahead shares counts on Redis\'s clock', async (t) => {
          const prefix = freshPrefix('skew')
          const [a] = await instances(t, redis, 1, { prefix })
          const [b] = await instances(t, redis, 1, { prefix, now: () => Date.now() + 1500 })
          await everyoneHearing(t, [a!, b!])
          const token = sign('alice')
          const onA = await connect(a!.url('/ws/alice-1'), { token })
          const onB = await connect(b!.url('/ws/alice-1'), { token })
          for (let i = 0; i < 6; i++) t.same(await ping(onA), { type: 'pong' }, `A: message ${i + 1}`)
          await sleep(200)
          const answers: unknown[] = []
          for (let i = 0; i < 5; i++) answers.push(await ping(onB))
          t.same(answers, [...Array(4).fill({ type: 'pong' }), RATE_ERROR], 'B takes four more, and refuses the eleventh of the second')
          t.same(await onB.closed, RATE_CLOSE)
          await sleep(150)
          t.same(await ping(onA), RATE_ERROR, 'A, told of B\'s four, refuses too')
        })

        t.test('message rate limits count across instances', async (t) => {
          const [a, b] = await instances(t, redis, 2)
          const token = sign('alice')
          const onA = await connect(a!.url('/ws/alice-1'), { token })
          const onB = await connect(b!.url('/ws/alice-1'), { token })
          for (let i = 0; i < 6; i++) t.same(await ping(onA), { type: 'pong' })
          // Each instance syncs every 50 ms on a timer of its own: A's counts are in Redis by now.
          await sleep(150)
          // B learns A's count at its first sync after its own first message.
          t.same(await ping(onB), { type: 'pong' })
          await sleep(150)
          const answers: unknown[] = []
          for (let i = 0; i < 4; i++) {
            onB.send({ type: 'ping' })
            answers.push(await onB.next())
          }
          t.same(answers, [{ type: 'pong' }, { type: 'pong' }, { type: 'pong' }, { type: 'error', message: 'Rate limit exceeded. Connection closed.' }],
            'the eleventh message within the second is refused, though only five reached this instance')
          t.same(await onB.closed, { code: 1008, reason: 'Rate limit exceeded' })
          await onA.close()
        })

        t.test('one sync carries every user, and a minute\'s counts are told from a second\'s', async (t) => {
          const limits = { messagesPerSecond: 10, messagesPerMinute: 8 }
          const [a, b] = await instances(t, redis, 2, {}, { limits })
          const onA = { alice: await connect(a!.url('/ws/alice-1'), { token: sign('alice') }), bob: await connect(a!.url('/ws/bob-1'), { token: sign('bob') }) }
          for (let i = 0; i < 5; i++) t.same(await ping(onA.alice), { type: 'pong' })
          for (let i = 0; i < 2; i++) t.same(await ping(onA.bob), { type: 'pong' })
          // Past the one-second window: these now count in the minute only.
          await sleep(1200)
          const onB = { alice: await connect(b!.url('/ws/alice-1'), { token: sign('alice') }), bob: await connect(b!.url('/ws/bob-1'), { token: sign('bob') }) }
          // Both users' first message on B goes out in the same sync.
          onB.alice.send({ type: 'ping' })
          onB.bob.send({ type: 'ping' })
          t.same([await onB.alice.next(), await onB.bob.next()], [{ type: 'pong' }, { type: 'pong' }])
          await sleep(150)
          // alice: 5 on A + 1 here leave 2 of her 8; bob: 2 + 1 leave 5.
          for (const [user, left] of [['alice', 2], ['bob', 5]] as const) {
            const client = onB[user]
            const answers: unknown[] = []
            for (let i = 0; i <= left; i++) answers.push(await ping(client))
            t.same(answers, [...Array.from({ length: left }, () => ({ type: 'pong' })), { type: 'error', message: 'Rate limit exceeded. Connection closed.' }], `${user}: ${left} more, then refused for the minute`)
            await client.closed
          }
          await onA.alice.close()
          await onA.bob.close()
        })

        t.test('a rate key holding another type costs only that user the shared count, and is logged once', async (t) => {
          const prefix = freshPrefix('foreign')
          const writer = adminClient(t, redis)
          // Another app sharing the prefix, or a hand-written key: WRONGTYPE for the rate script.
          await writer.set(`${prefix}rate:{alice}:s`, 'not a hash')
          const [a, b] = await instances(t, redis, 2, { prefix }, { limits: { messagesPerSecond: 3, messagesPerMinute: 100 } })
          const alice = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
          const bobA = await connect(a!.url('/ws/bob-1'), { token: sign('bob') })
          // Sent in one tick, so alice's and bob's counts go out in the same script call.
          alice.send({ type: 'ping' })
          bobA.send({ type: 'ping' })
          bobA.send({ type: 'ping' })
          t.same([await alice.next(), await bobA.next(), await bobA.next()], [{ type: 'pong' }, { type: 'pong' }, { type: 'pong' }])
          await sleep(150)
          const bobB = await connect(b!.url('/ws/bob-1'), { token: sign('bob') })
          t.same(await ping(bobB), { type: 'pong' }, 'B: bob\'s third message within the second')
          await sleep(150)
          t.same(await ping(bobB), { type: 'error', message: 'Rate limit exceeded. Connection closed.' },
            'bob\'s two messages on A reached B through Redis, beside alice\'s unusable key')
          t.same(await ping(alice), { type: 'pong' }, 'alice still gets answers, limited on this instance')
          await sleep(150)
          t.same(await writer.get(`${prefix}rate:{alice}:s`), 'not a hash', 'the other value is left alone')
          const lines = parseLogs(a!.logs).filter((line) => line.msg?.includes('another type of value under a rate key') === true)
          t.same(lines.map((line) => [line.level, line.key]), [[50, `${prefix}rate:{alice}:s`]], 'one error line, naming the key')
          await alice.close()
          await bobA.close()
        })
      })
    }
  })

  t.test('a sync Redis refuses (out of memory) is logged once until a sync succeeds again', async (t) => {
    // A Redis of its own: maxmemory would refuse every other test's writes too.
    const redis = await RedisServer.start()
    t.teardown(() => redis.stop())
    const admin = new Redis(redis.url)
    t.teardown(() => admin.quit())
    const [a] = await instances(t, redis, 1)
    const alice = await connect(a!.url('/ws/alice-1'), { token: sign('alice') })
    const syncErrors = (): number => a!.logs.filter((line) => line.includes('could not sync message counts')).length
    const refuseWrites = async (pings: number): Promise<void> => {
      await admin.config('SET', 'maxmemory', '1')
      for (let i = 0; i < pings; i++) {
        t.same(await ping(alice), { type: 'pong' }, 'answered under local limits')
        await sleep(60)
      }
      await admin.config('SET', 'maxmemory', '0')
    }
    t.same(await ping(alice), { type: 'pong' })
    t.equal(syncErrors(), 0)
    await refuseWrites(4)
    t.equal(syncErrors(), 1, 'four failed syncs, one line')
    t.ok(a!.logs.some((line) => line.includes('could not sync message counts') && line.includes('OOM')), 'the line carries Redis\'s error')
    t.same(await ping(alice), { type: 'pong' })
    await sleep(100)
    await refuseWrites(2)
    t.equal(syncErrors(), 2, 'a sync that succeeded in between re-arms the line')
    t.equal(a!.logs.filter((line) => line.includes('redis store unreachable')).length, 0, 'not reported as an outage')
    await alice.close()
  })
}
