/**
 * Turns what the attack run recorded into figures, pass/fail lines and the printed table.
 * Everything here is arithmetic on the record; nothing is measured.
 */
import { FLOOD_KINDS, type PhaseCounts, type UserSample } from './protocol.js'

/** The targets the plugin is being changed to meet (see bench/README.md, "Attack run"). */
export const TARGETS = {
  floodDescriptorsAboveBaseline: 300,
  legitWorstConnectMs: 50,
  cpuUsPerRefusedUpgrade: 225,
  cpuUsPer429: 45,
  shutdownSeconds: 5
} as const

/** The example's default WS_MAX_AUTH_FAILURES_PER_MINUTE. */
export const AUTH_FAILURES_BEFORE_LOCKOUT = 30

/** A phase's refusals are "mostly 101" when at least this share of them were 101-then-close. */
const PURE_SHARE = 0.9

export interface ProcSample {
  at: number
  fds: number
  cpuSeconds: number
  rssBytes: number
  floodOpen: number
  floodInFlight: number
  floodCpuSeconds: number
}

export interface Window {
  name: string
  startAt: number
  endAt: number
  cpuStart: number
  cpuEnd: number
  logStart: number
  logEnd: number
  counts?: PhaseCounts
}

export interface Shutdown {
  /** When SIGTERM was sent (Date.now()). */
  at: number
  floodOpenAtSigterm: number
  exitCode: number | null
  signal: string | null
  seconds: number | null
  /** True when the server did not exit in time and was killed by the run. */
  killed: boolean
}

export interface RunRecord {
  samples: ProcSample[]
  windows: Window[]
  user: UserSample[]
  shutdown: Shutdown
}

export interface LegitFigures {
  attempts: number
  failures: number
  errors: string[]
  pongs: number
  connectP50Ms: number | null
  connectMaxMs: number | null
  pongMaxMs: number | null
}

export interface PhaseFigures {
  name: string
  seconds: number
  what: string
  from: string | null
  attempts: number
  refused101: number
  refused429: number
  otherStatuses: Record<string, number>
  noResponse: number
  errors: Record<string, number>
  closeCodes: Record<string, number>
  retryAfter: PhaseCounts['retryAfter']
  endedByServer: PhaseCounts['endedByServer'] | null
  floodOpenMax: number
  capReachedAfterMs: number | null
  serverFdsMax: number
  serverRssMaxBytes: number
  cpuSeconds: number
  /** cpuSeconds less the baseline's rate (the legitimate user and idle timers) over the window. */
  cpuSecondsNet: number
  /** CPU per refused upgrade (101-then-close and 429 together), us. */
  cpuUsPerRefused: number | null
  logBytesPerRefused: number | null
  legit: LegitFigures
}

export interface Check {
  name: string
  pass: boolean
  value: string
  target: string
}

export interface Results {
  baseline: { seconds: number, serverFds: number, cpuPercent: number, legit: LegitFigures }
  phases: PhaseFigures[]
  flood: {
    serverFdsMax: number
    serverFdsAboveBaseline: number
    floodOpenMax: number
    serverRssMaxBytes: number
    cpuUsPerRefusedUpgrade: number | null
    cpuUsPerRefusedUpgradeFrom: string
    cpuUsPer429: number | null
    cpuUsPer429From: string
    http429: number
    legit: LegitFigures
  }
  shutdown: Shutdown
  targets: Check[]
  contractChecks: Check[]
}

