import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { endingOf, runSoak, type Ending } from '../bench/soak-core.js'

// tap runs test files without --expose-gc; the flag can still be set at run time, and a new
// context then gets a `gc` function.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

// One pass over the users in the warm-up and one measured: every user's token is cached
// before the heap is first measured, and no user connects twice within a phase, so its
// message limits hold however fast this machine runs the cycles.
const USERS = 2000
const CYCLES = 2000

t.test('short soak: 2,000 connection lifecycles leave nothing behind', async (t) => {
  t.type(gc, 'function', 'a gc function, so the heap and collection checks run')
  const report = await runSoak({ cycles: CYCLES, warmupCycles: CYCLES, concurrency: 50, users: USERS, gc })

  t.equal(report.unexpected, 0, 'every cycle ended as planned')
  t.same(report.unexpectedExamples, [], 'none described')
  const expected: Record<Ending, number> = { clientClose: 0, serverDisconnect: 0, vanish: 0, badToken: 0, badOrigin: 0, rateLimited: 0 }
  for (let i = CYCLES; i < 2 * CYCLES; i++) expected[endingOf(i, USERS)]++
  t.same(report.endings, expected, 'the measured cycles ended in the planned numbers')
  t.ok(Object.values(report.endings).every((n) => n > 0), 'each ending at least once')

  const names = report.checks.map((check) => check.name)
  t.same(names, [
    'every cycle ended as expected (frames, close code and reason)',
    'stats(): 0 connections, users, topics, expiry timers, store slots',
    'store: rate counters dropped a minute after their last message',
    'HTTP server: listeners as at the start (upgrade, connection, ...)',
    'ws server: no socket left open, listeners as at the start',
    'HTTP server: no sockets held',
    'active resources while listening with no clients: no more than at listen',
    'admitted connections: every one garbage-collected',
    'heap after GC: at most 10% above the warm start',
    'active resources after the server closed: no more than before it started'
  ], 'every leak check ran, the heap check included')
  for (const check of report.checks) t.ok(check.ok, `${check.name}: ${check.detail}`)
  t.ok(report.ok, 'the soak passed')
})
