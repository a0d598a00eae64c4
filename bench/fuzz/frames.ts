/**
 * The frames a hostile or broken client might send, as fast-check arbitraries: random bytes
 * (text and binary), arbitrary JSON, envelopes whose payloads are valid for their schema or
 * near misses of it (a field of the wrong type or out of range, a missing or extra field,
 * `__proto__` and `constructor.prototype` keys, raw number literals JSON.parse turns into
 * Infinity or -0, lone surrogates), deep nesting, text that is not UTF-8, and frames over the
 * size limits. The oracle, not the generator, decides what each frame must get.
 */
import fc from 'fast-check'
import type { Frame } from './oracle.js'
import { MESSAGE_TYPES } from './schemas.js'
import { MAX_PAYLOAD_BYTES, WS_MAX_PAYLOAD_BYTES } from './server.js'

const text = (s: string): Frame => ({ bytes: Buffer.from(s), binary: false })

/** A payload each declared message accepts, most of the time (the oracle has the last word). */
const VALID: Readonly<Record<string, fc.Arbitrary<unknown>>> = {
  ping: fc.constant(undefined),
  profile: fc.record({
    name: fc.string({ minLength: 1, maxLength: 24 }),
    age: fc.integer({ min: 0, max: 150 }),
    email: fc.emailAddress(),
    address: fc.record({ city: fc.string({ unit: 'binary', maxLength: 40 }), zip: fc.stringMatching(/^[0-9]{5}$/) })
  }, { requiredKeys: ['name', 'age', 'address'] }),
  order: fc.record({
    id: fc.uuid(),
    items: fc.array(fc.record({ sku: fc.stringMatching(/^[A-Z]{3}-[0-9]{1,4}$/), qty: fc.integer({ min: 1, max: 99 }) }), { minLength: 1, maxLength: 8 }),
    note: fc.string({ maxLength: 64 })
  }, { requiredKeys: ['id', 'items'] }),
  shape: fc.oneof(
    fc.record({ kind: fc.constant('circle'), r: fc.double({ min: Number.MIN_VALUE, max: 1e6, noNaN: true }) }),
    fc.record({ kind: fc.constant('rect'), w: fc.nat(), h: fc.maxSafeNat() }),
    fc.record({ kind: fc.constant('path'), points: fc.array(fc.tuple(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.double({ noNaN: true, noDefaultInfinity: true })), { maxLength: 16 }) })
  ),
  tags: fc.dictionary(fc.stringMatching(/^[a-z]{1,8}$/), fc.oneof(fc.string({ maxLength: 16 }), fc.integer(), fc.boolean(), fc.constant(null)), { maxKeys: 6 }),
  at: fc.oneof(fc.date({ noInvalidDate: true }).map((d) => d.toISOString()), fc.maxSafeNat(), fc.constant(null))
}

/** Stands for a raw number literal in the text; no generator makes this string. */
const RAW = '\u0000raw\u0000'
const RAW_JSON = JSON.stringify(RAW)
/** Literals JSON.stringify never writes: they parse to Infinity, -0, 0, or lose precision. */
const RAW_NUMBERS = ['1e400', '-1e400', '1e-400', '-0', '-0.0', '9007199254740993', '123456789012345678901234567890', '1E2', '0.5e1', '4.9e-324', '1.7976931348623157e308', '1.0']
const LONE_SURROGATES = ['\ud800', '\udbff', '\udc00', '\udfff']
const TRICKY_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', 'kind', 'name', 'items', 'type', 'payload', '']
const BOUNDARY_VALUES = [-1, 0, 1.5, 99, 100, 150, 151, 1e6, 1e6 + 1, 2 ** 53, -(2 ** 53), '', 'x'.repeat(25), 'A'.repeat(65), 'circle', 'rect', 'path', '12345', 'ABC-1', null, true, [], {}, [[1, 2]], [1, 2, 3]]

const ACTIONS = ['replace', 'delete', 'extraKey', 'poison', 'wrap', 'rawNumber', 'surrogate'] as const

interface Mutation {
  action: typeof ACTIONS[number]
  at: number
  key: string
  value: unknown
}

const mutationArb: fc.Arbitrary<Mutation> = fc.record({
  action: fc.constantFrom(...ACTIONS),
  at: fc.nat(),
  key: fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom(...TRICKY_KEYS)),
  value: fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constantFrom(...BOUNDARY_VALUES))
})

type Container = Record<string, unknown> | unknown[]
interface Slot { parent: Container, key: string, node: unknown }

const isContainer = (value: unknown): value is Container => value !== null && typeof value === 'object'
const isObject = (value: unknown): value is Record<string, unknown> => isContainer(value) && !Array.isArray(value)

/** Sets an own, enumerable property, also for `__proto__` (which plain assignment would not). */
function defineOwn (target: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true })
}

