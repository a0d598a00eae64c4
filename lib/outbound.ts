import type { TObject } from '@sinclair/typebox'
import fastJson from 'fast-json-stringify'
import { InvalidRouteError } from './errors.js'
import type { ObjectSchemaLike, OutboundSchemas, OutboundSerializer } from './types.js'

function hasOpenObject (schema: unknown): boolean {
  if (typeof schema !== 'object' || schema === null) return false
  const s = schema as Record<string, unknown>
  if (s.additionalProperties !== undefined && s.additionalProperties !== false) return true
  if (s.patternProperties !== undefined) return true
  return Object.values(s).some((child) => typeof child === 'object' && hasOpenObject(child))
}

// A schema with none of these (Type.Any, Type.Unknown) makes fast-json-stringify write the
// value whole, so an object given there would carry every field, secrets included.
const CONSTRAINING_KEYWORDS = ['type', 'const', 'enum', 'anyOf', 'oneOf', 'allOf', '$ref']

/** True when some value the schema writes (a field, an array item, a union member) is unconstrained. */
function hasUnconstrainedValue (schema: unknown, writesValue = true): boolean {
  if (schema === true) return true
  if (typeof schema !== 'object' || schema === null) return false
  const s = schema as Record<string, unknown>
  // allOf members are merged into one schema, so a member alone need not say what it writes.
  if (writesValue && !CONSTRAINING_KEYWORDS.some((keyword) => s[keyword] !== undefined)) return true
  const isArray = s.type === 'array' || (Array.isArray(s.type) && s.type.includes('array'))
  if (writesValue && isArray && s.items === undefined && s.prefixItems === undefined) return true
  const written: unknown[] = []
  if (typeof s.properties === 'object' && s.properties !== null) written.push(...Object.values(s.properties))
  for (const keyword of ['items', 'prefixItems', 'anyOf', 'oneOf']) {
    const child = s[keyword]
    if (Array.isArray(child)) written.push(...child)
    else if (child !== undefined) written.push(child)
  }
  const merged = Array.isArray(s.allOf) ? s.allOf : []
  return written.some((child) => hasUnconstrainedValue(child)) || merged.some((child) => hasUnconstrainedValue(child, false))
}

function compileSerializer (type: string, schema: ObjectSchemaLike): OutboundSerializer {
  // The type is known here, so write it once as a prefix rather than copy every body to add it.
  const prefix = '{"type":' + JSON.stringify(type)
  // `prefix + '}'` as one flat string rather than a concatenation: Node measures and writes a
  // flat one-byte string on its fast path, at every send.
  const bare = JSON.stringify({ type })
  if (Object.keys(schema.properties ?? {}).length === 0) return () => bare
  // The shape was checked by compileOutbound; fast-json-stringify reads it as JSON Schema.
  const body = fastJson(schema as unknown as TObject)
  return (value) => {
    const json = body(value)
    return json.length === 2 ? bare : prefix + ',' + json.slice(1)
  }
}

const ERROR_SCHEMA = { type: 'object', properties: { message: { type: 'string' } }, required: ['message'] } as unknown as ObjectSchemaLike

/** Compiles the outbound serialisers once, at route declaration. */
export function compileOutbound (url: string, outbound: OutboundSchemas | undefined): Map<string, OutboundSerializer> {
  const serializers = new Map<string, OutboundSerializer>([['error', compileSerializer('error', ERROR_SCHEMA)]])
  if (outbound === undefined) return serializers
  if (typeof outbound !== 'object' || outbound === null) throw new InvalidRouteError(`${url}: outbound must be an object of TypeBox object schemas`)
  for (const [type, schema] of Object.entries(outbound)) {
    if (type === 'error') throw new InvalidRouteError(`${url}: outbound.error is built in and cannot be redeclared`)
    if (typeof schema !== 'object' || schema === null || schema.type !== 'object') throw new InvalidRouteError(`${url}: outbound.${type} must be a TypeBox object schema`)
    // Only declared fields may leave; an open object would pass a session's secrets through.
    if (hasOpenObject(schema)) throw new InvalidRouteError(`${url}: outbound.${type} must declare every field (no additionalProperties or patternProperties)`)
    if (hasUnconstrainedValue(schema)) throw new InvalidRouteError(`${url}: outbound.${type} must give every field a type (no Type.Any or Type.Unknown)`)
    serializers.set(type, compileSerializer(type, schema))
  }
  return serializers
}
