import { randomBytes } from 'node:crypto'
import type { WebSocket } from 'ws'
import { HangUps } from './hang-up.js'
import { addTo, removeFrom, sizes } from './keyed-sets.js'
import type { Telemetry } from './telemetry.js'
import type { CloseKind, ConnectionRegistry, RegisteredConnection, SecureWsStats, SecureWsStore } from './types.js'

/** How often expiring connections are checked; a token is honoured at most this long past `exp`. */
const EXPIRY_CHECK_MS = 250

/** The open connections of this process, by user and by topic. */
export class Registry implements ConnectionRegistry {
  readonly #connections = new Set<RegisteredConnection>()
  readonly #byUser = new Map<string, Set<RegisteredConnection>>()
  readonly #byTopic = new Map<string, Set<RegisteredConnection>>()
  /** Connections whose user has an `expiresAt`; one timer checks them all. */
  readonly #expiring = new Set<RegisteredConnection>()
  readonly #store: SecureWsStore
  readonly #heartbeatIntervalMs: number
  readonly #hangUps: HangUps
  #expiryTimer: NodeJS.Timeout | undefined
  #heartbeat: NodeJS.Timeout | undefined
  closing = false
  /**
   * The payload of this beat's pings: only a pong that echoes it answers the beat, so a
   * client that sends unsolicited pongs without reading cannot pass for alive.
   */
  beatNonce: Buffer = Buffer.alloc(0)

  /**
   * `heartbeatIntervalMs`: how often every connection is pinged, 0 for never;
   * `refusalGraceMs`: how long a socket the server closed may take to close its side.
   */
  readonly telemetry: Telemetry

  constructor (store: SecureWsStore, heartbeatIntervalMs: number, refusalGraceMs: number, telemetry: Telemetry) {
    this.#store = store
    this.telemetry = telemetry
    this.#heartbeatIntervalMs = heartbeatIntervalMs
    this.#hangUps = new HangUps(refusalGraceMs)
  }

  /** Open connections in this process. */
  get size (): number {
    return this.#connections.size
  }

  /** Closes a socket the server is done with; see HangUps. */
  hangUp (socket: WebSocket, code: number, reason: string): void {
    this.#hangUps.hangUp(socket, code, reason)
  }

