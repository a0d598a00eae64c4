/**
 * How the bench orders its rounds and judges the per-upgrade target from them. Pure
 * functions, kept apart from the orchestrator so that test/bench-rounds.test.ts can check the
 * arithmetic that decides a PASS or a FAIL.
 */

export function median (values: readonly number[]): number | null {
  if (values.length === 0) return null
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

export const ratio = (a: number | null | undefined, b: number | null | undefined): number | null =>
  a === null || a === undefined || b === null || b === undefined || b === 0 ? null : a / b

/**
 * The order of round `r`: it starts r places further along, so no target always runs first
 * or last. The two `paired` targets run back to back, taking turns at running first: the
 * per-upgrade target is judged on their ratio within each round (roundPairedUpgrades), and
 * a server that always ran second would always find the kernel holding the first one's
 * closed connections.
 */
export function roundOrder<T extends { name: string }> (inRound: readonly T[], r: number, paired: readonly string[]): T[] {
  const isPaired = (t: T): boolean => paired.includes(t.name)
  const pair = inRound.filter(isPaired)
  if (r % 2 === 1) pair.reverse()
  // The pair is one unit, where the first of the two stands in the list.
  const firstPaired = inRound.find(isPaired)
  const units = inRound.filter((t) => !isPaired(t) || t === firstPaired).map((t) => isPaired(t) ? pair : [t])
  return units.map((_, i) => units[(i + r) % units.length]!).flat()
}

/** What roundPairedUpgrades reads of a fixed-rate upgrade window. */
export interface UpgradeWindow {
  rate: number
  cpuUsPerUpgrade: number
  /** False when the load generator fell behind the rate. */
  fixedRateHeld: boolean
}

export interface RoundWithUpgrades {
  handshake?: { fixed: readonly UpgradeWindow[] }
}

export interface RoundPairedUpgrades {
  rate: number
  /** The second server's CPU per upgrade over the first's in the same round, one per round where both held the rate. */
  ratios: number[]
  /** Rounds left out because either server's load fell behind the rate (none when no round held it: then all count, as in the medians). */
  roundsLeftOut: number
  /** The median of `ratios`: what the per-upgrade target is judged on. */
  ratio: number | null
}

/**
 * The per-upgrade target compares two servers whose rounds each move by 10-20%, and over a
 * run the machine drifts by as much. Within a round the two run back to back (roundOrder),
 * so a round's ratio sees both under the same drift; the median over rounds is judged.
 */
export function roundPairedUpgrades (base: readonly RoundWithUpgrades[], other: readonly RoundWithUpgrades[], rate: number): RoundPairedUpgrades {
  // A rate listed twice counts its last window, as the medians do.
  const at = (round: RoundWithUpgrades | undefined): UpgradeWindow | undefined => round?.handshake?.fixed.filter((w) => w.rate === rate).pop()
  const pairs: Array<{ held: boolean, ratio: number }> = []
  for (let r = 0; r < Math.min(base.length, other.length); r++) {
    const b = at(base[r])
    const o = at(other[r])
    const value = ratio(o?.cpuUsPerUpgrade, b?.cpuUsPerUpgrade)
    if (value !== null) pairs.push({ held: b!.fixedRateHeld && o!.fixedRateHeld, ratio: value })
  }
  const counted = pairs.some((p) => p.held) ? pairs.filter((p) => p.held) : pairs
  const ratios = counted.map((p) => p.ratio)
  return { rate, ratios, roundsLeftOut: pairs.length - counted.length, ratio: median(ratios) }
}
