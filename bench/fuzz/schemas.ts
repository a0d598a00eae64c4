/**
 * The inbound messages the fuzz route declares: one TypeBox schema per shape the plugin must
 * hold a payload to (nested objects, arrays, tuples, unions, records, string formats and
 * lengths, integer ranges, optional fields), and `ping`, declared without a payload.
 */
import { FormatRegistry, Type, type TSchema } from '@sinclair/typebox'

// TypeBox refuses every string with a format it does not know, so the formats used below
// are registered; the plugin's compiled checks and the handlers' re-checks read this same
// registry.
const FORMATS: Record<string, (value: string) => boolean> = {
  email: (value) => /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(value),
  uuid: (value) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value),
  'date-time': (value) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(value) && !Number.isNaN(Date.parse(value))
}
for (const [name, check] of Object.entries(FORMATS)) {
  if (!FormatRegistry.Has(name)) FormatRegistry.Set(name, check)
}

export const PAYLOAD_SCHEMAS = {
  profile: Type.Object({
    name: Type.String({ minLength: 1, maxLength: 24 }),
    age: Type.Integer({ minimum: 0, maximum: 150 }),
    email: Type.Optional(Type.String({ format: 'email' })),
    address: Type.Object({
      city: Type.String({ maxLength: 40 }),
      zip: Type.String({ pattern: '^[0-9]{5}$' })
    })
  }, { additionalProperties: false }),
  order: Type.Object({
    id: Type.String({ format: 'uuid' }),
    items: Type.Array(Type.Object({
      sku: Type.String({ pattern: '^[A-Z]{3}-[0-9]{1,4}$' }),
      qty: Type.Integer({ minimum: 1, maximum: 99 })
    }), { minItems: 1, maxItems: 8 }),
    note: Type.Optional(Type.String({ maxLength: 64 }))
  }),
  shape: Type.Union([
    Type.Object({ kind: Type.Literal('circle'), r: Type.Number({ exclusiveMinimum: 0, maximum: 1e6 }) }),
    Type.Object({ kind: Type.Literal('rect'), w: Type.Integer({ minimum: 0 }), h: Type.Integer({ minimum: 0 }) }),
    Type.Object({ kind: Type.Literal('path'), points: Type.Array(Type.Tuple([Type.Number(), Type.Number()]), { maxItems: 16 }) })
  ]),
  tags: Type.Record(
    Type.String({ pattern: '^[a-z]{1,8}$' }),
    Type.Union([Type.String({ maxLength: 16 }), Type.Integer(), Type.Boolean(), Type.Null()]),
    { additionalProperties: false, maxProperties: 6 }
  ),
  at: Type.Union([Type.String({ format: 'date-time' }), Type.Integer({ minimum: 0 }), Type.Null()])
} as const

export type PayloadType = keyof typeof PAYLOAD_SCHEMAS

/**
 * What each message's handler is declared to receive. `ping` is declared with
 * `message(handler)`, whose payload type is `undefined`: that is the schema its handler
 * re-checks against.
 */
export const DECLARED: Readonly<Record<string, TSchema>> = { ...PAYLOAD_SCHEMAS, ping: Type.Undefined() }

export const MESSAGE_TYPES = Object.keys(DECLARED)
