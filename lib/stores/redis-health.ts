import type { FastifyBaseLogger } from 'fastify'
import { ReplyError } from 'ioredis'

/** A Redis call that did not answer within `commandTimeoutMs`. */
export class RedisTimeoutError extends Error {
  constructor (ms: number) {
    super(`redis did not answer within ${ms} ms`)
    this.name = 'RedisTimeoutError'
  }
}

// Errors Redis answers while it cannot serve: a cluster missing a master, a node still loading
// its data, a replica written to after a failover demoted it.
const UNSERVED = /^(CLUSTERDOWN|LOADING|MASTERDOWN|TRYAGAIN|READONLY)\b/

/**
 * True when `err` means Redis cannot be reached or cannot serve (a timeout, a lost
 * connection, a cluster down); false for an answer about the call itself (out of memory, a
 * wrong type), which says Redis is there.
 */
export function isOutage (err: unknown): boolean {
  if (err instanceof RedisTimeoutError) return true
  if (err instanceof ReplyError) return UNSERVED.test((err as Error).message)
  return err instanceof Error
}

export interface HealthHooks {
  log (): FastifyBaseLogger
  /** Whether new connections are admitted under local limits while Redis is away. */
  readonly failOpen: boolean
  /** A cheap call that proves Redis answers again (rejecting or timing out when it does not). */
  probe (): Promise<unknown>
  /** How often to probe while Redis is away, in ms. */
  readonly probeMs: number
  /** Redis answers again. */
  reachable (): void
}

/**
 * Whether Redis answers, as the store's calls and its connection's events tell: one warn
 * line when an outage starts, whatever started it (a lost connection, a refused one, a
 * call that timed out, a cluster down), one info line when it ends. While it lasts, a probe
 * call runs every `probeMs`, so an outage that was only a slow Redis ends without waiting
 * for a reconnect that never comes.
 */
export class Health {
  readonly #hooks: HealthHooks
  #available = false
  #everReady = false
  #outageLogged = false
  #probe: NodeJS.Timeout | undefined
  #probing = false
  #closed = false

  constructor (hooks: HealthHooks) {
    this.#hooks = hooks
  }

  get available (): boolean {
    return this.#available
  }

  /** Whether Redis ever answered: until then a caller may wait a moment for the first connection. */
  get everReady (): boolean {
    return this.#everReady
  }

  readonly up = (): void => {
    if (this.#available || this.#closed) return
    this.#available = true
    this.#stopProbing()
    if (this.#everReady && this.#outageLogged) this.#hooks.log().info('fastify-secure-ws: redis store reachable again')
    this.#everReady = true
    this.#outageLogged = false
    this.#hooks.reachable()
  }

  readonly down = (err?: unknown): void => {
    if (this.#closed) return
    this.#available = false
    this.#startProbing()
    if (this.#outageLogged) return
    this.#outageLogged = true
    const reason = err instanceof Error ? err.message : 'connection closed'
    const then = this.#hooks.failOpen ? 'admitting new connections under this instance\'s own limits' : 'refusing new connections'
    this.#hooks.log().warn({ reason }, `fastify-secure-ws: redis store unreachable; ${then} until it returns`)
  }

  /** Passes a call's failure through, taking note of an outage. */
  readonly failed = (err: unknown): never => {
    if (isOutage(err)) this.down(err)
    throw err
  }

  close (): void {
    this.#closed = true
    this.#stopProbing()
  }

  #startProbing (): void {
    if (this.#probe !== undefined) return
    this.#probe = setInterval(() => {
      if (this.#probing) return
      this.#probing = true
      this.#hooks.probe().then(this.up, () => {}).finally(() => { this.#probing = false })
    }, this.#hooks.probeMs)
    this.#probe.unref()
  }

  #stopProbing (): void {
    clearInterval(this.#probe)
    this.#probe = undefined
  }
}
