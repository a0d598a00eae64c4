import { fullJitter } from './backoff.js'
import { closeKindOf, closePolicyOf, type CloseKind } from './close-codes.js'
import { expiryOf } from './token.js'

/**
 * What a route accepts and sends: `RouteContract<typeof route>` from the server package, or
 * written by hand. `inbound` maps each message type to its payload type (`undefined` for a
 * message without one), `outbound` each frame type to the fields beside `type`.
 */
export interface Contract {
  inbound: object
  outbound: object
}

/** A contract that types nothing: any type, any payload. */
export interface AnyContract {
  inbound: any
  outbound: any
}

/** The frames a client receives: the route's outbound types and the built-in `error`. */
export type Frames<C extends Contract> = C['outbound'] & { error: { message: string } }

/** One received frame of type `K`, as parsed: its fields and its `type`. */
export type Frame<C extends Contract, K extends keyof Frames<C>> = Frames<C>[K] & { type: K }

/** The arguments after the type: the payload, which may be left out when the message takes none. */
export type PayloadArgs<P> = undefined extends P ? [payload?: P] : [payload: P]

// A route can refresh in place when it takes `refresh {token}` and answers `refreshed {exp}`.
type CanRefresh<C extends Contract> =
  C['inbound'] extends { refresh: { token: string } } ? C['outbound'] extends { refreshed: { exp: number } } ? true : false : false

/** The part of the WebSocket API the client uses: browsers', Node 22's and `ws`'s all fit. */
export interface WebSocketLike {
  readonly readyState: number
  send (data: string): void
  close (code?: number, reason?: string): void
  onopen: ((event: any) => void) | null
  onmessage: ((event: any) => void) | null
  onclose: ((event: any) => void) | null
  onerror: ((event: any) => void) | null
}

export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike

/** `connecting` covers getting a token, the handshake and waiting to reconnect. */
export type ClientState = 'connecting' | 'open' | 'closed'

export interface ClientOptions<C extends Contract> {
  /** `ws://` or `wss://` URL of the route, e.g. `wss://app.example.com/ws/rooms/r1`. */
  url: string
  /**
   * Returns the token to connect with, and to refresh with when `refresh` is on. Called
   * before every connection attempt, so a retry after 4401 gets a fresh one. A rejection is
   * reported to `onError` and retried with backoff.
   */
  getToken: () => string | Promise<string>
  /** WebSocket constructor: defaults to the platform's (browsers, Node 22); pass `ws` in Node 20. */
  WebSocket?: WebSocketConstructor
  /**
   * Sends `{"type":"refresh","payload":{"token":...}}` with a token from `getToken` before
   * the current one expires, so the connection outlives it. Needs a route that takes
   * `refresh {token}` and answers `refreshed {exp}`. @default false
   */
  refresh?: CanRefresh<C> extends false ? false : boolean
  /**
   * How long before `exp` to refresh; never before half of the token's remaining lifetime,
   * so short-lived tokens are not refreshed in a loop. @default 30000
   */
  refreshBeforeMs?: number
  /** Whether to reconnect after a close worth retrying (see PROTOCOL.md). @default true */
  reconnect?: boolean
  /** Delay in ms before the n-th retry (0 for the first) since the last settled connection. @default fullJitter(500, 30000) */
  backoff?: (attempt: number) => number
  /**
   * Called on every `open`. A refused connection opens too (the server completes the
   * upgrade so a browser can read why) and closes right after: `onClose` tells.
   */
  onOpen?: () => void
  /** Called on every close, with why and whether the client will reconnect. */
  onClose?: (error: SecureWsCloseError) => void
  /** Called when `getToken` fails or a listener throws. @default console.error */
  onError?: (error: unknown) => void
}

export interface SecureWsClient<C extends Contract> {
  readonly state: ClientState
  /** Sends `{"type","payload"}`; false when not connected (nothing is queued). */
  send<K extends keyof C['inbound'] & string> (type: K, ...payload: PayloadArgs<C['inbound'][K]>): boolean
  /** Calls `listener` with every frame of `type` (`error` included); returns a function that removes it. */
  on<K extends keyof Frames<C> & string> (type: K, listener: (frame: Frame<C, K>) => void): () => void
  /** Closes with 1000 and stops reconnecting; resolves once the socket is closed. */
  close (): Promise<void>
}

/** Why a connection closed: the close frame's code and reason, what it means, and what happens next. */
export class SecureWsCloseError extends Error {
  override name = 'SecureWsCloseError'
  readonly kind: CloseKind
  constructor (
    readonly code: number,
    readonly reason: string,
    readonly willReconnect: boolean,
    /** Delay before the next attempt, when one is coming. */
    readonly retryInMs?: number
  ) {
    super(`WebSocket closed with ${code}${reason === '' ? '' : ` ${reason}`}`)
    this.kind = closeKindOf(code, reason)
  }
}

/** A refused connection is closed as soon as it opens; one that lasts this long, or hears a frame, was admitted. */
const SETTLED_MS = 1000
const BEARER = 'bearer'
// setTimeout fires at once for longer delays: a token valid for weeks is refreshed in steps.
const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * Connects to a fastify-secure-ws route with the `bearer` subprotocol and keeps connected:
 * reconnects with backoff after a transient close, once with a fresh token after 4401, never
 * after a policy close; refreshes the token in place when `refresh` is on.
 */
