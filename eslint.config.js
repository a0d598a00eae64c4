'use strict'

// neostandard, the style of the Fastify organisation, with its TypeScript rules.
module.exports = [
  ...require('neostandard')({
    ts: true,
    ignores: ['dist/**', 'coverage/**', 'bench/.runs/**', '.tap/**']
  }),
  // `void promise` marks a promise that handles its own failure; type tests use `void expr`
  // to touch a property under @ts-expect-error.
  { rules: { 'no-void': ['error', { allowAsStatement: true }] } }
]
