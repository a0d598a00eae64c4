/**
 * The browser build of the client, dist/client.mjs: what esbuild makes of lib/client, with
 * the options `npm run build` uses. It must stand alone (nothing to import), stay within
 * 4 KB minified and gzipped, and work as shipped.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { gzipSync } from 'node:zlib'
import t from 'tap'
import WebSocket from 'ws'
import { bundleClient } from '../scripts/build-client.js'
import { ORIGIN, build, eventually, sign } from './helpers.js'

const MAX_GZIP_BYTES = 4096
const DIST_BUNDLE = resolve(__dirname, '..', 'dist', 'client.mjs')

t.test('the bundle stands alone and fits in 4 KB min+gzip', async (t) => {
  const { code, inputs } = await bundleClient()
  t.strictSame(inputs.filter((input) => !input.startsWith('lib/client/')), [], 'made of lib/client alone: no server code')
  t.ok(inputs.includes('lib/client/index.ts'), 'from the client entry')
  const gzipped = gzipSync(code, { level: 9 }).length
  t.comment(`dist/client.mjs: ${code.length} bytes minified, ${gzipped} bytes min+gzip (limit ${MAX_GZIP_BYTES})`)
  t.ok(gzipped <= MAX_GZIP_BYTES, `${gzipped} bytes min+gzip, at most ${MAX_GZIP_BYTES}`)
  t.notMatch(code, /\bimport\s*[\w{*('"]|\brequire\s*\(/, 'no import or require left to resolve')
  t.match(code, /export\s*\{[^}]*\bcreateClient\b/, 'exports createClient')
  if (existsSync(DIST_BUNDLE)) t.equal(readFileSync(DIST_BUNDLE, 'utf8'), code, 'dist/client.mjs is this bundle')
  else t.comment('dist/client.mjs not built: `npm run build` writes it')
})

t.test('the bundle, loaded as an ES module, connects and round-trips', async (t) => {
  const dir = t.testdir({})
  const file = join(dir, 'client.mjs')
  writeFileSync(file, (await bundleClient()).code)
  const bundle = await import(pathToFileURL(file).href) as typeof import('../lib/client/index.js')
  t.strictSame(Object.keys(bundle).sort(), ['SecureWsCloseError', 'createClient', 'fullJitter'])

  const { url } = await build(t)
  class BrowserLikeWebSocket extends WebSocket {
    constructor (url: string, protocols: string[]) {
      super(url, protocols, { origin: ORIGIN })
    }
  }
  const frames: unknown[] = []
  const closes: unknown[] = []
  const client = bundle.createClient({
    url: url('/ws/alice-1'),
    getToken: () => sign('alice'),
    WebSocket: BrowserLikeWebSocket,
    onClose: (error) => { closes.push({ name: error.name, code: error.code, kind: error.kind, willReconnect: error.willReconnect, isError: error instanceof Error }) }
  })
  t.teardown(() => client.close())
  client.on('echo', (frame) => { frames.push(frame) })
  t.ok(await eventually(() => client.state === 'open'), 'open')
  client.send('echo', { text: 'from the bundle' })
  t.ok(await eventually(() => frames.length === 1), 'answered')
  t.strictSame(frames, [{ type: 'echo', text: 'from the bundle' }])
  await client.close()
  t.strictSame(closes, [{ name: 'SecureWsCloseError', code: 1000, kind: 'normal', willReconnect: false, isError: true }])
})
