/**
 * `fastify-secure-ws/client`: a typed client for fastify-secure-ws routes, for browsers and
 * Node. No runtime dependency, no server code: it shares only types with the server.
 */
export { createClient, SecureWsCloseError } from './client.js'
export type { AnyContract, ClientOptions, ClientState, Contract, Frame, Frames, PayloadArgs, SecureWsClient, WebSocketConstructor, WebSocketLike } from './client.js'
export { fullJitter } from './backoff.js'
export type { CloseKind } from './close-codes.js'
