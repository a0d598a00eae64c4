/**
 * The server under fuzz: Fastify and the plugin on 127.0.0.1, one route declaring every
 * message of schemas.ts. Each handler re-checks its payload against the schema it was declared
 * with, through TypeBox's interpreter (`Value.Check`) rather than the compiled check the plugin
 * uses, and answers with the payload it got, so the client can tell it arrived intact. Anything
 * that should never happen here (a handler given a payload its schema forbids, an error logged,
 * a crash, an unhandled rejection) is recorded as a failure.
 */
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import { Type, type TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { createSigner } from 'fast-jwt'
import secureWs, { type SecureWsConnection } from '../../lib/index.js'
import { Failures } from './failures.js'
import { DECLARED, PAYLOAD_SCHEMAS } from './schemas.js'

export const FUZZ_ORIGIN = 'https://fuzz.example'
const SECRET = 'fastify-secure-ws-fuzz-secret-0123456789abcdef'
const USER = 'fuzzer'

/** The fuzz route's frame limit; a second route allows more (see WS_MAX_PAYLOAD_BYTES). */
export const MAX_PAYLOAD_BYTES = 4096
/**
 * A second route with twice the fuzz route's limit raises ws's global maxPayload above it:
 * the fuzz route's frames between the two must still be refused at the fuzz route's limit
 * (ws gets each secured socket's own limit).
 */
export const WS_MAX_PAYLOAD_BYTES = 2 * MAX_PAYLOAD_BYTES

export const ACCEPTED_SCHEMA = Type.Object({ of: Type.String(), payload: Type.String() })

export interface FuzzServer {
  /** ws:// URL of the fuzz route, without a token. */
  readonly url: string
  /** A fresh token for the one fuzzing user. */
  token: () => string
  readonly app: FastifyInstance
  close: () => Promise<void>
}

function payloadText (payload: unknown): string {
  return JSON.stringify(payload) ?? 'undefined'
}

export async function startFuzzServer (failures: Failures): Promise<FuzzServer> {
  // Every error line means something went wrong; warnings (ws protocol errors) are expected.
  const logStream = new Writable({
    write (chunk, _enc, cb) {
      failures.add('error logged by the server', String(chunk).slice(0, 500))
      cb()
    }
  })
  const onRejection = (reason: unknown): void => { failures.add('unhandled rejection', String((reason as Error)?.stack ?? reason)) }
  const onException = (err: Error): void => { failures.add('uncaught exception', String(err?.stack ?? err)) }
  process.on('unhandledRejection', onRejection)
  process.on('uncaughtException', onException)

  const app = Fastify({ logger: { level: 'error', stream: logStream } })
  await app.register(secureWs, {
    origins: [FUZZ_ORIGIN],
    jwt: { key: SECRET, algorithms: ['HS256'] },
    // High enough that the run is not ended by its own rate; the rate limiter still counts every frame.
    limits: { connectionsPerUser: 64, messagesPerSecond: 1_000_000_000, messagesPerMinute: 1_000_000_000, maxPayloadBytes: MAX_PAYLOAD_BYTES }
  })

  function accept (conn: SecureWsConnection, type: string, payload: unknown): void {
    if (!Value.Check(DECLARED[type] as TSchema, payload)) {
      failures.add(`handler "${type}" got a payload its declared schema forbids`, payloadText(payload).slice(0, 300))
    }
    conn.send('accepted', { of: type, payload: payloadText(payload) })
  }

  app.secureWs.route({
    url: '/fuzz/:sessionId',
    resolveSession: ({ user }) => ({ ownerId: user.id }),
    outbound: { accepted: ACCEPTED_SCHEMA },
    messages: (message) => ({
      ping: message((conn, payload) => accept(conn, 'ping', payload)),
      profile: message({ payload: PAYLOAD_SCHEMAS.profile }, (conn, payload) => accept(conn, 'profile', payload)),
      order: message({ payload: PAYLOAD_SCHEMAS.order }, (conn, payload) => accept(conn, 'order', payload)),
      shape: message({ payload: PAYLOAD_SCHEMAS.shape }, (conn, payload) => accept(conn, 'shape', payload)),
      tags: message({ payload: PAYLOAD_SCHEMAS.tags }, (conn, payload) => accept(conn, 'tags', payload)),
      at: message({ payload: PAYLOAD_SCHEMAS.at }, (conn, payload) => accept(conn, 'at', payload))
    })
  })
  app.secureWs.route({
    url: '/wide/:sessionId',
    resolveSession: ({ user }) => ({ ownerId: user.id }),
    limits: { maxPayloadBytes: WS_MAX_PAYLOAD_BYTES },
    messages: {}
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const sign = createSigner({ key: SECRET, algorithm: 'HS256', expiresIn: 3_600_000 })

  return {
    url: `ws://127.0.0.1:${port}/fuzz/s1`,
    token: () => sign({ sub: USER }),
    app,
    async close () {
      try {
        await app.close()
      } finally {
        process.removeListener('unhandledRejection', onRejection)
        process.removeListener('uncaughtException', onException)
      }
    }
  }
}
