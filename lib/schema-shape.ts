// The public generics take TypeBox schemas by shape, not by TypeBox's own `TSchema`. TypeBox
// ships CommonJS and ESM declarations whose `[Kind]` is a `unique symbol` in each: an ESM app
// gets its schemas' types through `import`, this package's declarations (CommonJS) would see
// TypeBox's through `require`, and no schema would satisfy `TSchema`. Every TypeBox type
// carries the type it describes in `static`, as the same structure in both builds and in
// every 0.34 release, so a constraint on that works wherever the app's TypeBox came from.

/** A TypeBox schema, whichever build or copy of TypeBox made it. */
export interface SchemaLike {
  /** TypeBox's phantom field holding the type the schema describes. */
  static: unknown
  params: unknown[]
}

/** A TypeBox object schema (`Type.Object`). */
export interface ObjectSchemaLike extends SchemaLike {
  type: 'object'
  properties: object
}

/** The TypeScript type a TypeBox schema describes: TypeBox's `Static`, computed the same way. */
export type StaticOf<T extends SchemaLike> = (T & { params: [] })['static']
