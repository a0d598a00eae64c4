import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import t from 'tap'
import ts from 'typescript'

// Every module of lib/ must be readable on its own: shared types live in lib/types.ts, so no
// module needs another's internals. A cycle, even one made only of `import type`, is the sign
// that a type lives in the wrong module; this walks every import form TypeScript has and
// fails on any cycle, naming it.
const LIB = resolve(__dirname, '..', 'lib')

function sourceFiles (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sourceFiles(path)
    return /\.m?ts$/.test(entry.name) && !entry.name.endsWith('.d.ts') ? [path] : []
  })
}

/** Module specifiers of every import, export-from, `import('x')` type and dynamic import, type-only ones included. */
function specifiersIn (file: string, text: string): string[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true)
  const found: string[] = []
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier !== undefined && ts.isStringLiteral(node.moduleSpecifier)) {
      found.push(node.moduleSpecifier.text)
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference) && ts.isStringLiteral(node.moduleReference.expression)) {
      found.push(node.moduleReference.expression.text)
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      found.push(node.argument.literal.text)
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && node.arguments[0] !== undefined && ts.isStringLiteral(node.arguments[0])) {
      found.push(node.arguments[0].text)
    }
    ts.forEachChild(node, visit)
  }
  visit(source)
  return found
}

/** The lib/ file a relative specifier names (`./x.js` is `./x.ts` in source); undefined for packages. */
function resolveLocal (from: string, specifier: string): string | undefined {
  if (!specifier.startsWith('.')) return undefined
  const base = resolve(dirname(from), specifier)
  const candidates = [base, base.replace(/\.js$/, '.ts'), base.replace(/\.mjs$/, '.mts'), `${base}.ts`, join(base, 'index.ts')]
  const hit = candidates.find((path) => /\.m?ts$/.test(path) && existsSync(path))
  if (hit === undefined) throw new Error(`${relative(LIB, from)} imports ${specifier}, which names no file in lib/`)
  return hit
}

function importGraph (): Map<string, string[]> {
  const graph = new Map<string, string[]>()
  for (const file of sourceFiles(LIB)) {
    const targets = specifiersIn(file, readFileSync(file, 'utf8')).map((specifier) => resolveLocal(file, specifier)).filter((path) => path !== undefined)
    graph.set(relative(LIB, file), [...new Set(targets.map((path) => relative(LIB, path)))].sort())
  }
  return graph
}

/** Strongly connected components of more than one module (or a module importing itself), by Tarjan's algorithm. */
function cyclicComponents (graph: Map<string, string[]>): string[][] {
  let next = 0
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const components: string[][] = []
  const connect = (node: string): void => {
    index.set(node, next)
    low.set(node, next)
    next++
    stack.push(node)
    onStack.add(node)
    for (const target of graph.get(node) ?? []) {
      if (!index.has(target)) {
        connect(target)
        low.set(node, Math.min(low.get(node)!, low.get(target)!))
      } else if (onStack.has(target)) {
        low.set(node, Math.min(low.get(node)!, index.get(target)!))
      }
    }
    if (low.get(node) !== index.get(node)) return
    const component: string[] = []
    let member: string
    do {
      member = stack.pop()!
      onStack.delete(member)
      component.push(member)
    } while (member !== node)
    if (component.length > 1 || (graph.get(node) ?? []).includes(node)) components.push(component.sort())
  }
  for (const node of [...graph.keys()].sort()) if (!index.has(node)) connect(node)
  return components
}

/** One shortest cycle through `start` inside its component, to print as `a → b → a`. */
function cycleThrough (graph: Map<string, string[]>, component: string[], start: string): string[] {
  const inside = new Set(component)
  const previous = new Map<string, string>()
  const queue = [start]
  while (queue.length > 0) {
    const node = queue.shift()!
    for (const target of graph.get(node) ?? []) {
      if (!inside.has(target)) continue
      if (target === start) {
        const path = [node]
        while (path[0] !== start) path.unshift(previous.get(path[0]!)!)
        return [...path, start]
      }
      if (!previous.has(target)) {
        previous.set(target, node)
        queue.push(target)
      }
    }
  }
  return [start]
}

/** For each cyclic component, the shortest cycle through each of its modules, each cycle once, printed `a → b → a`. */
function describeCycles (graph: Map<string, string[]>): string[] {
  const seen = new Set<string>()
  const printed: string[] = []
  for (const component of cyclicComponents(graph)) {
    for (const start of component) {
      const cycle = cycleThrough(graph, component, start)
      const members = cycle.slice(0, -1)
      const first = members.indexOf([...members].sort()[0]!)
      const key = [...members.slice(first), ...members.slice(0, first)].join(' ')
      if (seen.has(key)) continue
      seen.add(key)
      printed.push(cycle.join(' → '))
    }
  }
  return printed
}

t.test('the import graph of lib/, type imports included, has no cycle', async (t) => {
  const graph = importGraph()
  t.ok(graph.has('index.ts') && graph.has('types.ts'), 'the walk found lib/index.ts and lib/types.ts')
  t.same(describeCycles(graph), [], 'no import cycle (each line below is one)')
})

t.test('lib/types.ts is a leaf: it imports nothing from lib/', async (t) => {
  t.same(importGraph().get('types.ts'), [])
})

t.test('the checker itself sees type-only imports, import() types and re-exports as edges', async (t) => {
  const graph = new Map([['a.ts', ['b.ts']], ['b.ts', ['c.ts']], ['c.ts', ['a.ts']], ['d.ts', ['d.ts']], ['e.ts', ['a.ts']]])
  t.same(cyclicComponents(graph), [['a.ts', 'b.ts', 'c.ts'], ['d.ts']])
  t.same(cycleThrough(graph, ['a.ts', 'b.ts', 'c.ts'], 'b.ts'), ['b.ts', 'c.ts', 'a.ts', 'b.ts'])
  t.same(describeCycles(graph), ['a.ts → b.ts → c.ts → a.ts', 'd.ts → d.ts'])
  const sample = [
    "import type { A } from './a.js'",
    "import B = require('./b.js')",
    "export type { C } from './c.js'",
    "type D = import('./d.js').D",
    "const e = import('./e.js')"
  ].join('\n')
  t.same(specifiersIn('sample.ts', sample), ['./a.js', './b.js', './c.js', './d.js', './e.js'])
})
