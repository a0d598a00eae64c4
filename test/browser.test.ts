/**
 * The example server as a browser meets it: its page at `GET /` and its WebSocket route,
 * driven in headless Chromium (Debian's /usr/bin/chromium through playwright-core). A browser
 * is the client the close-code design is for: it cannot read an HTTP refusal, only a close
 * frame after a completed upgrade, and it alone sends the `Origin` the allowlist checks.
 */
import { existsSync } from 'node:fs'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { chromium, type Browser, type Page } from 'playwright-core'
import { startExample, type ExampleProcess } from './example-process.js'

const CHROMIUM = '/usr/bin/chromium'
// No GPU, no network of its own, no background updates: the browser talks to 127.0.0.1 only.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'
]
const SECRET = 'browser-test-secret-0123456789abcdef'
// An upper bound on each wait in the browser, so a hang fails the test rather than stalling it.
const WAIT_MS = 10_000
const INVALID_TOKEN = { code: 4401, reason: 'Invalid or expired authentication token' }
const ORIGIN_NOT_ALLOWED = { code: 1008, reason: 'Origin not allowed' }
const SESSION_PATH = '/ws/sessions/alice-1'

// What the functions below that run inside the page use of the browser's globals; they are
// declared here, for this file only, because the project's type check knows Node, not the DOM.
declare const document: { getElementById: (id: string) => { textContent: string | null } | null }
declare class WebSocket {
  constructor (url: string, protocols: string[])
  readonly protocol: string
  onopen: () => void
  onclose: (event: { code: number, reason: string }) => void
}

/**
 * Fails the file under CI=true when Chromium is missing, so CI cannot pass without running
 * it; elsewhere skips it, loudly.
 */
function requireChromium (t: { fail: (message: string) => unknown, plan: (n: number, comment?: string) => unknown }): boolean {
  if (existsSync(CHROMIUM)) return true
  const message = `${CHROMIUM} not found: browser tests NOT run (install Debian's chromium to run them)`
  if (process.env.CI === 'true') t.fail(message)
  else {
    process.stderr.write(`\n*** ${message} ***\n`)
    t.plan(0, message)
  }
  return false
}

/**
 * playwright-core refuses a `--user-data-dir` in `args`: `chromium.launch` passes Chromium a
 * fresh profile of its own in a new temp directory, and deletes it when the browser closes.
 */
async function launchChromium (t: { teardown: (fn: () => unknown) => void }): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 })
  t.teardown(() => browser.close())
  return browser
}

/** A fresh page in a context of its own, closed in teardown. */
async function newPage (t: { teardown: (fn: () => unknown) => void }, browser: Browser): Promise<Page> {
  const context = await browser.newContext()
  t.teardown(() => context.close())
  return context.newPage()
}

/** The lines of the example page's log element. */
async function logLines (page: Page): Promise<string[]> {
  const text = await page.locator('#log').textContent()
  return (text ?? '').split('\n').filter((line) => line !== '')
}

/** Waits until the example page's log holds at least `count` lines. */
async function waitForLogLines (page: Page, count: number): Promise<void> {
  await page.waitForFunction(
    (count) => (document.getElementById('log')?.textContent ?? '').split('\n').filter((line) => line !== '').length >= count,
    count,
    { timeout: WAIT_MS }
  )
}

interface SocketOutcome {
  opened: boolean
  protocol: string
  code: number
  reason: string
}

/**
 * Runs in the page: opens a WebSocket and resolves with how it ended. Only the CloseEvent is
 * read, never `wasClean`: the server may end a refused socket without waiting for the
 * browser's close reply, and the code and reason it sent must be readable all the same.
 */
function socketOutcome ({ url, protocols }: { url: string, protocols: string[] }): Promise<SocketOutcome> {
  return new Promise((resolve) => {
    const socket = new WebSocket(url, protocols)
    let opened = false
    let protocol = ''
    socket.onopen = () => { opened = true; protocol = socket.protocol }
    socket.onclose = (event) => resolve({ opened, protocol, code: event.code, reason: event.reason })
  })
}

