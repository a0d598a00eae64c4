/**
 * The attack run's arithmetic (bench/attack/report.ts): from a made-up record whose answers
 * are known, the figures and each target's pass/fail on both sides of its limit.
 */
import t from 'tap'
import type { FloodKind, PhaseCounts, UserSample } from '../bench/attack/protocol.js'
import { analyse, summary, timeline, toJson, type RunRecord, type Shutdown } from '../bench/attack/report.js'

const T0 = 1_000_000

function counts (phase: string, kind: FloodKind, statuses: Record<string, number>, closeCodes: Record<string, number>, extra: Partial<PhaseCounts> = {}): PhaseCounts {
  return {
    phase,
    kind,
    localAddress: '127.0.0.1',
    attempts: Object.values(statuses).reduce((a, b) => a + b, 0),
    statuses,
    noResponse: 0,
    errors: {},
    closeCodes,
    retryAfter: null,
    endedByServer: {},
    open: 0,
    maxOpen: 100,
    capReachedAfterMs: null,
    openAtSigterm: null,
    startedAt: 0,
    stoppedAt: null,
    ...extra
  }
}

interface Options {
  floodFds?: number
  connectMs?: number[]
  failed?: boolean
  shutdown?: Partial<Shutdown>
  tokenStatuses?: Record<string, number>
  originStatuses?: Record<string, number>
}

/**
 * A baseline of 3 s at 1% CPU with 25 descriptors; a 10 s bad-token phase costing 200 us per
 * 101 and 40 us per 429; a 10 s bad-origin phase of 5,000 refusals at 200 us each.
 */
function record (o: Options = {}): { record: RunRecord, last: PhaseCounts[] } {
  const tokenStatuses = o.tokenStatuses ?? { 101: 30, 429: 10_000 }
  const originStatuses = o.originStatuses ?? { 101: 5000 }
  const tokenNet = (tokenStatuses['101'] ?? 0) * 200e-6 + (tokenStatuses['429'] ?? 0) * 40e-6
  const originNet = (originStatuses['101'] ?? 0) * 200e-6 + (originStatuses['429'] ?? 0) * 40e-6
  const tokenCounts = counts('bad token', 'badToken', tokenStatuses, { 4401: tokenStatuses['101'] ?? 0 }, { retryAfter: { min: 55, max: 60, missing: 0 } })
  const originCounts = counts('bad origin', 'badOrigin', originStatuses, { 1008: originStatuses['101'] ?? 0 })
  const sample = (at: number, fds: number, cpuSeconds: number) => ({ at, fds, cpuSeconds, rssBytes: 1 << 20, floodOpen: 0, floodInFlight: 0, floodCpuSeconds: 0 })
  const user: UserSample[] = [
    { at: T0 + 1000, connectMs: 500, pinged: true, pongMs: 1, error: null }, // baseline: not judged
    ...(o.connectMs ?? [2, 10, 49.9]).map((connectMs, i) => ({ at: T0 + 4000 + i * 100, connectMs, pinged: false, pongMs: null, error: null })),
    ...(o.failed === true ? [{ at: T0 + 15_000, connectMs: null, pinged: false, pongMs: null, error: 'no open' }] : [])
  ]
  return {
    record: {
      samples: [sample(T0, 24, 0), sample(T0 + 1500, 25, 0.015), sample(T0 + 2900, 26, 0.029), sample(T0 + 5000, o.floodFds ?? 325, 0.2), sample(T0 + 15_000, 100, 0.8)],
      windows: [
        { name: 'baseline', startAt: T0, endAt: T0 + 3000, cpuStart: 0, cpuEnd: 0.03, logStart: 0, logEnd: 0 },
        { name: 'bad token', startAt: T0 + 3000, endAt: T0 + 13_000, cpuStart: 1, cpuEnd: 1 + 0.1 + tokenNet, logStart: 0, logEnd: 400 * 10_030, counts: tokenCounts },
        { name: 'bad origin', startAt: T0 + 13_000, endAt: T0 + 23_000, cpuStart: 5, cpuEnd: 5 + 0.1 + originNet, logStart: 0, logEnd: 0, counts: originCounts }
      ],
      user,
      shutdown: { at: T0 + 23_000, floodOpenAtSigterm: 120, exitCode: 0, signal: null, seconds: 4.9, killed: false, ...o.shutdown }
    },
    last: [{ ...tokenCounts, endedByServer: { 101: { count: 30, p50: 1000, max: 1100 } } }, originCounts]
  }
}

const close = (actual: number | null, expected: number): boolean => actual !== null && Math.abs(actual - expected) < 1e-6
const passes = (results: ReturnType<typeof analyse>): Record<string, boolean> => Object.fromEntries(results.targets.map((c) => [c.name, c.pass]))

