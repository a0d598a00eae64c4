/** The floor: a bare `ws` server doing the app work (parse, dispatch on `type`, answer), nothing else. */
import { WebSocketServer, type RawData } from 'ws'
import { announceReady, readServerEnv, run } from '../common.js'

run(async () => {
  const { port } = readServerEnv()
  const wss = new WebSocketServer({ host: '127.0.0.1', port, maxPayload: 65536 })
  wss.on('connection', (socket) => {
    socket.on('message', (data: RawData, isBinary: boolean) => {
      if (isBinary) return
      let message: { type?: unknown }
      try {
        message = JSON.parse(data.toString())
      } catch {
        return
      }
      switch (message?.type) {
        case 'ping':
          socket.send(JSON.stringify({ type: 'pong' }))
          break
      }
    })
  })
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve)
    wss.once('error', reject)
  })
  announceReady()
})