  add (connection: RegisteredConnection): void {
    this.#connections.add(connection)
    addTo(this.#byUser, connection.user.id, connection)
    if (connection.user.expiresAt !== undefined) {
      this.#expiring.add(connection)
      this.#watchExpiry()
    }
    // A connection admitted while the plugin closes is closed at once; it must not restart
    // the heartbeat that closeAll has stopped.
    if (this.#heartbeat === undefined && this.#heartbeatIntervalMs > 0 && !this.closing) this.#startHeartbeat()
  }

  remove (connection: RegisteredConnection): void {
    this.#connections.delete(connection)
    removeFrom(this.#byUser, connection.user.id, connection)
    this.#expiring.delete(connection)
    if (connection.topics !== undefined) {
      for (const topic of connection.topics) removeFrom(this.#byTopic, topic, connection)
      connection.topics = undefined
    }
  }

  /** A connection's credential was replaced: its expiry, if any, is the new one's. */
  refreshed (connection: RegisteredConnection): void {
    if (connection.user.expiresAt === undefined) {
      this.#expiring.delete(connection)
    } else {
      this.#expiring.add(connection)
      this.#watchExpiry()
    }
  }

  /**
   * Closes with 4403 `Logged out` every connection of `userId` here whose credential was
   * issued at or before `issuedBefore` (or has no issue time); returns how many.
   */
  revokeUser (userId: string, issuedBefore: number): number {
    const connections = this.#byUser.get(userId)
    if (connections === undefined) return 0
    let closed = 0
    for (const connection of [...connections]) {
      const issuedAt = connection.user.issuedAt
      if (issuedAt !== undefined && issuedAt > issuedBefore) continue
      connection.closeFor('loggedOut')
      closed++
    }
    return closed
  }

  subscribe (connection: RegisteredConnection, topic: string): void {
    (connection.topics ??= new Set()).add(topic)
    addTo(this.#byTopic, topic, connection)
  }

  unsubscribe (connection: RegisteredConnection, topic: string): void {
    connection.topics?.delete(topic)
    removeFrom(this.#byTopic, topic, connection)
  }

  // One timer for every expiring connection rather than one each: a per-connection timer
  // costs memory and set-up time on every upgrade; closing up to a tick late is harmless.
  // The timer stops at its first tick with nothing to watch, not when the last connection
  // ends: where connections come and go one at a time, stopping and starting it at each
  // would cost two timer operations per upgrade.
  #watchExpiry (): void {
    if (this.#expiryTimer !== undefined) return
    this.#expiryTimer = setInterval(() => {
      const now = Date.now()
      for (const connection of this.#expiring) {
        // The clock tolerance is an upper bound on how long a credential is honoured past its
        // expiry; a tick comes up to EXPIRY_CHECK_MS late, so that much of it is spent early.
        if (connection.user.expiresAt! + Math.max(0, connection.route.expiryGraceMs - EXPIRY_CHECK_MS) <= now) {
          this.#expiring.delete(connection)
          connection.closeFor('tokenExpired')
        }
      }
      if (this.#expiring.size === 0) this.#stopExpiryWatch()
    }, EXPIRY_CHECK_MS)
    this.#expiryTimer.unref()
  }

  #stopExpiryWatch (): void {
    clearInterval(this.#expiryTimer)
    this.#expiryTimer = undefined
  }

  // One timer beats for every connection, from the first connection until the plugin closes:
  // an idle beat costs nothing, and starting and stopping it as connections come and go
  // would cost timer operations on every upgrade. A connection still waiting for its last
  // pong is cut off; a connection that joined since the last beat gets its first ping.
  #startHeartbeat (): void {
    this.#heartbeat = setInterval(() => {
      this.beatNonce = randomBytes(8)
      for (const connection of this.#connections) connection.heartbeat(this.beatNonce)
    }, this.#heartbeatIntervalMs)
    this.#heartbeat.unref()
  }

  #stopTimers (): void {
    this.#stopExpiryWatch()
    clearInterval(this.#heartbeat)
    this.#heartbeat = undefined
  }

  /** Closes with the rate-limit error every connection here counted under `key`. */
  rateExceeded (key: string): void {
    for (const connection of this.#connections) {
      if (connection.limitKey === key) connection.rateLimited()
    }
  }

  /** Closes with `storeUnavailable` the connections whose slots the store lost. */
  slotsLost (slots: ReadonlyArray<{ key: string, connectionId: string }>): void {
    const lost = new Set(slots.map((slot) => slot.connectionId))
    for (const connection of this.#connections) {
      if (lost.has(connection.id)) connection.closeFor('storeUnavailable')
    }
  }

  /** Sends `type` to every subscriber of `topic` here; returns how many got it. */
  publish (topic: string, type: string, body: unknown): number {
    const subscribers = this.#byTopic.get(topic)
    if (subscribers === undefined) return 0
    // Serialise once per route: subscribers of one route share their serialiser.
    const frames = new Map<unknown, string | null>()
    let delivered = 0
    for (const connection of subscribers) {
      let frame = frames.get(connection.route)
      if (frame === undefined) {
        const serialize = connection.route.serializers.get(type)
        frame = serialize === undefined ? null : serialize(body)
        frames.set(connection.route, frame)
      }
      if (frame !== null && connection.sendRaw(frame)) delivered++
    }
    return delivered
  }

  /** Closes every connection of `userId` here with `kind`'s code and reason, or the given ones. */
  disconnectUser (userId: string, kind: CloseKind, code?: number, reason?: string): number {
    const connections = this.#byUser.get(userId)
    if (connections === undefined) return 0
    const count = connections.size
    for (const connection of [...connections]) connection.closeFor(kind, code, reason)
    return count
  }

  /**
   * Closes every connection with `kind` and resolves once all have ended; clients that have
   * not answered the close within `timeoutMs` are cut off.
   */
  async closeAll (kind: CloseKind, timeoutMs: number): Promise<void> {
    this.closing = true
    // Each connection leaves the registry as it is closed; its socket is hung up, and ends when
    // the client answers or its grace runs out. What is left at `timeoutMs` is cut off.
    for (const connection of [...this.#connections]) connection.closeFor(kind)
    await this.#hangUps.drained(timeoutMs)
    this.#hangUps.destroyAll()
    this.#stopTimers()
  }

  stats (): SecureWsStats {
    return { connections: this.#connections.size, users: sizes(this.#byUser), topics: this.#byTopic.size, timers: this.#expiring.size, closing: this.#hangUps.size, refusals: { ...this.telemetry.refusals }, closes: { ...this.telemetry.closes }, messages: this.telemetry.messages, store: this.#store.stats() }
  }
}
