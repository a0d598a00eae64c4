import type { Socket } from 'node:net'
import type { WebSocket } from 'ws'

/**
 * The parts of ws's socket state the plugin reaches into (ws 8). Every use is pinned by a
 * test (the attack tables, @fastify/websocket's own suite run with the plugin), so an upgrade
 * of ws that moves them fails loudly.
 */
interface WsInternals {
  _socket: Socket | null
  _closeFrameReceived: boolean
  _receiver?: { _loop: boolean, _maxPayload: number }
  _extensions?: Record<string, { _maxPayload: number } | undefined>
}

const internals = (socket: WebSocket): WsInternals => socket as unknown as WsInternals

/**
 * Makes ws refuse (1009, from the frame's header, before buffering or inflating it) any
 * message over `maxBytes` on this socket. ws holds one maxPayload for every route, and the
 * app's own @fastify/websocket registration may leave it at ws's 100 MiB: a compressed frame
 * would then be inflated whole before the route's own limit could look at it.
 */
export function limitInboundMessages (socket: WebSocket, maxBytes: number): void {
  const ws = internals(socket)
  if (ws._receiver !== undefined && (ws._receiver._maxPayload === 0 || ws._receiver._maxPayload > maxBytes)) ws._receiver._maxPayload = maxBytes
  const deflate = ws._extensions?.['permessage-deflate']
  if (deflate !== undefined && (deflate._maxPayload === 0 || deflate._maxPayload > maxBytes)) deflate._maxPayload = maxBytes
}

/**
 * Ends ws's reading of `socket`: its parser stops after the frame it is on (the rest of a
 * chunk it already read stays unparsed), later data is dropped unread, and ws ends the TCP
 * connection as soon as its own close frame is written (it believes the peer's came already).
 * Returns the TCP socket, or null when it is gone.
 */
export function stopReading (socket: WebSocket): Socket | null {
  const ws = internals(socket)
  if (socket.readyState === socket.OPEN) ws._closeFrameReceived = true
  if (ws._receiver !== undefined) ws._receiver._loop = false
  return ws._socket
}
