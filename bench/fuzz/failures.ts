/** Failures by kind: every one counted, the first few of each kind kept for the report. */
export class Failures {
  static readonly EXAMPLES_PER_KIND = 5
  readonly #counts = new Map<string, number>()
  readonly #examples = new Map<string, string[]>()

  add (kind: string, detail: string): void {
    this.#counts.set(kind, (this.#counts.get(kind) ?? 0) + 1)
    const examples = this.#examples.get(kind) ?? []
    if (examples.length < Failures.EXAMPLES_PER_KIND) examples.push(detail)
    this.#examples.set(kind, examples)
  }

  get total (): number {
    let total = 0
    for (const count of this.#counts.values()) total += count
    return total
  }

  count (kind: string): number {
    return this.#counts.get(kind) ?? 0
  }

  summary (): Record<string, { count: number, examples: string[] }> {
    const out: Record<string, { count: number, examples: string[] }> = {}
    for (const [kind, count] of this.#counts) out[kind] = { count, examples: this.#examples.get(kind)! }
    return out
  }
}

/** A frame as a reproducer can paste it: text when it decodes cleanly, hex otherwise; clipped. */
export function describeFrame (bytes: Buffer, binary: boolean): string {
  const clip = (s: string): string => s.length > 300 ? `${s.slice(0, 300)}... (${bytes.length} bytes)` : s
  if (!binary) {
    try {
      return 'text ' + clip(JSON.stringify(new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes)))
    } catch {}
  }
  return `${binary ? 'binary' : 'text'} hex ${clip(bytes.toString('hex'))}`
}