function slotsOf (root: Container): Slot[] {
  const slots: Slot[] = []
  const queue: Container[] = [root]
  while (queue.length > 0) {
    const parent = queue.shift()!
    for (const key of Object.keys(parent)) {
      const node = (parent as Record<string, unknown>)[key]
      slots.push({ parent, key, node })
      if (isContainer(node)) queue.push(node)
    }
  }
  return slots
}

/** One near miss of a payload: one place in it changed by one action. */
function mutate (payload: unknown, m: Mutation): unknown {
  // Wrapped, so that the payload itself is a slot that can be replaced or deleted.
  const root: Record<string, unknown> = { payload: structuredClone(payload) }
  const slots = slotsOf(root)
  const slot = slots[m.at % slots.length]!
  const set = (value: unknown): void => { (slot.parent as Record<string, unknown>)[slot.key] = value }
  const objectAt = (): Record<string, unknown> => {
    if (isObject(slot.node)) return slot.node
    if (isObject(slot.parent) && slot.parent !== root) return slot.parent
    const fresh = {}
    set(fresh)
    return fresh
  }
  switch (m.action) {
    case 'replace': set(m.value); break
    case 'delete':
      if (Array.isArray(slot.parent)) slot.parent.splice(Number(slot.key), 1)
      else delete slot.parent[slot.key]
      break
    case 'extraKey': defineOwn(objectAt(), m.key, m.value); break
    case 'poison':
      if (m.at % 2 === 0) defineOwn(objectAt(), '__proto__', { polluted: true })
      else defineOwn(objectAt(), 'constructor', { prototype: { polluted: true } })
      break
    case 'wrap': set(m.at % 2 === 0 ? [slot.node] : { value: slot.node }); break
    case 'rawNumber': set(RAW); break
    case 'surrogate': {
      const lone = LONE_SURROGATES[m.at % LONE_SURROGATES.length]!
      const s = typeof slot.node === 'string' ? slot.node : ''
      set(m.at % 3 === 0 ? lone + s : s + lone)
      break
    }
  }
  return root.payload
}

const typeFieldArb = (type: string): fc.Arbitrary<unknown> => fc.oneof(
  { weight: 12, arbitrary: fc.constant(type) },
  { weight: 1, arbitrary: fc.constantFrom(...MESSAGE_TYPES) },
  { weight: 1, arbitrary: fc.string({ maxLength: 10 }) },
  { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'Ping', 'ping ', 'PROFILE', '') },
  { weight: 1, arbitrary: fc.constantFrom<unknown>(0, -1, null, true, ['ping'], {}, { type: 'ping' }) }
)

const LAYOUTS = ['plain', 'plain', 'plain', 'payloadFirst', 'noPayload', 'extra'] as const
const TEXT_VARIANTS = ['plain', 'plain', 'plain', 'plain', 'plain', 'bom', 'escapes', 'spaces', 'truncate', 'duplicateType', 'binary'] as const

interface EnvelopeParts {
  type: unknown
  payload: unknown
  layout: typeof LAYOUTS[number]
  extraKey: string
  extraValue: unknown
  literal: string
  variant: typeof TEXT_VARIANTS[number]
  cut: number
}

function envelopeFrame (parts: EnvelopeParts): Frame {
  const envelope: Record<string, unknown> = {}
  if (parts.layout === 'payloadFirst') envelope.payload = parts.payload
  envelope.type = parts.type
  if (parts.layout === 'plain' || parts.layout === 'extra') envelope.payload = parts.payload
  if (parts.layout === 'extra') defineOwn(envelope, parts.extraKey, parts.extraValue)
  let s = JSON.stringify(envelope).split(RAW_JSON).join(parts.literal)
  switch (parts.variant) {
    case 'bom': s = '\uFEFF' + s; break
    // The plugin must find forbidden keys however they are spelled.
    case 'escapes': s = s.replaceAll('"__proto__"', '"\\u005f_proto__"').replaceAll('"constructor"', '"\\u0063onstructor"').replaceAll('"type"', '"\\u0074ype"'); break
    case 'spaces': s = ` \n\t${s}\r\n `; break
    case 'truncate': s = s.slice(0, parts.cut % s.length); break
    // JSON.parse keeps the last of two equal keys.
    case 'duplicateType': s = '{"type":0,' + s.slice(1); break
    case 'binary': return { bytes: Buffer.from(s), binary: true }
  }
  return text(s)
}

const envelopeArb = (type: string, payload: fc.Arbitrary<unknown>): fc.Arbitrary<Frame> => fc.record({
  type: typeFieldArb(type),
  payload,
  layout: fc.constantFrom(...LAYOUTS),
  extraKey: fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom(...TRICKY_KEYS)),
  extraValue: fc.jsonValue({ maxDepth: 1 }),
  literal: fc.constantFrom(...RAW_NUMBERS),
  variant: fc.constantFrom(...TEXT_VARIANTS),
  cut: fc.nat()
}).map(envelopeFrame)

