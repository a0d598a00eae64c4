/** The floor: a bare `ws` server doing the app work (parse, dispatch on `type`, answer), nothing else. */
import { WebSocketServer, type RawData } from 'ws'
import { announceReady, answerPlainly, readServerEnv, run } from '../common.js'

run(async () => {
  const { port } = readServerEnv()
  const wss = new WebSocketServer({ host: '127.0.0.1', port, maxPayload: 65536 })
  wss.on('connection', (socket) => {
    socket.on('message', (data: RawData, isBinary: boolean) => {
      const reply = answerPlainly(data, isBinary)
      if (reply !== undefined) socket.send(reply)
    })
  })
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve)
    wss.once('error', reject)
  })
  announceReady()
})
