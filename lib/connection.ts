import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { WebSocket, RawData } from 'ws'
import { checkRevocation, isThenable, isUser, then } from './admission.js'
import { isSendableCloseCode, isSendableCloseReason } from './close-codes.js'
import { ERROR_MESSAGES, describeInvalidPayload, parseEnvelope } from './inbound.js'
import { refusalOf } from './token.js'
import type { CloseKind, CompiledMessage, CompiledRoute, ConnectionRegistry, InvalidMessageKind, MessageCounter, RegisteredConnection, SecureWsConnection, SecureWsUser, SessionBase, TokenRefusal } from './types.js'

/** The connection a socket belongs to, so that two shared listeners serve every socket. */
const kConnection = Symbol('fastify-secure-ws.connection')

type OwnedSocket = WebSocket & { [kConnection]: Connection }

/** The admitted connection on `socket`, if any. */
export function connectionOf (socket: WebSocket): Connection | undefined {
  return (socket as Partial<OwnedSocket>)[kConnection]
}

export interface ConnectionInit {
  id: string
  user: SecureWsUser
  session: SessionBase
  params: Readonly<Record<string, string>>
  /** The user's message counter, held for this connection; released when it ends. */
  counter: MessageCounter
  /** The key the counter and the slot are held under. */
  limitKey: string
  log: FastifyBaseLogger
  /** The upgrade request, handed to `verifyToken` again at a refresh. */
  request: FastifyRequest
  release: () => void
}

/**
 * One admitted connection: owns its listeners, its entries in the registry (user, topics,
 * expiry watch), its message counter and its slot, and lets go of all of them exactly once
 * when the socket closes.
 */
export class Connection implements SecureWsConnection, RegisteredConnection {
  // V8 lays fields out in declaration order: the four every message reads come first, next
  // to each other, as the object is usually cold in the CPU's caches when a message arrives.
  #closing = false
  readonly route: CompiledRoute
  readonly #counter: MessageCounter
  readonly #socket: WebSocket
  readonly id: string
  /** Replaced by a refresh; the same user id for the connection's whole life. */
  user: SecureWsUser
  readonly session: SessionBase
  readonly params: Readonly<Record<string, string>>
  readonly log: FastifyBaseLogger
  readonly limitKey: string
  /** Topics subscribed to; created on the first subscription, as most connections have none. */
  topics: Set<string> | undefined
  readonly #registry: ConnectionRegistry
  readonly #release: () => void
  #ended = false
  /** Whether the peer has answered the last ping (see heartbeat). */
  #answered = true
  // @fastify/websocket's error listener holds the request for the connection's life anyway.
  readonly #request: FastifyRequest
  /** Why the server closed it, and with which code, for the `closed` audit event. */
  #closedFor: CloseKind | 'app' | undefined
  #closeCode = 0
  /** When it opened, kept only while an audit hook listens (0 otherwise). */
  readonly #openedAt: number

