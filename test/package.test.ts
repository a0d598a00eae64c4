import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'

// These tests load the package the way a consumer does: by its name, through package.json
// `exports`, from the built dist/ (`npm test` builds before tap runs).
const ROOT = resolve(__dirname, '..')
const DIST = join(ROOT, 'dist')
const run = promisify(execFile)
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  name: string
  main: string
  types: string
  files: string[]
  exports: Record<string, unknown>
}

const OPTIONS = "{ origins: ['http://a.test'], jwt: { key: 'k'.repeat(32), algorithms: ['HS256'] } }"

/** Runs `node -e script` in the package root, free of the test runner's loaders, and parses the JSON it prints. */
async function nodeEval (script: string, args: string[] = []): Promise<Record<string, unknown>> {
  const { stdout } = await run(process.execPath, [...args, '-e', script], {
    cwd: ROOT,
    env: { ...process.env, NODE_OPTIONS: '' },
    timeout: 20_000
  })
  const lines = stdout.trim().split('\n')
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>
}

/** Starts work now, for a test below to await later; a failure surfaces in that test, never as an unhandled rejection. */
function eager<T> (promise: Promise<T>): Promise<T> {
  promise.catch(() => {})
  return promise
}

/** Every file path named under package.json `exports`. */
function exportTargets (value: unknown): string[] {
  if (typeof value === 'string') return [value]
  if (typeof value === 'object' && value !== null) return Object.values(value).flatMap(exportTargets)
  return []
}

