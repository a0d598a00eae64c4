import type { FastifyBaseLogger } from 'fastify'
import type { WebSocket, RawData } from 'ws'
import { isThenable } from './admission.js'
import type { CloseKind } from './close-codes.js'
import { ERROR_MESSAGES, describeInvalidPayload, parseEnvelope, type CompiledMessage, type SecureWsConnection, type SessionBase } from './messages.js'
import type { SecureWsUser } from './options.js'
import type { CompiledRoute } from './route.js'
import type { Registry } from './registry.js'
import type { MessageCounter } from './stores/types.js'

/** The connection a socket belongs to, so that two shared listeners serve every socket. */
const kConnection = Symbol('fastify-secure-ws.connection')

type OwnedSocket = WebSocket & { [kConnection]: Connection }

export interface ConnectionInit {
  id: string
  user: SecureWsUser
  session: SessionBase
  params: Readonly<Record<string, string>>
  /** The user's message counter, held for this connection; released when it ends. */
  counter: MessageCounter
  log: FastifyBaseLogger
  release: () => void
}

/**
 * One admitted connection: owns its listeners, its entries in the registry (user, topics,
 * expiry watch), its message counter and its slot, and lets go of all of them exactly once
 * when the socket closes.
 */
export class Connection implements SecureWsConnection {
  // V8 lays fields out in declaration order: the four every message reads come first, next
  // to each other, as the object is usually cold in the CPU's caches when a message arrives.
  #closing = false
  readonly route: CompiledRoute
  readonly #counter: MessageCounter
  readonly #socket: WebSocket
  readonly id: string
  readonly user: SecureWsUser
  readonly session: SessionBase
  readonly params: Readonly<Record<string, string>>
  readonly log: FastifyBaseLogger
  /** Topics subscribed to; created on the first subscription, as most connections have none. */
  topics: Set<string> | undefined
  readonly #registry: Registry
  readonly #release: () => void
  #ended = false
  /** Whether the peer has answered the last ping (see heartbeat). */
  #answered = true

