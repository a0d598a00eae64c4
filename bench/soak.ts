/**
 * `npm run soak`: connection lifecycles by the hundred thousand, then proof that nothing
 * leaked (bench/soak-core.ts says what a cycle does and what is checked). Runs with
 * --expose-gc, for the heap check. Exits 1 when a check fails.
 *
 * Environment: SOAK_CYCLES (default 100000), SOAK_WARMUP (cycles before the heap is first
 * measured; default SOAK_USERS, so that every user's token is in the verifier's cache),
 * SOAK_CONCURRENCY (clients in flight, default 50), SOAK_USERS (distinct user ids, default
 * 10000: a user comes back every SOAK_USERS cycles and must stay under its 10 messages a
 * second and 100 a minute, so keep it well above the cycles per second).
 */
import { run } from './common.js'
import { ENDINGS, mb, runSoak } from './soak-core.js'

function positiveInteger (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isSafeInteger(value) || value <= 0) {
    process.stderr.write(`${name} must be a positive integer, got "${raw}"\n`)
    process.exit(1)
  }
  return value
}

const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) {
  process.stderr.write('soak: run with node --expose-gc (npm run soak does) so the heap can be checked\n')
  process.exit(1)
}

const users = positiveInteger('SOAK_USERS', 10_000)
const options = {
  cycles: positiveInteger('SOAK_CYCLES', 100_000),
  warmupCycles: positiveInteger('SOAK_WARMUP', users),
  concurrency: positiveInteger('SOAK_CONCURRENCY', 50),
  users,
  gc
}
const n = (value: number): string => Math.round(value).toLocaleString('en-US')

run(async () => {
  process.stdout.write(`soak: ${n(options.cycles)} cycles after a warm-up of ${n(options.warmupCycles)}, ${options.concurrency} in flight, ${n(users)} users; endings in turn: ${ENDINGS.join(', ')}\n`)
  const started = Date.now()
  const report = await runSoak({
    ...options,
    onProgress (done, total) {
      process.stdout.write(`  ${n(done)} / ${n(total)} cycles, ${((Date.now() - started) / 1000).toFixed(0)} s\n`)
    }
  })

  process.stdout.write(`cycles/s: ${n(report.cyclesPerSecond)} (${n(report.cycles)} in ${report.seconds.toFixed(1)} s)\n`)
  process.stdout.write(`endings: ${Object.entries(report.endings).map(([ending, count]) => `${ending} ${n(count)}`).join(', ')}\n`)
  if (report.heapStart !== undefined && report.heapEnd !== undefined) {
    process.stdout.write(`heap after GC: start ${mb(report.heapStart)}, end ${mb(report.heapEnd)}\n`)
  }
  for (const check of report.checks) {
    process.stdout.write(`${check.ok ? 'PASS' : 'FAIL'} ${check.name}: ${check.detail}\n`)
  }
  for (const example of report.unexpectedExamples) process.stdout.write(`  unexpected: ${example}\n`)
  process.stdout.write(`${report.ok ? 'soak passed' : 'soak FAILED'} in ${((Date.now() - started) / 1000).toFixed(0)} s\n`)
  process.exitCode = report.ok ? 0 : 1
})