export function createClient<C extends Contract = AnyContract> (options: ClientOptions<C>): SecureWsClient<C> {
  const Socket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
  if (typeof Socket !== 'function') throw new TypeError('no WebSocket: pass options.WebSocket (in Node 20, the ws package)')
  if (typeof options.getToken !== 'function') throw new TypeError('getToken must be a function')
  const backoff = options.backoff ?? fullJitter()
  const refreshBeforeMs = options.refreshBeforeMs ?? 30_000
  const report = options.onError ?? console.error
  const listeners = new Map<string, Set<(frame: any) => void>>()
  const closeWaiters: Array<() => void> = []
  let state: ClientState = 'connecting'
  let socket: WebSocketLike | undefined
  let stopped = false
  // Failed attempts since the last settled connection, and whether a 4401 has had its retry.
  let attempt = 0
  let authRetried = false
  let retryTimer: ReturnType<typeof setTimeout> | undefined
  let refreshTimer: ReturnType<typeof setTimeout> | undefined
  let expiresAt: number | undefined

  const safely = <A extends unknown[]>(fn: ((...args: A) => void) | undefined, ...args: A): void => {
    try {
      fn?.(...args)
    } catch (err) {
      report(err)
    }
  }

  /** Acts on how a connection attempt ended; returns the delay before the next one, if any. */
  const settle = (policy: 'retry' | 'retryOnce' | 'stop'): number | undefined => {
    if (stopped || options.reconnect === false) policy = 'stop'
    const willReconnect = policy === 'retry' || (policy === 'retryOnce' && !authRetried)
    if (policy === 'retryOnce') authRetried = true
    if (!willReconnect) {
      state = 'closed'
      stopped = true
      closeWaiters.splice(0).forEach((resolve) => resolve())
      return undefined
    }
    const delay = backoff(attempt++)
    state = 'connecting'
    retryTimer = setTimeout(connect, delay)
    return delay
  }

  const scheduleRefresh = (): void => {
    clearTimeout(refreshTimer)
    if (options.refresh !== true || expiresAt === undefined) return
    const remaining = expiresAt - Date.now()
    refreshTimer = setTimeout(refresh, Math.min(MAX_TIMER_MS, Math.max(remaining - refreshBeforeMs, remaining / 2)))
  }

  const refresh = async (): Promise<void> => {
    const current = socket
    let token: string
    try {
      token = await options.getToken()
    } catch (err) {
      // The server closes at expiry with 4401, and the retry that follows asks again.
      return report(err)
    }
    if (current !== socket || state !== 'open') return
    const next = expiryOf(token)
    // A cached token would be "refreshed" ever more often as expiry nears, never further.
    if (next !== undefined && expiresAt !== undefined && next <= expiresAt) return report(new Error('getToken returned a token that expires no later than the current one'))
    socket!.send(JSON.stringify({ type: 'refresh', payload: { token } }))
  }

  async function connect (): Promise<void> {
    let token: string
    try {
      token = await options.getToken()
      if (typeof token !== 'string' || token === '') throw new TypeError('getToken must return a non-empty string')
    } catch (err) {
      if (stopped) return
      report(err)
      settle('retry')
      return
    }
    if (stopped) return
    let ws: WebSocketLike
    try {
      ws = new Socket!(options.url, [BEARER, token])
    } catch (err) {
      // A malformed URL: no retry can fix it.
      report(err)
      settle('stop')
      return
    }
    socket = ws
    let openedAt: number | undefined
    let heard = false
    ws.onopen = () => {
      state = 'open'
      openedAt = Date.now()
      expiresAt = expiryOf(token)
      scheduleRefresh()
      safely(options.onOpen)
    }
    ws.onmessage = (event: { data: unknown }) => {
      if (typeof event.data !== 'string') return
      let frame: { type?: unknown, exp?: unknown }
      try {
        frame = JSON.parse(event.data)
      } catch {
        return
      }
      if (typeof frame !== 'object' || frame === null || typeof frame.type !== 'string') return
      heard = true
      if (frame.type === 'refreshed' && typeof frame.exp === 'number') {
        expiresAt = frame.exp * 1000
        scheduleRefresh()
      }
      listeners.get(frame.type)?.forEach((listener) => safely(listener, frame))
    }
    // The close event that follows carries the code; the error event carries nothing more.
    ws.onerror = () => {}
    ws.onclose = (event: { code: number, reason: string }) => {
      ws.onopen = ws.onmessage = ws.onclose = null
      clearTimeout(refreshTimer)
      socket = undefined
      if (heard || (openedAt !== undefined && Date.now() - openedAt >= SETTLED_MS)) {
        attempt = 0
        authRetried = false
      }
      const delay = settle(closePolicyOf(event.code))
      safely(options.onClose, new SecureWsCloseError(event.code, event.reason, delay !== undefined, delay))
    }
  }

  void connect()

  return {
    get state () {
      return state
    },
    send (type, ...[payload]) {
      if (state !== 'open' || socket === undefined) return false
      socket.send(JSON.stringify(payload === undefined ? { type } : { type, payload }))
      return true
    },
    on (type, listener) {
      let set = listeners.get(type)
      if (set === undefined) listeners.set(type, set = new Set())
      set.add(listener)
      return () => { set.delete(listener) }
    },
    close () {
      stopped = true
      clearTimeout(retryTimer)
      clearTimeout(refreshTimer)
      if (socket === undefined) {
        state = 'closed'
        return Promise.resolve()
      }
      socket.close(1000)
      return new Promise((resolve) => { closeWaiters.push(resolve) })
    }
  }
}