  constructor (socket: WebSocket, route: CompiledRoute, registry: Registry, init: ConnectionInit) {
    this.id = init.id
    this.user = init.user
    this.session = init.session
    this.params = init.params
    this.log = init.log
    this.route = route
    this.#socket = socket
    this.#registry = registry
    this.#counter = init.counter
    this.#release = init.release
    // Listeners attach in the same tick as the upgrade, so a message sent right after
    // `open` is never missed. `#end` acts once, so a plain `on` does (and costs less).
    ;(socket as OwnedSocket)[kConnection] = this
    socket.on('message', Connection.#onMessage)
    socket.on('close', Connection.#onClose)
    // A fourth event on the socket grows its listener table (~100 B per connection): only when pinged.
    if (registry.heartbeats) socket.on('pong', Connection.#onPong)
    registry.add(this)
    const expiresAt = this.user.expiresAt
    if (expiresAt !== undefined && expiresAt <= Date.now()) this.closeFor('tokenExpired')
  }

  send (type: string, body: unknown): boolean {
    const serialize = this.route.serializers.get(type)
    if (serialize === undefined) throw new TypeError(`outbound message type "${type}" is not declared on ${this.route.url}`)
    return this.sendRaw(serialize(body))
  }

  sendError (message: string): boolean {
    return this.sendRaw(this.route.serializers.get('error')!({ message }))
  }

  /** Sends an already serialised frame; false when the socket is no longer open. */
  sendRaw (json: string): boolean {
    if (this.#closing || this.#socket.readyState !== this.#socket.OPEN) return false
    this.#socket.send(json)
    return true
  }

  subscribe (topic: string): void {
    this.#registry.subscribe(this, topic)
  }

  unsubscribe (topic: string): void {
    this.#registry.unsubscribe(this, topic)
  }

  isSubscribed (topic: string): boolean {
    return this.topics?.has(topic) === true
  }

  close (code = 1000, reason = ''): void {
    if (this.#closing) return
    this.#closing = true
    try {
      this.#socket.close(code, reason)
    } catch (err) {
      // ws throws for codes it may not send or reasons over 123 bytes; the app's bug must not keep the socket open.
      this.log.error({ err, connectionId: this.id, userId: this.user.id }, 'invalid close code or reason; closing with 1011')
      this.#socket.close(this.route.closeReasons.internalError.code, this.route.closeReasons.internalError.reason)
    }
  }

  /** Closes for `kind` with its configured code and reason, or the ones given; logs once why. */
  closeFor (kind: CloseKind, code?: number, reason?: string): void {
    if (this.#closing) return
    const configured = this.route.closeReasons[kind]
    const closeCode = code ?? configured.code
    this.log.info({ close: kind, code: closeCode, userId: this.user.id, connectionId: this.id }, 'websocket connection closed by server')
    this.close(closeCode, code === undefined ? configured.reason : reason ?? '')
  }

  /** Ends the connection without a close handshake, for clients that ignore the close frame. */
  terminate (): void {
    this.#closing = true
    this.#socket.terminate()
  }

  /**
   * One beat of the registry's heartbeat. A peer that has not answered the previous ping
   * vanished without closing (or ignores pings, which RFC 6455 does not allow) and is cut
   * off: the close frame goes out first, for a peer that is still reading, and the socket
   * ends at once, which frees the slot, where waiting for a vanished peer's answer to the
   * close would not. A socket already closing (the client sent its close) is left to ws.
   */
  heartbeat (): void {
    if (this.#closing || this.#socket.readyState !== this.#socket.OPEN) return
    if (!this.#answered) {
      this.closeFor('heartbeatTimeout')
      this.#socket.terminate()
      return
    }
    this.#answered = false
    this.#socket.ping()
  }

  // Shared by every connection and called with the socket as `this`: a listener per
  // connection (two closures and their scope) would cost ~190 B of each connection's memory.
  static readonly #onMessage = function (this: WebSocket, data: RawData, isBinary: boolean): void {
    (this as OwnedSocket)[kConnection].#receive(data, isBinary)
  }

  static readonly #onClose = function (this: WebSocket): void {
    (this as OwnedSocket)[kConnection].#end()
  }

  static readonly #onPong = function (this: WebSocket): void {
    (this as OwnedSocket)[kConnection].#answered = true
  }

  #receive (data: RawData, isBinary: boolean): void {
    if (this.#closing) return
    const route = this.route
    // Every frame counts, valid or not, before anything else is done with it.
    let counted: boolean
    try {
      counted = this.#counter.consume()
    } catch (err) {
      // Only a custom store can throw here; a frame it could not count is not let through.
      this.log.error({ err, userId: this.user.id, connectionId: this.id }, 'store failed to count a message')
      this.closeFor('internalError')
      return
    }
    if (!counted) {
      this.sendError(ERROR_MESSAGES.rateLimited)
      this.closeFor('rateLimited')
      return
    }
    const frame = data as Buffer
    if (frame.length > route.limits.maxPayloadBytes) {
      this.closeFor('messageTooBig')
      return
    }
    if (isBinary) {
      this.sendError(ERROR_MESSAGES.binaryFrame)
      return
    }
    const envelope = parseEnvelope(frame)
    if (typeof envelope === 'string') {
      this.sendError(envelope)
      return
    }
    const message = route.messages.get(envelope.type)
    if (message === undefined) {
      this.sendError(ERROR_MESSAGES.unknownType)
      return
    }
    const payload = envelope.payload
    if (message.check !== null && !message.check.Check(payload)) {
      this.sendError(describeInvalidPayload(message.check, payload))
      return
    }
    for (const scope of message.scopes) {
      if (!this.user.scopes.includes(scope)) {
        this.sendError(ERROR_MESSAGES.forbidden)
        return
      }
    }
    if (message.authorize === undefined) {
      this.#run(message, payload)
    } else {
      this.#authorizeThenRun(message, payload)
    }
  }

  #authorizeThenRun (message: CompiledMessage, payload: unknown): void {
    let allowed: boolean | Promise<boolean>
    try {
      allowed = message.authorize!(this, payload)
    } catch (err) {
      this.#failed(err)
      return
    }
    if (allowed === true) {
      this.#run(message, payload)
    } else if (isThenable(allowed)) {
      allowed.then(
        (ok) => ok === true ? this.#run(message, payload) : this.sendError(ERROR_MESSAGES.forbidden),
        (err) => this.#failed(err)
      )
    } else {
      this.sendError(ERROR_MESSAGES.forbidden)
    }
  }

  #run (message: CompiledMessage, payload: unknown): void {
    try {
      const result = message.handler(this, payload)
      if (isThenable(result)) result.then(undefined, (err: unknown) => this.#failed(err))
    } catch (err) {
      this.#failed(err)
    }
  }

  #failed (err: unknown): void {
    this.log.error({ err, userId: this.user.id, connectionId: this.id }, 'websocket message handler failed')
    this.sendError(ERROR_MESSAGES.internal)
  }

  #end (): void {
    if (this.#ended) return
    this.#ended = true
    this.#closing = true
    this.#socket.removeListener('message', Connection.#onMessage)
    this.#registry.remove(this)
    this.#release()
    try {
      this.#counter.release()
    } catch (err) {
      // Only a custom store can throw here; the connection is over either way.
      this.log.error({ err, userId: this.user.id, connectionId: this.id }, 'store failed to release a message counter')
    }
    if (this.route.onClose !== undefined) {
      try {
        this.route.onClose(this)
      } catch (err) {
        this.log.error({ err, userId: this.user.id, connectionId: this.id }, 'websocket onClose hook failed')
      }
    }
  }
}
