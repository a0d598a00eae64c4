/**
 * What the attack run's three processes say to each other over their IPC channels: the
 * orchestrator (bench/attack.ts), the flood generator (flood.ts) and the legitimate user
 * (user.ts). Timestamps are `Date.now()` milliseconds, the one clock all three share.
 */

/** What a flood sends: a forged token with an allowed Origin, or a valid token with a refused one. */
export type FloodKind = 'badToken' | 'badOrigin'

export const FLOOD_KINDS: Record<FloodKind, string> = {
  badToken: 'invalid token, allowed Origin',
  badOrigin: 'valid token, refused Origin'
}

/** The route and session every upgrade asks for. */
export const SESSION_PATH = '/ws/sessions/alice-1'
export const USER_ID = 'alice'
/** An Origin outside the example's default allowlist. */
export const REFUSED_ORIGIN = 'http://attacker.example'

export interface FloodConfig {
  port: number
  secret: string
  /** Upgrades awaiting their HTTP answer at once. */
  concurrency: number
  /** Flood sockets one phase may hold open at once (a harness bound, not the attack's). */
  maxOpenPerPhase: number
  maxAttemptsPerPhase: number
}

export type FloodCommand =
  /**
   * Start a phase (and stop the previous one). With `hold` false a socket is ended by us as
   * soon as its answer (and close frame) arrived: a warm-up that leaves nothing open.
   */
  | { type: 'start', phase: string, kind: FloodKind, localAddress: string, hold: boolean }
  /** Stop opening sockets; the open ones stay open. */
  | { type: 'stop' }
  | { type: 'snapshot' }
  /**
   * The server has just been sent SIGTERM: sockets ended from now on are not the server's
   * choice, so their lifetimes are not recorded. Opening goes on until the listener refuses.
   */
  | { type: 'sigterm' }
  /** Destroy every socket, send a last snapshot, exit. */
  | { type: 'finish' }

/** How long after its HTTP answer the server ended a socket (FIN or reset), in ms. */
export interface Lifetimes {
  count: number
  p50: number | null
  max: number | null
}

export interface PhaseCounts {
  phase: string
  kind: FloodKind
  localAddress: string
  attempts: number
  /** HTTP status of the first answer line, by code ('101', '429', ...). */
  statuses: Record<string, number>
  /** Sockets that closed or failed before any HTTP answer. */
  noResponse: number
  errors: Record<string, number>
  /** Close code of the first frame after a 101, by code; 'none' when the socket ended without one. */
  closeCodes: Record<string, number>
  retryAfter: { min: number, max: number, missing: number } | null
  /** Sockets the server ended before SIGTERM, by the status they got. */
  endedByServer: Record<string, Lifetimes>
  /** This phase's sockets still open. */
  open: number
  maxOpen: number
  /** ms after the phase started when it first held maxOpenPerPhase sockets and had to wait (null: never). */
  capReachedAfterMs: number | null
  /** Sockets of this phase open when the server got SIGTERM (null: not yet). */
  openAtSigterm: number | null
  startedAt: number
  stoppedAt: number | null
}

export interface FloodSnapshot {
  at: number
  /** Flood sockets open now, every phase. */
  open: number
  /** Upgrades awaiting their HTTP answer now. */
  inFlight: number
  /** The generator's own CPU time so far. */
  cpuSeconds: number
  phases: PhaseCounts[]
}

export type FloodReport =
  | { type: 'status', at: number, open: number, inFlight: number, cpuSeconds: number }
  | { type: 'snapshot', snapshot: FloodSnapshot }

export interface UserConfig {
  port: number
  secret: string
  localAddress: string
  /** One attempt starts this long after the previous one started, or when it ends. */
  intervalMs: number
  timeoutMs: number
}

export type UserCommand = { type: 'stop' }

/** One connect, ping, pong, close by the legitimate user. */
export interface UserSample {
  at: number
  /** `new WebSocket()` to `open`; null when it never opened. */
  connectMs: number | null
  /** Whether this attempt sent a ping (see user.ts: not every attempt may). */
  pinged: boolean
  /** ping sent to pong received. */
  pongMs: number | null
  error: string | null
}

export type UserReport = { type: 'sample', sample: UserSample } | { type: 'stopped' }