function median (values: number[]): number | null {
  if (values.length === 0) return null
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

function max (values: number[]): number {
  return values.reduce((a, b) => Math.max(a, b), 0)
}

function inWindow<T extends { at: number }> (items: T[], startAt: number, endAt: number): T[] {
  return items.filter((item) => item.at >= startAt && item.at < endAt)
}

function legitFigures (samples: UserSample[]): LegitFigures {
  const failed = samples.filter((s) => s.error !== null || s.connectMs === null)
  const connects = samples.flatMap((s) => s.connectMs === null ? [] : [s.connectMs])
  const pongs = samples.flatMap((s) => s.pongMs === null ? [] : [s.pongMs])
  return {
    attempts: samples.length,
    failures: failed.length,
    errors: [...new Set(failed.map((s) => s.error ?? 'no open'))].slice(0, 5),
    pongs: pongs.length,
    connectP50Ms: median(connects),
    connectMaxMs: connects.length === 0 ? null : max(connects),
    pongMaxMs: pongs.length === 0 ? null : max(pongs)
  }
}

function phaseFigures (w: Window, record: RunRecord, baselineCpuRate: number): PhaseFigures {
  const c = w.counts!
  const seconds = (w.endAt - w.startAt) / 1000
  const refused101 = c.statuses['101'] ?? 0
  const refused429 = c.statuses['429'] ?? 0
  const refused = refused101 + refused429
  const otherStatuses = Object.fromEntries(Object.entries(c.statuses).filter(([status]) => status !== '101' && status !== '429'))
  const samples = inWindow(record.samples, w.startAt, w.endAt)
  const cpuSeconds = w.cpuEnd - w.cpuStart
  const cpuSecondsNet = cpuSeconds - baselineCpuRate * seconds
  return {
    name: w.name,
    seconds,
    what: FLOOD_KINDS[c.kind],
    from: c.localAddress,
    attempts: c.attempts,
    refused101,
    refused429,
    otherStatuses,
    noResponse: c.noResponse,
    errors: c.errors,
    closeCodes: c.closeCodes,
    retryAfter: c.retryAfter,
    endedByServer: null,
    floodOpenMax: c.maxOpen,
    capReachedAfterMs: c.capReachedAfterMs,
    serverFdsMax: max(samples.map((s) => s.fds)),
    serverRssMaxBytes: max(samples.map((s) => s.rssBytes)),
    cpuSeconds,
    cpuSecondsNet,
    cpuUsPerRefused: refused === 0 ? null : cpuSecondsNet / refused * 1e6,
    logBytesPerRefused: refused === 0 ? null : (w.logEnd - w.logStart) / refused,
    legit: legitFigures(inWindow(record.user, w.startAt, w.endAt))
  }
}

const fmt = (n: number | null | undefined, digits = 0): string =>
  n === null || n === undefined || !Number.isFinite(n) ? '-' : n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })

