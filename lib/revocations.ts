/**
 * Most users with a revocation remembered at once; past it the oldest remembered goes first,
 * which lifts that revocation early: a bound on memory that a million logouts a day reaches.
 */
const MAX_REVOCATIONS = 1_000_000

/**
 * Revoked credentials by user: everything issued at or before a time, until the revocation
 * itself expires (when no such credential can still be valid). Kept by the memory store, and
 * by the Redis store as what it learnt from Redis and the other instances.
 */
export class Revocations {
  readonly #byUser = new Map<string, { issuedBefore: number, expiresAt: number }>()

  /** Revokes `userId`'s credentials issued at or before `issuedBefore` until `expiresAt`. */
  revoke (userId: string, issuedBefore: number, expiresAt: number): void {
    const current = this.#byUser.get(userId)
    if (current !== undefined) {
      current.issuedBefore = Math.max(current.issuedBefore, issuedBefore)
      current.expiresAt = Math.max(current.expiresAt, expiresAt)
      return
    }
    if (this.#byUser.size >= MAX_REVOCATIONS) this.#byUser.delete(this.#byUser.keys().next().value!)
    this.#byUser.set(userId, { issuedBefore, expiresAt })
  }

  /** The revocation of `userId` in force at `now`, or 0. */
  revokedBefore (userId: string, now: number): number {
    const revocation = this.#byUser.get(userId)
    if (revocation === undefined) return 0
    if (revocation.expiresAt > now) return revocation.issuedBefore
    this.#byUser.delete(userId)
    return 0
  }

  sweep (now: number): void {
    for (const [userId, revocation] of this.#byUser) {
      if (revocation.expiresAt <= now) this.#byUser.delete(userId)
    }
  }

  get size (): number {
    return this.#byUser.size
  }

  clear (): void {
    this.#byUser.clear()
  }
}