  constructor (socket: WebSocket, route: CompiledRoute, registry: ConnectionRegistry, init: ConnectionInit) {
    this.id = init.id
    this.user = init.user
    this.session = init.session
    this.params = init.params
    this.log = init.log
    this.limitKey = init.limitKey
    this.route = route
    this.#socket = socket
    this.#registry = registry
    this.#counter = init.counter
    this.#release = init.release
    this.#request = init.request
    this.#openedAt = registry.telemetry.auditing ? Date.now() : 0
    // Listeners attach in the same tick as the upgrade, so a message sent right after
    // `open` is never missed. `#end` acts once, so a plain `on` does (and costs less).
    ;(socket as OwnedSocket)[kConnection] = this
    socket.on('message', Connection.#onMessage)
    socket.on('close', Connection.#onClose)
    socket.on('ping', Connection.#onPing)
    socket.on('pong', Connection.#onPong)
    registry.add(this)
    const expiresAt = this.user.expiresAt
    if (expiresAt !== undefined && expiresAt + route.expiryGraceMs <= Date.now()) this.closeFor('tokenExpired')
  }

  refresh (token: string): Promise<SecureWsUser | null> {
    return new Promise((resolve) => {
      if (this.#closing) return resolve(null)
      const failed = (kind: CloseKind, err?: unknown, tokenRefusal?: TokenRefusal): void => {
        if (err !== undefined) this.log.error({ err, userId: this.user.id, connectionId: this.id }, 'token refresh could not be checked')
        this.closeFor(kind, undefined, undefined, tokenRefusal)
        resolve(null)
      }
      let verified: ReturnType<CompiledRoute['verifyToken']>
      try {
        verified = this.route.verifyToken(token, this.#request)
      } catch (err) {
        return failed('authUnavailable', err)
      }
      then(verified, (user) => {
        if (this.#closing) return resolve(null)
        if (user === null || user === undefined) return failed('tokenExpired', undefined, refusalOf(this.route.verifyToken))
        if (!isUser(user)) return failed('internalError', new TypeError('verifyToken returned a user without a non-empty string id and a scopes array'))
        // A connection belongs to one user for its whole life: its session was checked for them.
        if (user.id !== this.user.id) return failed('tokenExpired', undefined, 'otherUser')
        if (user.expiresAt !== undefined && user.expiresAt + this.route.expiryGraceMs <= Date.now()) return failed('tokenExpired', undefined, 'expired')
        checkRevocation(this.route.store, user, () => {
          if (this.#closing) return resolve(null)
          this.user = user
          this.#registry.refreshed(this)
          const telemetry = this.#registry.telemetry
          if (telemetry.auditing) telemetry.emit({ type: 'refreshed', userId: user.id, connectionId: this.id, route: this.route.url })
          resolve(user)
        }, (kind, err) => kind === 'invalidToken' ? failed('tokenExpired', undefined, 'revoked') : failed(kind, err))
      }, (err) => failed('authUnavailable', err))
    })
  }

  send (type: string, body: unknown): boolean {
    const serialize = this.route.serializers.get(type)
    if (serialize === undefined) throw new TypeError(`outbound message type "${type}" is not declared on ${this.route.url}`)
    return this.sendRaw(serialize(body))
  }

  sendError (message: string): boolean {
    return this.sendRaw(this.route.serializers.get('error')!({ message }))
  }

  /**
   * Sends an already serialised frame; false when the socket is no longer open. A client
   * that would then have more than `maxBufferedBytes` waiting for it has stopped reading:
   * it is cut off rather than queued for, so its memory is freed and stays bounded.
   */
  sendRaw (json: string): boolean {
    if (this.#closing || this.#socket.readyState !== this.#socket.OPEN) return false
    if (this.#socket.bufferedAmount + json.length > this.route.limits.maxBufferedBytes) {
      this.closeFor('slowConsumer')
      // Its close frame would wait behind what it does not read; ending the socket frees that.
      this.#socket.terminate()
      return false
    }
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

  /**
   * Closes the connection: nothing it sends is processed any more, its slot is free at once,
   * and its socket is ended within `refusalGraceMs` whether or not the client answers.
   */
  close (code = 1000, reason = ''): void {
    if (this.#closing) return
    this.#closing = true
    if (this.#closedFor === undefined) {
      // Not through closeFor: the app's own code closed it.
      this.#closedFor = 'app'
      this.#closeCode = code
    }
    // Over for the server: no longer open, pinged, published to or counted.
    this.#release()
    this.#registry.remove(this)
    if (!isSendableCloseCode(code) || !isSendableCloseReason(reason)) {
      // ws would throw for these; the app's bug must not keep the socket open.
      this.log.error({ code, connectionId: this.id, userId: this.user.id }, 'invalid close code or reason; closing with 1011')
      const { code: internal, reason: internalReason } = this.route.closeReasons.internalError
      this.#registry.hangUp(this.#socket, internal, internalReason)
      return
    }
    this.#registry.hangUp(this.#socket, code, reason)
  }

  /**
   * Closes for `kind` with its configured code and reason, or the ones given; logs once why
   * (with why the token was refused, for a failed refresh).
   */
  closeFor (kind: CloseKind, code?: number, reason?: string, tokenRefusal?: TokenRefusal): void {
    if (this.#closing) return
    const configured = this.route.closeReasons[kind]
    const closeCode = code ?? configured.code
    this.log.info({ close: kind, code: closeCode, tokenRefusal, userId: this.user.id, connectionId: this.id }, 'websocket connection closed by server')
    this.#closedFor = kind
    this.#closeCode = closeCode
    this.#registry.telemetry.closedByServer(kind)
    this.close(closeCode, code === undefined ? configured.reason : reason ?? '')
  }

  /**
   * One beat of the registry's heartbeat. A peer that has not answered the previous ping
   * vanished without closing (or ignores pings, which RFC 6455 does not allow) and is cut
   * off: the close frame goes out first, for a peer that is still reading, and the socket
   * ends at once, which frees the slot, where waiting for a vanished peer's answer to the
   * close would not. A socket already closing (the client sent its close) is left to ws.
   */
  heartbeat (nonce: Buffer): void {
    if (this.#closing || this.#socket.readyState !== this.#socket.OPEN) return
    if (!this.#answered) {
      this.closeFor('heartbeatTimeout')
      this.#socket.terminate()
      return
    }
    this.#answered = false
    this.#socket.ping(nonce)
  }

  // Shared by every connection and called with the socket as `this`: a listener per
  // connection would add two closures and their scope to each connection's memory.
  static readonly #onMessage = function (this: WebSocket, data: RawData, isBinary: boolean): void {
    (this as OwnedSocket)[kConnection].#receive(data, isBinary)
  }

  static readonly #onClose = function (this: WebSocket, code: number): void {
    (this as OwnedSocket)[kConnection].#end(code)
  }

  // The pong that answers this beat's ping is the heartbeat's; any other counts as a message.
  static readonly #onPong = function (this: WebSocket, data: Buffer): void {
    const connection = (this as OwnedSocket)[kConnection]
    if (!connection.#answered && data.equals(connection.#registry.beatNonce)) connection.#answered = true
    else connection.#count()
  }

  // ws answers pings itself; they count against the message limits like any other frame.
  static readonly #onPing = function (this: WebSocket): void {
    (this as OwnedSocket)[kConnection].#count()
  }

  /** Counts one inbound frame; false, with the connection closed, when it is over a limit. */
  #count (): boolean {
    if (this.#closing) return false
    this.#registry.telemetry.messages++
    let counted: boolean
    try {
      counted = this.#counter.consume()
    } catch (err) {
      // Only a custom store can throw here; a frame it could not count is not let through.
      this.log.error({ err, userId: this.user.id, connectionId: this.id }, 'store failed to count a message')
      this.closeFor('internalError')
      return false
    }
    if (!counted) this.rateLimited()
    return counted
  }

  /** Over a message limit: the error frame, then the close. */
  rateLimited (): void {
    if (this.#closing) return
    this.sendError(ERROR_MESSAGES.rateLimited)
    this.closeFor('rateLimited')
    const telemetry = this.#registry.telemetry
    if (telemetry.auditing) telemetry.emit({ type: 'rateLimited', userId: this.user.id, connectionId: this.id, route: this.route.url })
  }

  /** Answers a message that was not processed with an error frame; the audit hook learns why. */
  #invalid (error: InvalidMessageKind, message: string, messageType?: string): void {
    this.sendError(message)
    this.log.debug({ invalidMessage: error, messageType, userId: this.user.id, connectionId: this.id }, 'websocket message refused')
    const telemetry = this.#registry.telemetry
    if (telemetry.auditing) telemetry.emit({ type: 'invalidMessage', userId: this.user.id, connectionId: this.id, route: this.route.url, error, messageType })
  }

  #forbidden (messageType: string): void {
    this.sendError(ERROR_MESSAGES.forbidden)
    this.log.info({ forbidden: messageType, userId: this.user.id, connectionId: this.id }, 'websocket message forbidden')
    const telemetry = this.#registry.telemetry
    if (telemetry.auditing) telemetry.emit({ type: 'forbidden', userId: this.user.id, connectionId: this.id, route: this.route.url, messageType })
  }

  #receive (data: RawData, isBinary: boolean): void {
    // Every frame counts, valid or not, before anything else is done with it.
    if (!this.#count()) return
    const route = this.route
    const frame = data as Buffer
    // ws refuses these itself (limitInboundMessages); this stays as the backstop should its
    // internals ever move.
    if (frame.length > route.limits.maxPayloadBytes) {
      this.closeFor('messageTooBig')
      return
    }
    if (isBinary) {
      this.#invalid('binaryFrame', ERROR_MESSAGES.binaryFrame)
      return
    }
    const envelope = parseEnvelope(frame)
    if (typeof envelope === 'string') {
      this.#invalid(envelope, ERROR_MESSAGES[envelope])
      return
    }
    const type = envelope.type
    const message = route.messages.get(type)
    if (message === undefined) {
      this.#invalid('unknownType', ERROR_MESSAGES.unknownType)
      return
    }
    const payload = envelope.payload
    if (message.check === null) {
      // Declared without a schema: the handler is typed to get nothing, so it gets nothing unchecked.
      if (payload !== undefined) {
        this.#invalid('invalidPayload', ERROR_MESSAGES.noPayload, type)
        return
      }
    } else if (!message.check.Check(payload)) {
      this.#invalid('invalidPayload', describeInvalidPayload(message.check, payload), type)
      return
    }
    for (const scope of message.scopes) {
      if (!this.user.scopes.includes(scope)) {
        this.#forbidden(type)
        return
      }
    }
    if (message.authorize === undefined) {
      this.#run(message, payload)
    } else {
      this.#authorizeThenRun(type, message, payload)
    }
  }

  #authorizeThenRun (type: string, message: CompiledMessage, payload: unknown): void {
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
        (ok) => { if (ok === true) this.#run(message, payload); else this.#forbidden(type) },
        (err) => this.#failed(err)
      )
    } else {
      this.#forbidden(type)
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

  /** ws itself closed the connection for `kind` (a frame over its maxPayload): counted as the server's close. */
  markClosedBy (kind: CloseKind, code: number): void {
    if (this.#closedFor !== undefined) return
    this.#closedFor = kind
    this.#closeCode = code
    this.#registry.telemetry.closedByServer(kind)
  }

  #end (code: number): void {
    if (this.#ended) return
    this.#ended = true
    this.#closing = true
    this.#socket.removeListener('message', Connection.#onMessage)
    this.#socket.removeListener('ping', Connection.#onPing)
    this.#socket.removeListener('pong', Connection.#onPong)
    this.#registry.remove(this)
    this.#release()
    try {
      this.#counter.release()
    } catch (err) {
      // Only a custom store can throw here; the connection is over either way.
      this.log.error({ err, userId: this.user.id, connectionId: this.id }, 'store failed to release a message counter')
    }
    const telemetry = this.#registry.telemetry
    if (telemetry.auditing) {
      telemetry.emit({
        type: 'closed',
        kind: this.#closedFor ?? 'client',
        code: this.#closedFor === undefined ? code : this.#closeCode,
        userId: this.user.id,
        connectionId: this.id,
        route: this.route.url,
        durationMs: Date.now() - this.#openedAt
      })
    }
    if (this.route.onClose !== undefined) {
      const failed = (err: unknown): void => {
        this.log.error({ err, userId: this.user.id, connectionId: this.id }, 'websocket onClose hook failed')
      }
      try {
        const result = this.route.onClose(this)
        if (isThenable(result)) result.then(undefined, failed)
      } catch (err) {
        failed(err)
      }
    }
  }
}
