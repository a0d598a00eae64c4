/**
 * `npm run fuzz`: property-based fuzzing of the plugin's inbound path through real sockets.
 *
 * Starts Fastify and the plugin on 127.0.0.1 in this process (bench/fuzz/server.ts), and sends
 * it frames generated with fast-check (bench/fuzz/frames.ts) over a few pipelined connections.
 * Each frame must get exactly the answer or the close the plugin's documented rules give it
 * (bench/fuzz/oracle.ts); a handler must never see a payload its schema forbids; nothing may
 * crash, reject unhandled, log an error, hang, or hold a connection after its client left.
 * Prints progress every 5 s, then frames/s, the outcomes by kind, and each kind of failure
 * with its first examples. Exit code 1 on any failure.
 *
 * Environment: FUZZ_FRAMES (default 1000000), FUZZ_SEED (default: from the clock; printed, and
 * the same seed sends the same frames), FUZZ_CONNECTIONS (default 4), FUZZ_WINDOW (frames in
 * flight per connection, default 32).
 */
import { readInt } from './common.js'
import { fuzz } from './fuzz/driver.js'

const format = (n: number): string => Math.round(n).toLocaleString('en-US')

async function main (): Promise<void> {
  const frames = readInt('FUZZ_FRAMES', 1_000_000, 1, 1_000_000_000)
  const seed = readInt('FUZZ_SEED', Date.now() % 2_147_483_647, 0, 2_147_483_647)
  const connections = readInt('FUZZ_CONNECTIONS', 4, 1, 64)
  const window = readInt('FUZZ_WINDOW', 32, 1, 1024)
  console.log(`fuzz: ${format(frames)} frames over ${connections} connections, ${window} in flight each, seed ${seed} (FUZZ_SEED=${seed} sends the same frames)`)
  const result = await fuzz({
    frames,
    seed,
    connections,
    window,
    onProgress: (p) => console.log(`  ${format(p.answered)} / ${format(p.frames)} frames, ${format(p.answered / (p.elapsedMs / 1000))} frames/s, ${p.failures} failure(s)`)
  })
  console.log(`\n${format(result.answered)} frames in ${(result.elapsedMs / 1000).toFixed(1)} s: ${format(result.framesPerSecond)} frames/s over ${format(result.connections)} connections (reconnects included)`)
  console.log('\noutcomes:')
  for (const [kind, count] of Object.entries(result.outcomes).sort((a, b) => b[1] - a[1])) {
    console.log(`  ${format(count).padStart(10)}  ${kind}`)
  }
  const failures = Object.entries(result.failures.summary())
  if (failures.length === 0) {
    console.log('\nno failures')
    return
  }
  console.log(`\n${format(result.failures.total)} failure(s):`)
  for (const [kind, { count, examples }] of failures) {
    console.log(`  ${format(count).padStart(10)}  ${kind}`)
    for (const example of examples) console.log(`              - ${example.replaceAll('\n', '\n                ')}`)
  }
  process.exitCode = 1
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
