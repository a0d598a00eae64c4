// Route parameters as find-my-way (Fastify's router) reads them from a URL: `:name` runs to
// the next `/`, `-`, `.` or `(`; `(...)` after it is a regular expression; `::` is a literal
// colon; `:name?` at the end is optional; a trailing `*` is the wildcard.

/** Splits `S` into the parameter name at its start and what follows it. */
type TakeName<S extends string, Name extends string = ''> =
  S extends `${infer C}${infer Rest}`
    ? C extends '/' | '-' | '.' | '(' | '?' ? [Name, S] : TakeName<Rest, `${Name}${C}`>
    : [Name, '']

/** Drops a regular expression (`(...)`) at the start of `S`. */
type SkipPattern<S extends string> = S extends `(${string})${infer Rest}` ? Rest : S

/** `[required, optional]` parameter names in `Url`. */
type ParamNames<Url extends string, Required extends string = never, Optional extends string = never> =
  Url extends `${string}:${infer After}`
    ? After extends `:${infer Rest}`
      ? ParamNames<Rest, Required, Optional>
      : TakeName<After> extends [infer Name extends string, infer Rest extends string]
        ? Rest extends `?${infer Tail}`
          ? ParamNames<Tail, Required, Optional | Name>
          : ParamNames<SkipPattern<Rest>, Required | Name, Optional>
        : never
    : [Required | (Url extends `${string}*` ? '*' : never), Optional]

// `& {}` makes editors and errors show the object itself rather than this alias.
type Flatten<T> = { [K in keyof T]: T[K] } & {}

/**
 * The `params` of a route declared at `Url`: `'/rooms/:roomId'` gives `{ roomId: string }`.
 * A URL that is only known as `string` gives `Record<string, string>`. Parameters that come
 * from a `prefix` of the instance the route is declared on are there at run time but not in
 * this type.
 */
export type RouteParams<Url extends string> = string extends Url
  ? Record<string, string>
  : ParamNames<Url> extends [infer Required extends string, infer Optional extends string]
    ? Flatten<{ [K in Required]: string } & { [K in Optional]?: string }>
    : never