const perType = (payloadOf: (type: string) => fc.Arbitrary<unknown>): fc.Arbitrary<Frame> =>
  fc.oneof(...MESSAGE_TYPES.map((type) => envelopeArb(type, payloadOf(type))))

/** JSON one character away from valid: cut, or with a stray character in it. */
const mangledJsonArb = fc.record({
  json: fc.json({ maxDepth: 2 }),
  at: fc.nat(),
  edit: fc.constantFrom('', ',', '}', ']', '"', '\\', 'x', ' ', '\u0000', '\ud800')
}).map(({ json, at, edit }) => {
  const i = at % (json.length + 1)
  return text(json.slice(0, i) + edit + json.slice(edit === '' ? i + 1 : i))
})

/** Nesting as deep as the frame limit allows: the checks must not recurse their way into a stack overflow. */
const deepArb = fc.record({
  depth: fc.integer({ min: 32, max: 4000 }),
  type: fc.constantFrom(...MESSAGE_TYPES),
  open: fc.constantFrom('[', '{"a":', '{"__proto__":')
}).map(({ depth, type, open }) => {
  const head = `{"type":${JSON.stringify(type)},"payload":`
  const close = open === '[' ? ']' : '}'
  const fits = Math.floor((MAX_PAYLOAD_BYTES - head.length - 2) / (open.length + close.length))
  const n = Math.min(depth, fits)
  return text(head + open.repeat(n) + '1' + close.repeat(n) + '}')
})

/** Byte sequences that are not UTF-8: a stray continuation, an overlong form, a surrogate, past U+10FFFF, a cut sequence. */
const NOT_UTF8 = [[0xff], [0x80], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]]

const notUtf8Arb = fc.oneof(
  fc.uint8Array({ minLength: 1, maxLength: 64 }).map((bytes) => ({ bytes: Buffer.from(bytes), binary: false })),
  fc.record({ at: fc.nat(), bad: fc.constantFrom(...NOT_UTF8) }).map(({ at, bad }) => {
    const good = Buffer.from('{"type":"ping","payload":"abc"}')
    const i = at % good.length
    return { bytes: Buffer.concat([good.subarray(0, i), Buffer.from(bad), good.subarray(i)]), binary: false }
  })
)

/** Over the fuzz route's limit (the plugin's 1009), or over ws's as well (ws's 1009). */
const oversizeArb = fc.record({
  size: fc.oneof(fc.integer({ min: MAX_PAYLOAD_BYTES + 1, max: WS_MAX_PAYLOAD_BYTES }), fc.integer({ min: WS_MAX_PAYLOAD_BYTES + 1, max: 3 * MAX_PAYLOAD_BYTES })),
  binary: fc.boolean()
}).map(({ size, binary }) => {
  const head = '{"type":"ping","payload":"'
  return { bytes: Buffer.from(head + 'x'.repeat(size - head.length - 2) + '"}'), binary }
})

/**
 * Every frame kind, weighted: mostly envelopes (the path that reaches handlers), some of
 * everything else; about 1% end the connection, as each one costs a reconnect.
 */
export const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  { weight: 50, arbitrary: perType((type) => VALID[type]!) },
  { weight: 70, arbitrary: perType((type) => fc.tuple(VALID[type]!, mutationArb).map(([payload, m]) => mutate(payload, m))) },
  { weight: 15, arbitrary: perType(() => fc.jsonValue({ maxDepth: 3 })) },
  { weight: 10, arbitrary: fc.json({ maxDepth: 4 }).map(text) },
  { weight: 10, arbitrary: mangledJsonArb },
  {
    weight: 10,
    arbitrary: fc.anything({ maxDepth: 3, withNullPrototype: true, withObjectString: true, withSparseArray: true, stringUnit: 'binary' })
      .map((value) => text(JSON.stringify(value) ?? ''))
  },
  { weight: 5, arbitrary: fc.string({ unit: 'binary', maxLength: 200 }).map(text) },
  { weight: 10, arbitrary: fc.uint8Array({ maxLength: 512 }).map((bytes) => ({ bytes: Buffer.from(bytes), binary: true })) },
  { weight: 8, arbitrary: deepArb },
  { weight: 1, arbitrary: notUtf8Arb },
  { weight: 1, arbitrary: oversizeArb }
)

/** An endless, seeded stream of frames, generated a batch at a time. */
export function * frameStream (seed: number, batchSize = 1000): Generator<Frame, never> {
  for (let batch = 0; ; batch++) {
    yield * fc.sample(frameArb, { seed: (seed + batch) | 0, numRuns: batchSize })
  }
}
