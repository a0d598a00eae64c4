import { CLOSE_KINDS, REFUSAL_KINDS } from './telemetry.js'
import type { PrometheusRegistry, SecureWsStats } from './types.js'

/** The prom-client constructors the metrics need (prom-client is an optional peer). */
interface PromClient {
  Gauge: new (config: object) => { set: (value: number) => void }
  Counter: new (config: object) => { inc: (labels: Record<string, string>, value: number) => void }
}

function loadPromClient (): PromClient {
  try {
    // Loaded only when the app asks for metrics, so apps without them need not install it.
    return require('prom-client') as PromClient
  } catch {
    throw new Error('fastify-secure-ws: the prometheus option needs prom-client; install it (npm install prom-client)')
  }
}

/**
 * Registers the plugin's metrics on `registry`. Values are read from `stats()` when the
 * registry is scraped, so nothing is paid per message or per connection. No label holds a
 * user id, an address, a session or a token: only the fixed refusal and close kinds.
 */
export function registerPrometheusMetrics (registry: PrometheusRegistry, stats: () => SecureWsStats): void {
  const { Gauge, Counter } = loadPromClient()
  const registers = [registry]
  // prom-client counters only go up: each scrape adds what was counted since the last one.
  const reported = { refusals: new Map<string, number>(), closes: new Map<string, number>(), messages: 0 }
  const report = (counter: { inc: (labels: Record<string, string>, value: number) => void }, counts: Record<string, number>, seen: Map<string, number>): void => {
    for (const [reason, value] of Object.entries(counts)) {
      counter.inc({ reason }, value - (seen.get(reason) ?? 0))
      seen.set(reason, value)
    }
  }
  const refusals = new Counter({
    name: 'secure_ws_refusals_total',
    help: 'WebSocket upgrades refused, by reason',
    labelNames: ['reason'],
    registers,
    collect () { report(this as never, stats().refusals, reported.refusals) }
  })
  const closes = new Counter({
    name: 'secure_ws_closes_total',
    help: 'Admitted WebSocket connections the server closed, by reason (closes started by the client are not counted)',
    labelNames: ['reason'],
    registers,
    collect () { report(this as never, stats().closes, reported.closes) }
  })
  new Counter({ // eslint-disable-line no-new
    name: 'secure_ws_messages_total',
    help: 'Inbound WebSocket frames on admitted connections, valid or not',
    registers,
    collect (this: { inc: (value: number) => void }) {
      const messages = stats().messages
      this.inc(messages - reported.messages)
      reported.messages = messages
    }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'secure_ws_connections',
    help: 'Admitted WebSocket connections open on this process',
    registers,
    collect (this: { set: (value: number) => void }) { this.set(stats().connections) }
  })
  // Every reason is on the page from the start, at 0.
  for (const reason of REFUSAL_KINDS) refusals.inc({ reason }, 0)
  for (const reason of CLOSE_KINDS) closes.inc({ reason }, 0)
}
