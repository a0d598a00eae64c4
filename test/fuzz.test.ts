import t from 'tap'
import { fuzz } from '../bench/fuzz/driver.js'
import { AIMED_OUTCOMES } from '../bench/fuzz/oracle.js'

// A short, seeded run of `npm run fuzz` (bench/fuzz.ts, which runs a million frames).
const FRAMES = 5000
const SEED = 20260101

t.test(`${FRAMES} seeded fuzz frames over real sockets each get their defined outcome`, async (t) => {
  const result = await fuzz({ frames: FRAMES, seed: SEED })
  const failures = result.failures.summary()
  const handlerFailures = Object.fromEntries(Object.entries(failures).filter(([kind]) => kind.startsWith('handler ')))
  const otherFailures = Object.fromEntries(Object.entries(failures).filter(([kind]) => !kind.startsWith('handler ')))

  t.equal(result.answered, FRAMES, 'every frame was answered or closed, or reported')
  t.strictSame(otherFailures, {}, 'every frame got exactly its reply or close; nothing crashed, rejected unhandled, logged an error, hung or held a connection')
  t.strictSame(handlerFailures, {}, 'no handler was called with a payload its declared schema forbids')
  for (const kind of AIMED_OUTCOMES) {
    t.ok((result.outcomes[kind] ?? 0) > 0, `some frame got "${kind}"`)
  }
})