if (requireChromium(t)) {
  let example: ExampleProcess
  let browser: Browser
  const pageUrl = (): string => `http://127.0.0.1:${example.port}/`

  t.before(async () => {
    [example, browser] = await Promise.all([startExample(t, { WS_JWT_SECRET: SECRET }), launchChromium(t)])
  })

  /** A demo token for alice, asked for by this process, as the page itself asks for one. */
  async function demoToken (t: { equal: (found: unknown, wanted: unknown, message: string) => unknown }): Promise<string> {
    const res = await fetch(`${pageUrl()}demo/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user: 'alice' })
    })
    t.equal(res.status, 200, 'POST /demo/token answers 200')
    return ((await res.json()) as { token: string }).token
  }

  t.test('the example page connects through fastify-secure-ws/client; ping and get_status answer the exact frames', async (t) => {
    const page = await newPage(t, browser)
    await page.goto(pageUrl())
    await waitForLogLines(page, 1)
    t.strictSame(await logLines(page), ['open'], 'the page\'s client opened the socket (it offers only bearer, so the server answered bearer)')

    await page.getByRole('button', { name: 'ping', exact: true }).click()
    await waitForLogLines(page, 3)
    await page.getByRole('button', { name: 'get_status', exact: true }).click()
    await waitForLogLines(page, 5)
    const lines = await logLines(page)
    t.strictSame(lines, [
      'open',
      '-> {"type":"ping"}',
      '<- {"type":"pong"}',
      '-> {"type":"get_status"}',
      '<- {"type":"status","data":{"id":"alice-1","owner":"alice","state":"running"}}'
    ], 'the log holds the exact frames sent and received, and nothing else')
    t.notMatch(lines.join('\n'), /apiKey|ak_live_/, 'no frame carries the session\'s API key')
  })

  t.test('a token that is not a JWT: the page reads close 4401 and its reason', async (t) => {
    const page = await newPage(t, browser)
    await page.goto(pageUrl())
    const outcome = await page.evaluate(socketOutcome, { url: example.url(SESSION_PATH), protocols: ['bearer', 'not-a-jwt'] })
    t.strictSame(outcome, { opened: true, protocol: 'bearer', ...INVALID_TOKEN },
      'the upgrade completes with subprotocol bearer, then the server closes with 4401')
  })

  t.test('a page of another origin on 127.0.0.1: the page reads close 1008 Origin not allowed', async (t) => {
    // A real server on another port, since Chromium will not take a faked route as the
    // origin of a WebSocket it opens.
    const elsewhere = createServer((_request, response) => {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      response.end('<!doctype html><html><head><link rel="icon" href="data:,"><title>elsewhere</title></head><body></body></html>')
    })
    elsewhere.listen(0, '127.0.0.1')
    await once(elsewhere, 'listening')
    t.teardown(() => {
      elsewhere.closeAllConnections()
      elsewhere.close()
    })
    const elsewhereUrl = `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/`
    const token = await demoToken(t)
    const socket = { url: example.url(SESSION_PATH), protocols: ['bearer', token] }

    const page = await newPage(t, browser)
    await page.goto(elsewhereUrl)
    t.strictSame(await page.evaluate(socketOutcome, socket), { opened: true, protocol: 'bearer', ...ORIGIN_NOT_ALLOWED },
      'the upgrade completes with subprotocol bearer, then the server closes with 1008')

    // The same token from the example's own page is admitted, so the origin alone was refused.
    await page.goto(pageUrl())
    const admitted = await page.evaluate(({ url, protocols }) => new Promise<string>((resolve) => {
      const socket = new WebSocket(url, protocols)
      socket.onopen = () => resolve(socket.protocol)
      socket.onclose = (event) => resolve(`closed ${event.code} ${event.reason}`)
    }), socket)
    t.equal(admitted, 'bearer', 'the same token opens from the allowed origin')
  })
}
