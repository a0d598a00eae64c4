import t from 'tap'
import { median, roundOrder, roundPairedUpgrades, type RoundWithUpgrades } from '../bench/rounds.js'

const PAIR = ['baseline', 'secure']
const targets = ['ws', 'baseline', 'secure', 'secure-redis', 'socketio'].map((name) => ({ name }))
const names = (list: Array<{ name: string }>): string => list.map((t) => t.name).join(' ')

t.test('roundOrder: the pair runs back to back, each of the two first in every other round', async (t) => {
  t.equal(names(roundOrder(targets, 0, PAIR)), 'ws baseline secure secure-redis socketio')
  t.equal(names(roundOrder(targets, 1, PAIR)), 'secure baseline secure-redis socketio ws')
  t.equal(names(roundOrder(targets, 2, PAIR)), 'secure-redis socketio ws baseline secure')
  t.equal(names(roundOrder(targets, 3, PAIR)), 'socketio ws secure baseline secure-redis')
  const pairOnly = targets.filter((x) => PAIR.includes(x.name))
  t.equal(names(roundOrder(pairOnly, 2, PAIR)), 'baseline secure')
  t.equal(names(roundOrder(pairOnly, 3, PAIR)), 'secure baseline')
  for (let r = 0; r < 8; r++) {
    const order = names(roundOrder(targets, r, PAIR))
    t.ok(order.includes('baseline secure') || order.includes('secure baseline'), `round ${r}: adjacent in "${order}"`)
    t.equal(roundOrder(targets, r, PAIR).length, targets.length, `round ${r}: every target once`)
  }
  t.equal(names(roundOrder([{ name: 'ws' }, { name: 'socketio' }], 1, PAIR)), 'socketio ws', 'without the pair, a plain rotation')
  t.equal(names(targets), 'ws baseline secure secure-redis socketio', 'the list given is left as it was')
})

function round (cpuUsPerUpgrade: number, fixedRateHeld = true, rate = 800): RoundWithUpgrades {
  return { handshake: { fixed: [{ rate, cpuUsPerUpgrade, fixedRateHeld }, { rate: 300, cpuUsPerUpgrade: 9999, fixedRateHeld: true }] } }
}

t.test('roundPairedUpgrades: the median of each round\'s own ratio, not the ratio of the medians', async (t) => {
  // Drift hits both servers of a round alike: every round has the second one 10% dearer.
  const base = [500, 700, 600, 800].map((us) => round(us))
  const other = [550, 770, 660, 880].map((us) => round(us))
  const paired = roundPairedUpgrades(base, other, 800)
  t.same(paired.ratios.map((r) => Number(r.toFixed(6))), [1.1, 1.1, 1.1, 1.1])
  t.equal(Number(paired.ratio!.toFixed(6)), 1.1)
  t.equal(paired.roundsLeftOut, 0)

  // The same numbers matched across rounds differently give a different answer: pairs matter.
  const shuffled = roundPairedUpgrades(base, [880, 550, 770, 660].map((us) => round(us)), 800)
  t.not(Number(shuffled.ratio!.toFixed(6)), 1.1)
})

t.test('roundPairedUpgrades: rounds where the load fell behind are left out and counted', async (t) => {
  const base = [round(500), round(600, false), round(700)]
  const other = [round(600), round(600), round(700, false)]
  const paired = roundPairedUpgrades(base, other, 800)
  t.same(paired.ratios, [1.2])
  t.equal(paired.roundsLeftOut, 2)
  t.equal(paired.ratio, 1.2)
})

t.test('roundPairedUpgrades: when no round held the rate, every round counts, as in the medians', async (t) => {
  const paired = roundPairedUpgrades([round(500, false), round(600)], [round(550), round(720, false)], 800)
  t.same(paired.ratios.map((r) => Number(r.toFixed(6))), [1.1, 1.2])
  t.equal(paired.roundsLeftOut, 0)
})

t.test('roundPairedUpgrades: no window at the rate, no ratio; a rate run twice counts its last window', async (t) => {
  t.equal(roundPairedUpgrades([round(500)], [round(600)], 250).ratio, null)
  t.equal(roundPairedUpgrades([{}], [round(600)], 800).ratio, null)
  const twice = (first: number, last: number): RoundWithUpgrades => ({ handshake: { fixed: [{ rate: 300, cpuUsPerUpgrade: first, fixedRateHeld: true }, { rate: 300, cpuUsPerUpgrade: last, fixedRateHeld: true }] } })
  t.equal(roundPairedUpgrades([twice(100, 400)], [twice(900, 600)], 300).ratio, 1.5)
})

t.test('median', async (t) => {
  t.equal(median([]), null)
  t.equal(median([3, 1, 2]), 2)
  t.equal(median([4, 1, 3, 2]), 2.5)
})
