import type { WebSocket } from 'ws'
import { stopReading } from './ws-internals.js'

function discard (): void {}

/**
 * Sockets from one address that may wait out their grace at once. Past it, a refused socket
 * is destroyed as soon as its close frame and FIN are written: a flood of refusals from one
 * address (one the lockout does not cover, such as a refused origin) then holds a handful
 * of descriptors, not a second's worth of its rate.
 */
const MAX_WAITING_PER_ADDRESS = 16

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
  readonly #waitingByAddress = new Map<string, number>()
  #onDrained: (() => void) | undefined

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
    const raw = stopReading(socket)
    socket.close(code, reason)
    if (raw === null || raw.destroyed) return
    // Read and drop: the peer's FIN still arrives (a cooperative client frees the socket at
    // once), its frames are never parsed.
    raw.removeAllListeners('data')
    raw.on('data', discard)
    raw.resume()
    const address = raw.remoteAddress ?? ''
    const waiting = this.#waitingByAddress.get(address) ?? 0
    if (waiting >= MAX_WAITING_PER_ADDRESS) {
      // Our side is written once the close frame is; nothing is owed to this peer after that.
      raw.once('finish', () => { raw.destroy() })
    }
    this.#waitingByAddress.set(address, waiting + 1)
    this.#pending.add(socket)
    const timer = setTimeout(cutOff, this.#graceMs, socket)
    timer.unref()
    socket.once('close', () => {
      clearTimeout(timer)
      this.#pending.delete(socket)
      const left = (this.#waitingByAddress.get(address) ?? 1) - 1
      if (left <= 0) this.#waitingByAddress.delete(address)
      else this.#waitingByAddress.set(address, left)
      if (this.#pending.size === 0) this.#onDrained?.()
    })
  }

  /** Resolves once every socket hung up so far has closed, or after `timeoutMs`. */
  drained (timeoutMs: number): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve()
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        this.#onDrained = undefined
        resolve()
      }
      const timer = setTimeout(done, timeoutMs)
      this.#onDrained = done
    })
  }

  /** Destroys every socket still waiting for its peer; at shutdown. */
  destroyAll (): void {
    for (const socket of this.#pending) socket.terminate()
  }
}

function cutOff (socket: WebSocket): void {
  socket.terminate()
}