export function analyse (record: RunRecord, lastCounts: PhaseCounts[]): Results {
  const [baselineWindow, ...floodWindows] = record.windows
  const b = baselineWindow!
  const baselineSeconds = (b.endAt - b.startAt) / 1000
  const baselineCpuRate = (b.cpuEnd - b.cpuStart) / baselineSeconds
  const baselineFds = median(inWindow(record.samples, b.startAt, b.endAt).map((s) => s.fds)) ?? 0
  const phases = floodWindows.map((w) => {
    const figures = phaseFigures(w, record, baselineCpuRate)
    // Lifetimes come from the generator's last snapshot, which saw the server end its sockets.
    figures.endedByServer = lastCounts.find((c) => c.phase === w.name)?.endedByServer ?? null
    return figures
  })

  const floodStart = floodWindows[0]!.startAt
  const floodEnd = floodWindows[floodWindows.length - 1]!.endAt
  // Until SIGTERM (the last sample before the server exited), so the shutdown counts too.
  const floodSamples = record.samples.filter((s) => s.at >= floodStart)
  const serverFdsMax = max(floodSamples.map((s) => s.fds))

  // CPU per 101-then-close refusal: from each phase whose refusals were mostly that kind.
  const mostly101 = phases.filter((p) => p.cpuUsPerRefused !== null && p.refused101 >= PURE_SHARE * (p.refused101 + p.refused429))
  const per101 = mostly101.length === 0 ? null : Math.max(...mostly101.map((p) => p.cpuUsPerRefused!))
  // CPU per 429: the phase with the most 429s, less its few 101s at the cost just found.
  const with429 = [...phases].sort((a, b) => b.refused429 - a.refused429)[0]
  const per429 = with429 === undefined || with429.refused429 === 0
    ? null
    : (with429.cpuSecondsNet - with429.refused101 * (per101 ?? 0) / 1e6) / with429.refused429 * 1e6
  const http429 = phases.reduce((sum, p) => sum + p.refused429, 0)
  const legit = legitFigures(inWindow(record.user, floodStart, floodEnd))
  const fdsAbove = serverFdsMax - baselineFds
  const { shutdown } = record

  const targets: Check[] = [
    {
      name: 'flood descriptors',
      pass: fdsAbove <= TARGETS.floodDescriptorsAboveBaseline,
      value: `${fmt(serverFdsMax)} max, ${fmt(fdsAbove)} above the baseline ${fmt(baselineFds)}`,
      target: `<= ${TARGETS.floodDescriptorsAboveBaseline} above baseline`
    },
    {
      name: 'legit worst connect',
      pass: legit.failures === 0 && legit.connectMaxMs !== null && legit.connectMaxMs < TARGETS.legitWorstConnectMs,
      value: `${fmt(legit.connectMaxMs, 1)} ms worst, ${fmt(legit.connectP50Ms, 1)} ms median, ${legit.failures} failed of ${legit.attempts}${legit.errors.length > 0 ? ` (${legit.errors.join('; ')})` : ''}`,
      target: `< ${TARGETS.legitWorstConnectMs} ms, none failed`
    },
    {
      name: 'CPU per refused upgrade',
      pass: per101 !== null && per101 <= TARGETS.cpuUsPerRefusedUpgrade,
      value: per101 === null ? 'no phase was mostly 101-then-close' : `${fmt(per101)} us (worst of ${mostly101.map((p) => `${p.name} ${fmt(p.cpuUsPerRefused)}`).join(', ')})`,
      target: `<= ${TARGETS.cpuUsPerRefusedUpgrade} us`
    },
    {
      name: 'CPU per locked-out attempt (429)',
      pass: per429 !== null && per429 <= TARGETS.cpuUsPer429,
      value: per429 === null ? 'no 429 answered: no lockout' : `${fmt(per429, 1)} us (${with429!.name}, ${fmt(with429!.refused429)} x 429)`,
      target: `<= ${TARGETS.cpuUsPer429} us`
    },
    {
      name: 'SIGTERM under flood',
      pass: shutdown.exitCode === 0 && !shutdown.killed && shutdown.seconds !== null && shutdown.seconds <= TARGETS.shutdownSeconds && shutdown.floodOpenAtSigterm > 0,
      value: `${shutdown.killed ? `still running after ${fmt(shutdown.seconds, 2)} s, killed` : `exit ${shutdown.exitCode ?? shutdown.signal} after ${fmt(shutdown.seconds, 2)} s`}, ${fmt(shutdown.floodOpenAtSigterm)} flood sockets open at SIGTERM`,
      target: `exit 0 within ${TARGETS.shutdownSeconds} s, flood sockets open`
    }
  ]

  const contractChecks: Check[] = []
  const tokenPhase = phases.find((p) => p.what === FLOOD_KINDS.badToken)
  if (tokenPhase !== undefined) {
    contractChecks.push({
      name: 'lockout after 30 failures',
      pass: tokenPhase.refused101 === AUTH_FAILURES_BEFORE_LOCKOUT && tokenPhase.refused429 > 0,
      value: `${fmt(tokenPhase.refused101)} x 101 (close ${Object.entries(tokenPhase.closeCodes).map(([code, n]) => `${code}: ${fmt(n)}`).join(', ') || '-'}), then ${fmt(tokenPhase.refused429)} x 429`,
      target: `${AUTH_FAILURES_BEFORE_LOCKOUT} x 4401, the rest 429`
    })
    const retry = tokenPhase.retryAfter
    contractChecks.push({
      name: '429 carries Retry-After',
      pass: retry !== null && retry.missing === 0 && retry.min >= 1 && retry.max <= 60,
      value: retry === null ? 'no 429' : `${fmt(retry.min)}-${fmt(retry.max)} s, missing on ${fmt(retry.missing)}`,
      target: 'on every 429, 1-60 s'
    })
  }
  const originPhase = phases.find((p) => p.what === FLOOD_KINDS.badOrigin)
  if (originPhase !== undefined) {
    contractChecks.push({
      name: 'origin refusals never lock out',
      pass: originPhase.refused429 === 0 && originPhase.refused101 > AUTH_FAILURES_BEFORE_LOCKOUT && (originPhase.closeCodes['1008'] ?? 0) > 0,
      value: `${fmt(originPhase.refused101)} x 101 (close ${Object.entries(originPhase.closeCodes).map(([code, n]) => `${code}: ${fmt(n)}`).join(', ') || '-'}), ${fmt(originPhase.refused429)} x 429`,
      target: 'all 101 + 1008, no 429'
    })
  }

  return {
    baseline: { seconds: baselineSeconds, serverFds: baselineFds, cpuPercent: baselineCpuRate * 100, legit: legitFigures(inWindow(record.user, b.startAt, b.endAt)) },
    phases,
    flood: {
      serverFdsMax,
      serverFdsAboveBaseline: fdsAbove,
      floodOpenMax: max(floodSamples.map((s) => s.floodOpen)),
      serverRssMaxBytes: max(floodSamples.map((s) => s.rssBytes)),
      cpuUsPerRefusedUpgrade: per101,
      cpuUsPerRefusedUpgradeFrom: mostly101.map((p) => p.name).join(', '),
      cpuUsPer429: per429,
      cpuUsPer429From: with429?.refused429 ? with429.name : '',
      http429,
      legit
    },
    shutdown,
    targets,
    contractChecks
  }
}

function table (header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join('  ')
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n')
}

const mb = (bytes: number): string => fmt(bytes / 1048576)

