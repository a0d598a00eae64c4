// ESM entry. It re-exports the CommonJS build, so both module systems share one instance,
// through named exports only: they mean the same to Node (which finds the CommonJS names with
// cjs-module-lexer) and to TypeScript under every resolution mode, where a default import of
// CommonJS does not (nodenext gives `module.exports`, bundler its `default`).
export * from './index.js'
export { secureWs as default } from './index.js'
