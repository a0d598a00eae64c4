/**
 * The legitimate user of `npm run attack`, a child process of bench/attack.ts: from its own
 * source address, over and over, it connects with a valid token, sends a ping, waits for the
 * pong and closes. It runs alone in its process so its clock reads the server, not a busy
 * event loop of ours.
 *
 * It connects every ~100 ms but pings at most every PING_EVERY_MS: the example holds a user
 * to 100 messages a minute (WS_MAX_MESSAGES_PER_MINUTE), which a ping every 100 ms would pass
 * within ten seconds, and the run would then measure the rate limiter, not the attack. The
 * other attempts connect and close.
 */
import { setTimeout as delay } from 'node:timers/promises'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import { SESSION_PATH, USER_ID, type UserCommand, type UserConfig, type UserReport, type UserSample } from './protocol.js'

const PING = '{"type":"ping"}'
const PONG = '{"type":"pong"}'
// 86 a minute, under the example's default 100 (and its 10 a second).
const PING_EVERY_MS = 700

const config = JSON.parse(process.env.ATTACK_USER_CONFIG ?? 'null') as UserConfig | null
if (config === null) throw new Error('ATTACK_USER_CONFIG is required (bench/attack.ts starts this process)')

const token = createSigner({ key: config.secret, algorithm: 'HS256', expiresIn: 3_600_000 })({ sub: USER_ID })
const url = `ws://127.0.0.1:${config.port}${SESSION_PATH}?token=${token}`
const origin = `http://127.0.0.1:${config.port}`

function attempt (ping: boolean): Promise<UserSample> {
  return new Promise((resolve) => {
    const at = Date.now()
    const started = performance.now()
    let connectMs: number | null = null
    let pingedAt = 0
    let pongMs: number | null = null
    let error: string | null = null
    const ws = new WebSocket(url, { origin, localAddress: config!.localAddress, handshakeTimeout: config!.timeoutMs })
    const fail = (what: string): void => {
      error ??= what
      ws.terminate()
    }
    const timer = setTimeout(() => fail(connectMs === null ? 'no open' : pongMs === null ? 'no pong' : 'no close'), config!.timeoutMs)
    ws.on('open', () => {
      connectMs = performance.now() - started
      if (!ping) return ws.close(1000)
      pingedAt = performance.now()
      ws.send(PING)
    })
    ws.on('message', (data) => {
      if (data.toString() !== PONG) return fail(`unexpected frame ${data.toString().slice(0, 80)}`)
      pongMs = performance.now() - pingedAt
      ws.close(1000)
    })
    ws.on('unexpected-response', (_request, response) => fail(`HTTP ${response.statusCode}`))
    ws.on('error', (err: NodeJS.ErrnoException) => { error ??= err.code ?? err.message })
    ws.on('close', (code, reason) => {
      clearTimeout(timer)
      if (connectMs === null || (ping && pongMs === null)) error ??= `closed ${code} ${reason.toString()}`
      resolve({ at, connectMs, pinged: ping, pongMs, error })
    })
  })
}

function report (message: UserReport): void {
  process.send!(message)
}

let stopping = false
process.on('message', (command: UserCommand) => {
  if (command.type === 'stop') stopping = true
})
// The orchestrator died without saying so: stop after the current attempt.
process.on('disconnect', () => { stopping = true })

async function main (): Promise<void> {
  let lastPing = Number.NEGATIVE_INFINITY
  // eslint-disable-next-line no-unmodified-loop-condition -- set by the orchestrator's message and disconnect handlers
  while (!stopping) {
    const started = Date.now()
    const ping = started - lastPing >= PING_EVERY_MS
    if (ping) lastPing = started
    const sample = await attempt(ping)
    if (!process.connected) break
    report({ type: 'sample', sample })
    const wait = started + config!.intervalMs - Date.now()
    if (wait > 0 && !stopping) await delay(wait)
  }
  if (process.connected) {
    report({ type: 'stopped' })
    process.disconnect?.()
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
