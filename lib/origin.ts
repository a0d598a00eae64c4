// `scheme://host[:port]` and nothing else: no path, query, fragment or userinfo.
const ORIGIN_SHAPE = /^[a-z][a-z0-9+.-]*:\/\/[^/?#@\s]+$/i

/**
 * Parses `scheme://host[:port]` into its canonical origin (lower-case host, default port
 * dropped), or returns null for anything else, `null` and opaque origins included.
 */
export function parseOrigin (value: string): string | null {
  if (!ORIGIN_SHAPE.test(value)) return null
  let url: URL
  try {
    url = new URL(value)
  } catch {
    return null
  }
  // Non-special schemes have the opaque origin "null", which must never match anything.
  if (url.origin === 'null' || url.username !== '' || url.password !== '') return null
  return url.origin
}

/**
 * Builds the origin check from an allowlist already validated by the options module.
 * Header values are compared as parsed origins so that case, default ports and
 * look-alikes (`https://app.example.com.evil.test`) cannot slip through a string match.
 */
export function createOriginCheck (allowlist: readonly string[], allowMissingOrigin: boolean): (header: string | undefined) => boolean {
  const allowed = new Set(allowlist)
  return function isOriginAllowed (header) {
    if (header === undefined || header === '') return allowMissingOrigin
    // Allowlist entries are canonical origins, so an exact hit needs no parsing.
    if (allowed.has(header)) return true
    const origin = parseOrigin(header)
    return origin !== null && allowed.has(origin)
  }
}
