/** The baseline: plain Fastify + @fastify/websocket doing the same app work, with no security at all. */
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import type { RawData } from 'ws'
import { ROUTE, announceReady, answerPlainly, readServerEnv, run } from '../common.js'

run(async () => {
  const { port } = readServerEnv()
  const app = Fastify({ logger: false })
  await app.register(websocket, { options: { maxPayload: 65536 } })
  app.get(ROUTE, { websocket: true }, (socket) => {
    socket.on('message', (data: RawData, isBinary: boolean) => {
      const reply = answerPlainly(data, isBinary)
      if (reply !== undefined) socket.send(reply)
    })
  })
  await app.listen({ port, host: '127.0.0.1' })
  announceReady()
})
