import { InvalidOptionError } from './errors.js'

/** Edit distance between two names, for "did you mean" hints. */
function distance (a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!
      row[j] = Math.min(above + 1, row[j - 1]! + 1, diagonal + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1))
      diagonal = above
    }
  }
  return row[b.length]!
}

/** The known name closest to `name`, when it is close enough to be a typo of it. */
export function closestName (name: string, known: readonly string[]): string | undefined {
  let best: string | undefined
  let bestDistance = Number.POSITIVE_INFINITY
  for (const candidate of known) {
    const d = distance(name, candidate)
    if (d < bestDistance) {
      best = candidate
      bestDistance = d
    }
  }
  // A third of the name may differ: `iss` → `issuer` is too far, `isuer` → `issuer` is not.
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined
}

/**
 * Refuses keys of `value` that are not in `known`, naming the closest known one: a typo in
 * a security option must fail loudly rather than leave a check silently off. `path` prefixes
 * the names (`jwt.`), `context` the message (`/ws/:id: `).
 */
export function refuseUnknownKeys (value: object, known: readonly string[], path: string, Err: new (message: string) => Error = InvalidOptionError, context = ''): void {
  for (const name of Object.keys(value)) {
    if (known.includes(name)) continue
    const hint = closestName(name, known)
    throw new Err(`${context}${path}${name} is not a known option${hint === undefined ? ` (expected one of ${known.join(', ')})` : `; did you mean ${path}${hint}?`}`)
  }
}
