import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'

/**
 * Answers an upgrade with an HTTP status straight on its socket, before Fastify routes it
 * (no request objects, no hooks, no log lines: this is the answer to a flood), and ends the
 * socket once the answer is written.
 */
export function answerUpgrade (socket: Duplex, status: number, headers: Record<string, string>, body: string): void {
  if (socket.destroyed) return
  let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`
  for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`
  // Written out once the answer is; a client that never reads must not hold the socket after.
  socket.end(`${head}\r\n${body}`, () => { socket.destroy() })
}
