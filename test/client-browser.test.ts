/**
 * The client's browser bundle in headless Chromium (playwright-core, Debian's
 * /usr/bin/chromium): a page loads it as an ES module from its own origin and drives the
 * browser's native WebSocket against a real server. Skipped loudly without Chromium, failed
 * under CI=true.
 */
import { existsSync } from 'node:fs'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { chromium, type Page } from 'playwright-core'
import { bundleClient } from '../scripts/build-client.js'
import { build, sign } from './helpers.js'

const CHROMIUM = '/usr/bin/chromium'
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'
]
const WAIT_MS = 10_000

// The page: loads the bundle the way an app would, and records what the client reports as
// lines the test compares whole.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>client</title></head><body>
<script type="module">
import { createClient } from '/client.mjs'
window.events = []
window.connect = (url, tokens) => {
  const client = createClient({
    url,
    getToken: async () => tokens.shift() ?? 'no-token-left',
    backoff: () => 50,
    onOpen: () => events.push('open'),
    onClose: (e) => events.push(['close', e.code, e.reason, e.kind, e.willReconnect, e instanceof Error].join(' '))
  })
  client.on('echo', (frame) => events.push('echo ' + frame.text))
  window.client = client
}
window.ready = true
</script>
</body></html>`

function requireChromium (t: tap.Test): boolean {
  if (existsSync(CHROMIUM)) return true
  const message = `${CHROMIUM} not found: client browser tests NOT run (install Debian's chromium to run them)`
  if (process.env.CI === 'true') t.fail(message)
  else {
    process.stderr.write(`\n*** ${message} ***\n`)
    t.plan(0, message)
  }
  return false
}

/** Serves the page and the bundle from 127.0.0.1; resolves with the page's origin. */
async function servePage (t: tap.Test): Promise<string> {
  const bundle = (await bundleClient()).code
  const server = createServer((request, response) => {
    if (request.url === '/client.mjs') {
      response.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' })
      response.end(bundle)
    } else {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      response.end(PAGE)
    }
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

async function openPage (t: tap.Test, origin: string): Promise<Page> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  await page.goto(`${origin}/`)
  await page.waitForFunction('window.ready === true', undefined, { timeout: WAIT_MS })
  return page
}

const events = (page: Page): Promise<string[]> => page.evaluate('window.events') as Promise<string[]>
const waitForEvents = (page: Page, count: number): Promise<unknown> =>
  page.waitForFunction(`window.events.length >= ${count}`, undefined, { timeout: WAIT_MS })

if (requireChromium(t)) {
  t.test('in Chromium: round trip, reconnect after 4408, one retry after 4401', async (t) => {
    const origin = await servePage(t)
    const { app, url } = await build(t, { options: { origins: [origin] } })
    const page = await openPage(t, origin)

    await page.evaluate(`connect(${JSON.stringify(url('/ws/alice-1'))}, ${JSON.stringify([sign('alice'), sign('alice')])})`)
    await waitForEvents(page, 1)
    await page.evaluate('client.send("echo", { text: "native WebSocket" })')
    await waitForEvents(page, 2)
    await app.secureWs.disconnectUser('alice', 4408, 'No answer to ping')
    await waitForEvents(page, 4)
    await page.evaluate('client.send("echo", { text: "after the reconnect" })')
    await waitForEvents(page, 5)
    t.strictSame(await events(page), [
      'open',
      'echo native WebSocket',
      'close 4408 No answer to ping heartbeatTimeout true true',
      'open',
      'echo after the reconnect'
    ])
    await page.evaluate('client.close()')
    await waitForEvents(page, 6)

    await page.evaluate(`events.length = 0; connect(${JSON.stringify(url('/ws/alice-1'))}, ['not-a-jwt', 'still-not-a-jwt'])`)
    await waitForEvents(page, 4)
    await page.waitForFunction('client.state === "closed"', undefined, { timeout: WAIT_MS })
    t.strictSame(await events(page), [
      'open',
      'close 4401 Invalid or expired authentication token invalidToken true true',
      'open',
      'close 4401 Invalid or expired authentication token invalidToken false true'
    ], 'the browser reads both 4401s; the client retried once, then stopped')
  })
}
