import type { Socket } from 'node:net'
import type { WebSocket } from 'ws'

/** The parts of ws's socket state a hang-up reaches into (ws 8; pinned by the tests). */
interface WsInternals {
  _socket: Socket | null
  _closeFrameReceived: boolean
}

function discard (): void {}

/**
 * Closes sockets the server is done with at little cost, whatever their peer does.
 *
 * ws alone keeps reading and unmasking everything a closing peer sends, and holds the socket
 * until the peer answers the close frame or 30 s pass: a client that never answers holds a
 * descriptor for 30 s, one that floods holds a core. A hang-up sends the close frame, ends
 * the server's side of the TCP connection as soon as that frame is written (so a browser
 * reads the code at once), drops whatever arrives after it unparsed, and destroys the
 * socket after `graceMs` if the peer has not closed its side by then.
 */
export class HangUps {
  readonly #graceMs: number
  readonly #pending = new Set<WebSocket>()

  constructor (graceMs: number) {
    this.#graceMs = graceMs
  }

  /** Sockets closed by the server whose peer has not closed its side yet. */
  get size (): number {
    return this.#pending.size
  }

  /** Sends `code` and `reason` (already validated) and lets go of the socket. */
  hangUp (socket: WebSocket, code: number, reason: string): void {
    if (socket.readyState === socket.CLOSED) return
    const ws = socket as unknown as WsInternals
    // ws ends the TCP connection once its close frame is written if it believes the peer's
    // close frame came already; nothing the peer sends from now on is read, so it cannot.
    if (socket.readyState === socket.OPEN) ws._closeFrameReceived = true
    socket.close(code, reason)
    const raw = ws._socket
    if (raw === null || raw.destroyed) return
    // Read and drop: the peer's FIN still arrives (a cooperative client frees the socket at
    // once), its frames are never parsed.
    raw.removeAllListeners('data')
    raw.on('data', discard)
    raw.resume()
    this.#pending.add(socket)
    const timer = setTimeout(cutOff, this.#graceMs, socket)
    timer.unref()
    socket.once('close', () => {
      clearTimeout(timer)
      this.#pending.delete(socket)
    })
  }

  /** Destroys every socket still waiting for its peer; at shutdown. */
  destroyAll (): void {
    for (const socket of this.#pending) socket.terminate()
    this.#pending.clear()
  }
}

function cutOff (socket: WebSocket): void {
  socket.terminate()
}
