import { execFile } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'

// A new user's apps, made the way a new user makes them: the package packed from a clean
// copy of the sources (so `prepack` has to build it), installed into fresh ESM and CommonJS
// TypeScript apps, compiled there and run.
const ROOT = resolve(__dirname, '..')
const MODULES = join(ROOT, 'node_modules')
const run = promisify(execFile)

interface PackResult {
  filename: string
  files: Array<{ path: string }>
}

interface Consumer {
  name: string
  type: 'module' | 'commonjs'
  compilerOptions: Record<string, unknown>
  /** Whether the compiled app is run too (bundler output is for a bundler, not for node). */
  runs: boolean
}

const CONSUMERS: Consumer[] = [
  { name: 'esm-nodenext', type: 'module', compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext' }, runs: true },
  { name: 'cjs-nodenext', type: 'commonjs', compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext' }, runs: true },
  { name: 'esm-bundler', type: 'module', compilerOptions: { module: 'preserve', moduleResolution: 'bundler' }, runs: false }
]

/** Output of a child process that failed, for the assertion message. */
function failure (err: unknown): string {
  const { stdout, stderr, message } = err as { stdout?: string, stderr?: string, message: string }
  return [message, stdout, stderr].filter(Boolean).join('\n')
}

const work = mkdtempSync(join(tmpdir(), 'secure-ws-consumers-'))
t.teardown(() => { rmSync(work, { recursive: true, force: true }) })

// Only what a clone has, and no dist/: what `npm publish` ships must come from `prepack`.
const source = join(work, 'source')
mkdirSync(source)
for (const entry of ['package.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'LICENSE', 'lib', 'scripts']) {
  cpSync(join(ROOT, entry), join(source, entry), { recursive: true })
}
symlinkSync(MODULES, join(source, 'node_modules'), 'dir')

const packed = run('npm', ['pack', '--json', '--pack-destination', work], { cwd: source, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 })
  .then(({ stdout }) => (JSON.parse(stdout) as PackResult[])[0]!)
packed.catch(() => {})

t.test('npm pack from a clean copy builds through prepack and ships the code and its declarations', async (t) => {
  const pack = await packed
  const files = pack.files.map((file) => file.path)
  for (const path of ['dist/index.js', 'dist/index.d.ts', 'dist/esm.mjs', 'dist/esm.d.mts', 'package.json', 'README.md', 'LICENSE']) {
    t.ok(files.includes(path), `the tarball has ${path}`)
  }
  t.notOk(files.some((path) => path.startsWith('lib/') || path.startsWith('test/')), 'and no sources or tests')
})

/**
 * Installs the tarball into a fresh app as npm would, without a registry: the package
 * unpacked into node_modules, beside links to what it declares it needs (dependencies and
 * peers, which npm installs too) and the app's own tools. Anything the package uses without
 * declaring it is missing here, as it would be for a user.
 */
async function install (dir: string, tarball: string): Promise<void> {
  const target = join(dir, 'node_modules', 'fastify-secure-ws')
  mkdirSync(target, { recursive: true })
  await run('tar', ['-xzf', tarball, '-C', target, '--strip-components=1'])
  const manifest = JSON.parse(readFileSync(join(target, 'package.json'), 'utf8')) as Record<string, Record<string, string> | undefined>
  const needed = new Set([
    ...Object.keys(manifest.dependencies ?? {}),
    ...Object.keys(manifest.peerDependencies ?? {}),
    'typescript',
    '@types/node'
  ])
  for (const name of needed) {
    const link = join(dir, 'node_modules', name)
    mkdirSync(dirname(link), { recursive: true })
    symlinkSync(join(MODULES, name), link, 'dir')
  }
}

/** The README's TypeScript example with the route, as a user would paste it into an app. */
function readmeExample (): string | undefined {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const block = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]!)
    .find((code) => code.includes("from 'fastify-secure-ws'") && code.includes('secureWs.route('))
  if (block === undefined) return undefined
  // The example leaves its session lookup to the reader; give it one unless it declares its own.
  const needsRooms = /\brooms\./.test(block) && !/\b(const|let|var) rooms\b/.test(block)
  return (needsRooms ? 'declare const rooms: Map<string, { ownerId: string, clear: () => void }>\n' : '') + block
}

const example = readmeExample()
t.ok(example !== undefined, 'the README has a TypeScript example that declares a route')

const consumerSource = readFileSync(join(__dirname, 'types', 'consumer.ts'), 'utf8')

for (const consumer of CONSUMERS) {
  // Each app is set up, compiled and run as soon as the tarball exists; the apps run side by side.
  const result = packed.then(async (pack) => {
    const dir = join(work, consumer.name)
    mkdirSync(dir)
    await install(dir, join(work, pack.filename))
    // Top-level await, as in the README, exists only in ES modules.
    const files = ['consumer.ts', ...(consumer.type === 'module' && example !== undefined ? ['readme.ts'] : [])]
    writeFileSync(join(dir, 'consumer.ts'), consumerSource)
    if (files.includes('readme.ts')) writeFileSync(join(dir, 'readme.ts'), example + '\nexport {}\n')
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: consumer.name, private: true, type: consumer.type }))
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { target: 'es2022', strict: true, outDir: 'out', types: ['node'], ...consumer.compilerOptions },
      files
    }))
    const compiled = await run(process.execPath, [join(MODULES, 'typescript', 'bin', 'tsc'), '-p', dir], { cwd: dir, timeout: 60_000 })
      .then(() => '', failure)
    if (compiled !== '' || !consumer.runs) return { compiled, ran: undefined }
    const ran = await run(process.execPath, [join(dir, 'out', 'consumer.js')], { cwd: dir, timeout: 30_000, env: { ...process.env, NODE_OPTIONS: '' } })
      .then(({ stdout }) => JSON.parse(stdout.trim()) as unknown, failure)
    return { compiled, ran }
  })
  result.catch(() => {})

  t.test(`${consumer.name}: a fresh ${consumer.type === 'module' ? 'ESM' : 'CommonJS'} app compiles against the tarball with every type inferred`, async (t) => {
    const { compiled, ran } = await result
    t.equal(compiled, '', 'tsc reports nothing: inferred types as asserted, every @ts-expect-error refused')
    if (consumer.runs) {
      t.same(ran, { typed: 0, local: 0, untyped: 0, connections: 0 }, 'and the app runs: registers, declares its routes, publishes, closes')
    }
  })
}
