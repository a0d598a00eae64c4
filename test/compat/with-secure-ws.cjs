'use strict'
// Preload (`node --require`) that runs @fastify/websocket's own test suite with
// fastify-secure-ws registered: every time a test loads the suite's plugin (`require('..')`)
// it gets a wrapper that registers the original with the test's options, then
// fastify-secure-ws and one secured route at a path no test uses. A test that fails only
// under this preload is a behaviour of @fastify/websocket that our plugin changes.
//
// FWS_SUITE_DIR: the suite's root (default: the working directory).
// SECURE_WS_ENTRY: the built plugin (default: this repo's dist/index.js).

const Module = require('node:module')
const fs = require('node:fs')
const path = require('node:path')

const suiteDir = path.resolve(process.env.FWS_SUITE_DIR ?? process.cwd())
// Node caches modules under their real path; the suite's node_modules is usually symlinked.
const target = fs.realpathSync(path.join(suiteDir, 'index.js'))
const secureWsEntry = path.resolve(process.env.SECURE_WS_ENTRY ?? path.join(__dirname, '..', '..', 'dist', 'index.js'))

const SECURE_WS_OPTIONS = {
  origins: ['http://compat.test'],
  jwt: { key: 'k'.repeat(32), algorithms: ['HS256'] }
}
const COMPAT_ROUTE = '/__secure_ws_compat/:id'

const wrappers = new WeakMap()

function wrapperFor (original) {
  let wrapper = wrappers.get(original)
  if (wrapper !== undefined) return wrapper
  // The fastify-plugin the suite itself uses, so the wrapper's meta matches the original's.
  const fp = Module.createRequire(target)('fastify-plugin')
  const secureWs = require(secureWsEntry).default

  async function fastifyWebsocketWithSecureWs (fastify, opts) {
    await fastify.register(original, opts)
    await fastify.register(secureWs, SECURE_WS_OPTIONS)
    fastify.secureWs.route({ url: COMPAT_ROUTE, resolveSession: () => null, messages: {} })
  }
  wrapper = fp(fastifyWebsocketWithSecureWs, { fastify: '5.x', name: '@fastify/websocket' })
  // Same shape as the original's exports: the plugin is also `.default` and `.fastifyWebsocket`.
  wrapper.default = wrapper
  wrapper.fastifyWebsocket = wrapper
  wrappers.set(original, wrapper)
  return wrapper
}

const load = Module._load
Module._load = function loadWithSecureWs (request, parent, isMain) {
  const exported = load.apply(this, arguments)
  const cached = Module._cache[target]
  // Only the suite's own plugin file is swapped; the wrapper holds the original directly.
  if (cached !== undefined && cached.loaded && exported === cached.exports) return wrapperFor(exported)
  return exported
}