/** One row per second: the flood's open sockets against the server's descriptors and CPU. */
export function timeline (record: RunRecord): string {
  const t0 = record.windows[0]!.startAt
  const rows: string[][] = []
  let previous: ProcSample | undefined
  for (const sample of record.samples) {
    if (previous !== undefined && Math.floor((sample.at - t0) / 1000) === Math.floor((previous.at - t0) / 1000)) continue
    if (sample.at < t0) {
      previous = sample
      continue
    }
    const window = [...record.windows].reverse().find((w) => sample.at >= w.startAt)
    const label = sample.at >= record.shutdown.at ? 'SIGTERM+' : sample.at > (window?.endAt ?? 0) ? `${window?.name ?? ''}+` : window?.name ?? ''
    const seconds = previous === undefined ? 0 : (sample.at - previous.at) / 1000
    const cpu = previous === undefined ? null : (sample.cpuSeconds - previous.cpuSeconds) / seconds * 100
    const floodCpu = previous === undefined ? null : (sample.floodCpuSeconds - previous.floodCpuSeconds) / seconds * 100
    const legit = record.user.filter((u) => previous !== undefined && u.at >= previous.at && u.at < sample.at)
    const worst = legit.flatMap((u) => u.connectMs === null ? [] : [u.connectMs])
    rows.push([
      fmt((sample.at - t0) / 1000, 1),
      label,
      fmt(sample.floodOpen),
      fmt(sample.floodInFlight),
      fmt(floodCpu),
      fmt(sample.fds),
      fmt(cpu),
      mb(sample.rssBytes),
      `${legit.length}`,
      fmt(worst.length === 0 ? null : max(worst), 1),
      `${legit.filter((u) => u.error !== null).length}`
    ])
    previous = sample
  }
  return table(['t s', 'phase', 'flood open', 'in flight', 'flood CPU %', 'server fds', 'server CPU %', 'RSS MB', 'legit n', 'worst ms', 'failed'], rows)
}

export function summary (results: Results): string {
  const b = results.baseline
  const rows: string[][] = [[
    'baseline', fmt(b.seconds, 1), 'legit user only', '-', '-', '-', '-', fmt(b.serverFds), '-', '-', '-',
    fmt(b.legit.connectP50Ms, 1), fmt(b.legit.connectMaxMs, 1), `${b.legit.failures}/${b.legit.attempts}`
  ]]
  for (const p of results.phases) {
    const other = Object.entries(p.otherStatuses).map(([s, n]) => `${s}:${n}`).concat(p.noResponse > 0 ? [`none:${p.noResponse}`] : [])
    rows.push([
      p.name, fmt(p.seconds, 1), `${p.what} from ${p.from}`, fmt(p.attempts), fmt(p.refused101), fmt(p.refused429), other.join(' ') || '0',
      fmt(p.serverFdsMax), fmt(p.floodOpenMax), fmt(p.cpuSecondsNet * 1000), fmt(p.cpuUsPerRefused),
      fmt(p.legit.connectP50Ms, 1), fmt(p.legit.connectMaxMs, 1), `${p.legit.failures}/${p.legit.attempts}`
    ])
  }
  const lines = [table(['phase', 's', 'flood', 'upgrades', '101', '429', 'other', 'fds max', 'open max', 'CPU ms', 'us/refused', 'legit p50', 'legit max', 'failed'], rows)]
  for (const p of results.phases) {
    const ended = Object.entries(p.endedByServer ?? {}).map(([status, l]) => `after ${status}: ${fmt(l.count)} (p50 ${fmt(l.p50)} ms, max ${fmt(l.max)} ms)`).join('; ')
    const cap = p.capReachedAfterMs === null ? '' : `held its cap of ${fmt(p.floodOpenMax)} open sockets after ${fmt(p.capReachedAfterMs / 1000, 1)} s, then opened only as the server ended some; `
    lines.push(`${p.name}: ${cap}close codes ${Object.entries(p.closeCodes).map(([code, n]) => `${code}: ${fmt(n)}`).join(', ') || '-'}; ended by the server before SIGTERM ${ended || 'none'}; errors ${Object.entries(p.errors).map(([code, n]) => `${code}: ${fmt(n)}`).join(', ') || 'none'}; ${fmt(p.logBytesPerRefused)} log bytes per refusal; server RSS max ${mb(p.serverRssMaxBytes)} MB`)
  }
  const line = (c: Check): string => `${c.pass ? 'PASS' : 'FAIL'}  ${c.name.padEnd(34)} ${c.value}  (target ${c.target})`
  lines.push('', 'targets', ...results.targets.map(line))
  if (results.contractChecks.length > 0) lines.push('', 'contract checks', ...results.contractChecks.map(line))
  return lines.join('\n')
}

/** JSON indented by two, except that an array of numbers (a timeline row) stays on one line. */
export function toJson (value: unknown): string {
  return JSON.stringify(value, null, 2).replace(/\[\s+(-?[\d.e+-]+(?:,\s+-?[\d.e+-]+)*)\s+\]/g, (_match, list: string) => `[${list.split(/,\s+/).join(', ')}]`)
}
