/**
 * Capped exponential backoff with full jitter: the delay before the `attempt`-th retry
 * (0 for the first) is uniform in [0, min(maxMs, initialMs * 2^attempt)). Full jitter spreads
 * the clients a server dropped at once, so they do not all come back in the same instant.
 */
export function fullJitter (initialMs = 500, maxMs = 30_000, random: () => number = Math.random): (attempt: number) => number {
  return (attempt) => Math.floor(random() * Math.min(maxMs, initialMs * 2 ** attempt))
}
