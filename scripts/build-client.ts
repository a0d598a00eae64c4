/**
 * Bundles `fastify-secure-ws/client` for browsers: one minified ES module, dist/client.mjs,
 * with nothing left to resolve (the client has no runtime dependency). `npm run build` runs
 * this after tsc; test/client-bundle.test.ts builds the same bundle in memory to measure it.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { build, type BuildOptions } from 'esbuild'

const ROOT = resolve(__dirname, '..')

export const CLIENT_BUNDLE: BuildOptions = {
  entryPoints: [join(ROOT, 'lib/client/index.ts')],
  outfile: join(ROOT, 'dist/client.mjs'),
  bundle: true,
  format: 'esm',
  minify: true,
  // Every browser with private fields, optional chaining and `??` (2021 on): nothing is downlevelled.
  target: 'es2022',
  platform: 'neutral',
  legalComments: 'none'
}

/** The bundle's text, and the source files it was made of (relative to the repository). */
export async function bundleClient (): Promise<{ code: string, inputs: string[] }> {
  const result = await build({ ...CLIENT_BUNDLE, absWorkingDir: ROOT, write: false, metafile: true })
  return { code: result.outputFiles![0]!.text, inputs: Object.keys(result.metafile!.inputs) }
}

if (require.main === module) {
  bundleClient().then(({ code }) => {
    mkdirSync(join(ROOT, 'dist'), { recursive: true })
    writeFileSync(CLIENT_BUNDLE.outfile!, code)
    // The ESM entry's types: those of the CommonJS build, which tsc emitted beside it.
    writeFileSync(join(ROOT, 'dist/client.d.mts'), "export * from './client/index.js'\n")
  }, (err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
