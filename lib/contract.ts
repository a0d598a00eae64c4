import type { Static, TSchema } from '@sinclair/typebox'
import type { DefineMessage, MessageMap, OutboundSchemas, SecureWsRouteOptions, SessionBase } from './types.js'

/**
 * Route options whose message definitions (`M`) keep their exact type, so that the route's
 * contract can be read from them: `messages` is `M`, or the function that builds `M` with `message()`.
 */
export interface RouteDefinition<S extends SessionBase, O extends OutboundSchemas, M extends MessageMap<S, O>> extends Omit<SecureWsRouteOptions<S, O>, 'messages'> {
  messages: M | ((message: DefineMessage<S, O>) => M)
}

/**
 * Returns `route` unchanged. Declaring a route through it (rather than inline in
 * `fastify.secureWs.route()`) keeps each message's payload schema in the route's type, so
 * that `RouteContract<typeof route>` can hand it to the typed client.
 */
export function defineRoute<S extends SessionBase, O extends OutboundSchemas = Record<never, never>, M extends MessageMap<S, O> = MessageMap<S, O>> (route: RouteDefinition<S, O, M>): RouteDefinition<S, O, M> {
  return route
}

// A definition's `payload` is optional, so what is read back from it may include `undefined`.
type PayloadType<P> = [Exclude<P, undefined>] extends [never]
  ? undefined
  : Exclude<P, undefined> extends TSchema ? Static<Exclude<P, undefined>> : undefined

type InboundOf<M> = { [K in keyof M & string]: M[K] extends { payload?: infer P } ? PayloadType<P> : undefined }
type OutboundOf<O> = { [K in keyof O & string]: O[K] extends TSchema ? Static<O[K]> : never }

/**
 * What a client may send on a route and what it receives, as plain types:
 * `inbound` maps each message type to its payload (`undefined` for none), `outbound` each
 * declared outbound type to the fields beside `type`. The built-in `error` frame is not
 * listed: every client knows it.
 *
 * ```ts
 * export const chatRoute = defineRoute({ url: '/ws/rooms/:roomId', ... })
 * export type ChatContract = RouteContract<typeof chatRoute>
 * ```
 */
export type RouteContract<R> = R extends RouteDefinition<any, infer O, infer M>
  ? { inbound: InboundOf<M>, outbound: OutboundOf<O> }
  : never
