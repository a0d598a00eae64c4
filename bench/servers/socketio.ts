/**
 * What many teams pick instead: socket.io 4, websocket transport only, an origin check and an
 * `io.use` HS256 JWT middleware. The token is verified with fast-jwt (the library
 * fastify-secure-ws uses, with the same claims required and the same cache size), so the
 * comparison measures the frameworks, not the JWT verifiers.
 */
import { createServer } from 'node:http'
import { Server } from 'socket.io'
import { createVerifier } from 'fast-jwt'
import { BENCH_ORIGIN, announceReady, readServerEnv, run } from '../common.js'

run(async () => {
  const { port, secret } = readServerEnv()
  const verify = createVerifier({ key: secret, algorithms: ['HS256'], requiredClaims: ['exp', 'sub'], cache: 1000 })
  const httpServer = createServer()
  const io = new Server(httpServer, {
    transports: ['websocket'],
    serveClient: false,
    maxHttpBufferSize: 65536,
    allowRequest: (req, callback) => callback(null, req.headers.origin === BENCH_ORIGIN)
  })
  io.use((socket, next) => {
    const token: unknown = socket.handshake.auth?.token
    try {
      if (typeof token !== 'string') throw new Error('no token')
      const claims = verify(token) as { sub?: unknown }
      if (typeof claims.sub !== 'string' || claims.sub === '') throw new Error('no sub')
      socket.data.userId = claims.sub
      next()
    } catch {
      next(new Error('Invalid or expired authentication token'))
    }
  })
  io.on('connection', (socket) => {
    socket.on('message', (message: { type?: unknown } | null) => {
      switch (message?.type) {
        case 'ping':
          socket.emit('message', { type: 'pong' })
          break
      }
    })
  })
  await new Promise<void>((resolve, reject) => {
    httpServer.once('error', reject)
    httpServer.listen(port, '127.0.0.1', resolve)
  })
  announceReady()
})