t.test('figures: baseline, CPU per refusal of each kind net of the baseline rate, descriptors above the baseline', async (t) => {
  const { record: r, last } = record()
  const results = analyse(r, last)
  t.equal(results.baseline.serverFds, 25, 'the median of the baseline samples')
  t.ok(close(results.baseline.cpuPercent, 1))
  const [token, origin] = results.phases
  t.ok(close(token!.cpuSecondsNet, 30 * 200e-6 + 10_000 * 40e-6), 'the baseline rate over 10 s taken off')
  t.ok(close(origin!.cpuUsPerRefused, 200))
  t.ok(close(results.flood.cpuUsPerRefusedUpgrade, 200), 'only from the phase that was mostly 101s')
  t.equal(results.flood.cpuUsPerRefusedUpgradeFrom, 'bad origin')
  t.ok(close(results.flood.cpuUsPer429, 40), 'the 30 101s taken off at the bad-origin cost')
  t.equal(results.flood.http429, 10_000)
  t.equal(results.flood.serverFdsMax, 325)
  t.equal(results.flood.serverFdsAboveBaseline, 300)
  t.ok(close(token!.logBytesPerRefused, 400))
  t.same(token!.endedByServer, { 101: { count: 30, p50: 1000, max: 1100 } }, 'lifetimes from the last snapshot')
  t.same(results.flood.legit, { attempts: 3, failures: 0, errors: [], pongs: 0, connectP50Ms: 10, connectMaxMs: 49.9, pongMaxMs: null }, 'the baseline\'s 500 ms is not the flood\'s')
  t.same(passes(results), { 'flood descriptors': true, 'legit worst connect': true, 'CPU per refused upgrade': true, 'CPU per locked-out attempt (429)': true, 'SIGTERM under flood': true })
  t.same(results.contractChecks.map((c) => [c.name, c.pass]), [['lockout after 30 failures', true], ['429 carries Retry-After', true], ['origin refusals never lock out', true]])
})

t.test('each target fails just past its limit', async (t) => {
  t.equal(passes(analyse(record({ floodFds: 326 }).record, []))['flood descriptors'], false, '301 above the baseline')
  t.equal(passes(analyse(record({ connectMs: [2, 50] }).record, []))['legit worst connect'], false, '50 ms is not under 50 ms')
  t.equal(passes(analyse(record({ failed: true }).record, []))['legit worst connect'], false, 'a failed connect fails it')
  t.equal(passes(analyse(record({ shutdown: { seconds: 5.01 } }).record, []))['SIGTERM under flood'], false, 'slower than 5 s')
  t.equal(passes(analyse(record({ shutdown: { exitCode: 1, seconds: 1 } }).record, []))['SIGTERM under flood'], false, 'exit 1')
  t.equal(passes(analyse(record({ shutdown: { killed: true, exitCode: null, signal: 'SIGKILL', seconds: 10 } }).record, []))['SIGTERM under flood'], false, 'killed')
  t.equal(passes(analyse(record({ shutdown: { floodOpenAtSigterm: 0 } }).record, []))['SIGTERM under flood'], false, 'no flood socket open: not shown')
})

t.test('today\'s shape: no lockout, every refusal a 101; the 429 target fails for want of any 429', async (t) => {
  const results = analyse(record({ tokenStatuses: { 101: 6000 }, originStatuses: { 101: 6000 } }).record, [])
  t.equal(results.flood.cpuUsPer429, null)
  t.ok(close(results.flood.cpuUsPerRefusedUpgrade, 200), 'worst of the two 101 phases')
  t.equal(results.flood.cpuUsPerRefusedUpgradeFrom, 'bad token, bad origin')
  const byName = Object.fromEntries(results.targets.map((c) => [c.name, c]))
  t.equal(byName['CPU per locked-out attempt (429)']!.pass, false)
  t.equal(byName['CPU per locked-out attempt (429)']!.value, 'no 429 answered: no lockout')
  t.same(results.contractChecks.map((c) => [c.name, c.pass]), [['lockout after 30 failures', false], ['429 carries Retry-After', true], ['origin refusals never lock out', true]])
})

t.test('a refusal costing more than 225 us, or a 429 more than 45 us, fails', async (t) => {
  const { record: r } = record()
  // 0.2 s more over 5,000 refusals: 240 us each at bad origin; 0.06 s more at bad token.
  r.windows[2]!.cpuEnd += 0.2
  r.windows[1]!.cpuEnd += 0.06
  const results = analyse(r, [])
  t.ok(close(results.flood.cpuUsPerRefusedUpgrade, 240))
  t.ok(close(results.flood.cpuUsPer429, (30 * 200e-6 + 10_000 * 40e-6 + 0.06 - 30 * 240e-6) / 10_000 * 1e6))
  t.same(passes(results)['CPU per refused upgrade'], false)
  t.same(passes(results)['CPU per locked-out attempt (429)'], false)
})

t.test('the printed table, timeline and JSON hold the figures', async (t) => {
  const { record: r, last } = record()
  const results = analyse(r, last)
  const text = summary(results)
  t.match(text, /^PASS {2}flood descriptors {18}325 max, 300 above the baseline 25 {2}\(target <= 300 above baseline\)$/m)
  t.match(text, /^PASS {2}CPU per locked-out attempt \(429\) {3}40\.0 us/m)
  t.match(timeline(r), /^0\.0 +baseline /m)
  t.equal(toJson({ rows: [[1, -2.5e-7]], name: 'x' }), '{\n  "rows": [\n    [1, -2.5e-7]\n  ],\n  "name": "x"\n}')
})
