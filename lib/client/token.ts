/**
 * When a JWT expires, in ms since the epoch, from its `exp` claim; undefined when the token
 * is not a JWT or has no numeric `exp`. Read without verification: the server verifies; the
 * client only needs to know when to ask for a fresh token.
 */
export function expiryOf (token: string): number | undefined {
  try {
    const exp = JSON.parse(atob(token.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/'))).exp
    return typeof exp === 'number' ? exp * 1000 : undefined
  } catch {
    return undefined
  }
}
