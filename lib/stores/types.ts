// The store types live in lib/types.ts with every other public type. This re-export keeps
// lib/stores/redis.ts compiling, which imports them from here; once it imports them from
// '../types.js', this file goes.
export type { BroadcastEvent, MessageCounter, RateLimits, SecureWsStore, StoreContext, StoreStats } from '../types.js'
