/**
 * What the server must answer to one frame, worked out on the client side from the plugin's
 * documented order of checks (README, "Messages"), independently of lib/: the exact reply, or
 * the exact close. Every frame has exactly one right outcome; the driver compares.
 */
import { Value } from '@sinclair/typebox/value'
import { DECLARED } from './schemas.js'
import { MAX_PAYLOAD_BYTES } from './server.js'

export interface Frame {
  readonly bytes: Buffer
  readonly binary: boolean
}

export type OutcomeKind =
  | 'reply'
  | 'error:invalid-json'
  | 'error:invalid-envelope'
  | 'error:forbidden-key'
  | 'error:unknown-type'
  | 'error:invalid-payload'
  | 'error:binary-frame'
  | 'close:1009 by ws'
  | 'close:1007 not UTF-8'
  // Not aimed at: the limits are set so that these do not happen, but they are defined outcomes.
  | 'error:rate-limited'
  | 'close:1008 rate limited'

/** The outcomes the generators aim for; a short run must see each at least once. */
export const AIMED_OUTCOMES: readonly OutcomeKind[] = [
  'reply', 'error:invalid-json', 'error:invalid-envelope', 'error:forbidden-key', 'error:unknown-type',
  'error:invalid-payload', 'error:binary-frame', 'close:1009 by ws', 'close:1007 not UTF-8'
]

export type Expected =
  | { readonly kind: OutcomeKind, readonly reply: Readonly<Record<string, string>> }
  | { readonly kind: OutcomeKind, readonly close: { readonly code: number, readonly reason: string } }

/** The error texts, as README's table gives them. */
const ERROR_MESSAGES = {
  invalidJson: 'Invalid JSON',
  forbiddenKey: 'Invalid message: forbidden property name',
  binaryFrame: 'Binary frames are not supported',
  invalidEnvelope: 'A message must be a JSON object with a string "type"',
  unknownType: 'Unknown message type',
  invalidPayload: 'Invalid payload',
  noPayload: 'Invalid payload: this message takes no payload'
} as const
export const RATE_LIMITED_MESSAGE = 'Rate limit exceeded. Connection closed.'

/** Whether an error text is one README documents; anything else may carry an exception's own text. */
export function isDocumentedError (message: string): boolean {
  return Object.values(ERROR_MESSAGES).includes(message as never) ||
    message === RATE_LIMITED_MESSAGE || message === 'Forbidden' || message === 'Internal server error' ||
    /^Invalid payload: \/\S* \S/.test(message)
}

const error = (kind: OutcomeKind, message: string): Expected => ({ kind, reply: { type: 'error', message } })
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

function isUtf8 (bytes: Buffer): boolean {
  try {
    strictUtf8.decode(bytes)
    return true
  } catch {
    return false
  }
}

/** secure-json-parse's rule, written out: an own `__proto__` key, or `constructor` holding an object with an own `prototype`. */
function hasForbiddenKey (value: unknown): boolean {
  const stack = [value]
  while (stack.length > 0) {
    const node = stack.pop()
    if (node === null || typeof node !== 'object') continue
    if (Object.hasOwn(node, '__proto__')) return true
    const ctor = Object.hasOwn(node, 'constructor') ? (node as { constructor: unknown }).constructor : undefined
    if (ctor !== null && typeof ctor === 'object' && Object.hasOwn(ctor, 'prototype')) return true
    for (const key of Object.keys(node)) stack.push((node as Record<string, unknown>)[key])
  }
  return false
}

export function expectedOutcome (frame: Frame): Expected {
  const { bytes, binary } = frame
  // ws refuses a frame over the route's limit from the header (the plugin gives each secured
  // socket its route's limit), and text that is not UTF-8 once it has it, before the plugin
  // sees either.
  if (bytes.length > MAX_PAYLOAD_BYTES) return { kind: 'close:1009 by ws', close: { code: 1009, reason: '' } }
  if (!binary && !isUtf8(bytes)) return { kind: 'close:1007 not UTF-8', close: { code: 1007, reason: '' } }
  if (binary) return error('error:binary-frame', ERROR_MESSAGES.binaryFrame)
  let text = bytes.toString()
  if (text.startsWith('\uFEFF')) text = text.slice(1)
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return error('error:invalid-json', ERROR_MESSAGES.invalidJson)
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return error('error:invalid-envelope', ERROR_MESSAGES.invalidEnvelope)
  if (hasForbiddenKey(value)) return error('error:forbidden-key', ERROR_MESSAGES.forbiddenKey)
  const { type, payload } = value as { type?: unknown, payload?: unknown }
  if (typeof type !== 'string') return error('error:invalid-envelope', ERROR_MESSAGES.invalidEnvelope)
  if (!Object.hasOwn(DECLARED, type)) return error('error:unknown-type', ERROR_MESSAGES.unknownType)
  // `ping` is declared without a schema: it takes no payload at all.
  if (type === 'ping') {
    if (payload !== undefined) return error('error:invalid-payload', ERROR_MESSAGES.noPayload)
    return { kind: 'reply', reply: { type: 'accepted', of: type, payload: 'undefined' } }
  }
  const schema = DECLARED[type]
  if (schema !== undefined && !Value.Check(schema, payload)) {
    const first = Value.Errors(schema, payload).First()
    const where = first === undefined ? '' : `: ${first.path === '' ? '/' : first.path} ${first.message}`
    return error('error:invalid-payload', `${ERROR_MESSAGES.invalidPayload}${where}`)
  }
  return { kind: 'reply', reply: { type: 'accepted', of: type, payload: JSON.stringify(payload) ?? 'undefined' } }
}