if (!existsSync(join(DIST, 'index.js'))) {
  t.fail(`dist/ is missing (${DIST}): run \`npm run build\` before this test; \`npm test\` builds first`)
} else {
  t.test('every file package.json points at was built', async (t) => {
    const targets = [pkg.main, pkg.types, ...exportTargets(pkg.exports)]
    t.ok(targets.length >= 10, 'main, types and the import/require conditions of . and ./client')
    for (const target of targets) {
      t.ok(existsSync(join(ROOT, target)), `${target} exists`)
    }
  })

  // The child processes and the type check start together: each takes seconds, mostly loading Fastify.
  const fromRequire = eager(nodeEval(`
      const mod = require('${pkg.name}')
      const Fastify = require('fastify')
      ;(async () => {
        const out = {
          resolved: require.resolve('${pkg.name}'),
          default: typeof mod.default,
          secureWs: mod.secureWs === mod.default,
          optionsFromEnv: typeof mod.optionsFromEnv,
          memoryStore: typeof mod.memoryStore,
          pluginName: (mod.default[Symbol.for('plugin-meta')] || {}).name,
          envOrigins: mod.optionsFromEnv({ WS_ALLOWED_ORIGINS: 'HTTP://A.test' }).origins
        }
        const app = Fastify()
        await app.register(mod.default, ${OPTIONS})
        await app.ready()
        out.decorated = typeof app.secureWs.route
        await app.close()
        // fastify.register(require('${pkg.name}'), ...) is how CommonJS users write it.
        const app2 = Fastify()
        await app2.register(mod, ${OPTIONS})
        await app2.ready()
        out.moduleObjectRegisters = typeof app2.secureWs.route
        await app2.close()
        console.log(JSON.stringify(out))
      })().catch((err) => { console.error(err); process.exit(1) })
    `))
  t.test('require(name) resolves to the CommonJS build and registers', async (t) => {
    t.same(await fromRequire, {
      resolved: join(DIST, 'index.js'),
      default: 'function',
      secureWs: true,
      optionsFromEnv: 'function',
      memoryStore: 'function',
      pluginName: 'fastify-secure-ws',
      envOrigins: ['http://a.test'],
      decorated: 'function',
      moduleObjectRegisters: 'function'
    })
  })

  const fromImport = eager(nodeEval(`
      ;(async () => {
        const mod = await import('${pkg.name}')
        const Fastify = require('fastify')
        const out = {
          default: typeof mod.default,
          optionsFromEnv: typeof mod.optionsFromEnv,
          memoryStore: typeof mod.memoryStore,
          store: typeof mod.memoryStore().acquireSlot,
          sameInstanceAsRequire: mod.default === require('${pkg.name}').default
        }
        const app = Fastify()
        await app.register(mod.default, ${OPTIONS})
        await app.ready()
        out.decorated = typeof app.secureWs.route
        await app.close()
        console.log(JSON.stringify(out))
      })().catch((err) => { console.error(err); process.exit(1) })
    `))
  t.test('import(name) resolves to the ESM entry and its default export registers', async (t) => {
    t.same(await fromImport, {
      default: 'function',
      optionsFromEnv: 'function',
      memoryStore: 'function',
      store: 'function',
      sameInstanceAsRequire: true,
      decorated: 'function'
    })
  })

  // The ESM entry re-exports the CommonJS build's names; its declarations claim every one of them.
  const exportNames = eager(nodeEval(`
      import * as esm from '${pkg.name}'
      import { createRequire } from 'node:module'
      const cjs = createRequire(import.meta.url)('${pkg.name}')
      console.log(JSON.stringify({
        esm: Object.keys(esm).filter((name) => name !== '__esModule').sort(),
        cjs: Object.keys(cjs).sort()
      }))
    `, ['--input-type=module']))
  t.test('import(name) offers every name require(name) does', async (t) => {
    const { esm, cjs } = await exportNames as { esm: string[], cjs: string[] }
    t.ok(cjs.includes('secureWs') && cjs.includes('default'), 'the CommonJS names were read')
    t.same(esm, cjs)
  })

  const fromStaticImport = eager(nodeEval(`
      import secureWs, { optionsFromEnv, memoryStore, secureWs as named } from '${pkg.name}'
      import Fastify from 'fastify'
      const app = Fastify()
      await app.register(secureWs, ${OPTIONS})
      await app.ready()
      const decorated = typeof app.secureWs.route
      await app.close()
      console.log(JSON.stringify({
        resolved: import.meta.resolve('${pkg.name}'),
        default: typeof secureWs,
        named: named === secureWs,
        optionsFromEnv: typeof optionsFromEnv,
        memoryStore: typeof memoryStore,
        decorated
      }))
    `, ['--input-type=module']))
  t.test('static ESM import of the default and named exports', async (t) => {
    t.same(await fromStaticImport, {
      resolved: 'file://' + join(DIST, 'esm.mjs'),
      default: 'function',
      named: true,
      optionsFromEnv: 'function',
      memoryStore: 'function',
      decorated: 'function'
    })
  })

  const clientEntries = eager(nodeEval(`
      import { createClient, SecureWsCloseError, fullJitter } from '${pkg.name}/client'
      import { createRequire } from 'node:module'
      const require = createRequire(import.meta.url)
      const cjs = require('${pkg.name}/client')
      console.log(JSON.stringify({
        imported: import.meta.resolve('${pkg.name}/client'),
        required: require.resolve('${pkg.name}/client'),
        esm: [typeof createClient, typeof SecureWsCloseError, typeof fullJitter],
        cjs: Object.keys(cjs).sort()
      }))
    `, ['--input-type=module']))
  t.test('fastify-secure-ws/client: the browser bundle for import, the CommonJS build for require', async (t) => {
    t.same(await clientEntries, {
      imported: 'file://' + join(DIST, 'client.mjs'),
      required: join(DIST, 'client', 'index.js'),
      esm: ['function', 'function', 'function'],
      cjs: ['SecureWsCloseError', 'createClient', 'fullJitter']
    })
  })

  t.test('the emitted declarations keep the @fastify/websocket reference', async (t) => {
    const declarations = join(DIST, 'index.d.ts')
    t.ok(existsSync(declarations), 'dist/index.d.ts exists')
    const text = readFileSync(declarations, 'utf8')
    t.match(text, /^\/\/\/ <reference types="@fastify\/websocket" preserve="true" \/>/m)
    t.match(text, /declare module 'fastify'/, 'and the FastifyInstance augmentation')
  })

  // Neither consumer imports @fastify/websocket: `websocket: true` and the socket type must come
  // through the reference in this package's declarations, for require and import users alike.
  const consumer = (importLine: string, plugin: string): string => `${importLine}
import Fastify from 'fastify'
const app = Fastify()
app.register(${plugin}, { origins: ['http://a.test'], jwt: { key: 'k'.repeat(32), algorithms: ['HS256'] } })
app.get('/raw', { websocket: true }, (socket, request) => {
  socket.send(request.url)
})
const count: number = app.secureWs.stats().connections
export { count }
`
  // A browser app's module and a Node script both get the client's types from `/client`.
  const clientConsumer = (importLine: string): string => `${importLine}
interface Chat { inbound: { say: { text: string } }, outbound: { said: { text: string } } }
const client = createClient<Chat>({ url: 'wss://a.test/ws', getToken: async () => 'token' })
client.send('say', { text: 'hi' })
// @ts-expect-error
client.send('say', { text: 1 })
client.on('said', (frame) => frame.text.toUpperCase())
export { client }
`
  const consumerDir = t.testdir({
    'consumer.cts': consumer(`import secureWs = require('${pkg.name}')`, 'secureWs.default'),
    'consumer.mts': consumer(`import secureWs from '${pkg.name}'`, 'secureWs'),
    'client.cts': clientConsumer(`import { createClient } from '${pkg.name}/client'`),
    'client.mts': clientConsumer(`import { createClient } from '${pkg.name}/client'`),
    'tsconfig.json': JSON.stringify({
      compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true, noEmit: true, skipLibCheck: true, types: ['node'] },
      files: ['consumer.cts', 'consumer.mts', 'client.cts', 'client.mts']
    })
  })
  const typeCheck = eager(run(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(consumerDir, 'tsconfig.json')], { cwd: consumerDir, timeout: 60_000 })
    .then(() => ({ code: 0, output: '' }), (err: { code?: number, stdout?: string }) => ({ code: err.code, output: err.stdout ?? '' })))

  t.test('a TypeScript consumer gets the websocket route typing from this package alone', async (t) => {
    t.same(await typeCheck, { code: 0, output: '' }, 'the consumer type-checks')
  })
}
