// Maps of sets that drop a key once its set is empty, so nothing is kept for a user or topic
// that has gone. Shared by the registry and both stores.

/** Adds `value` to the set under `key`, creating it. */
export function addTo<K, V> (map: Map<K, Set<V>>, key: K, value: V): void {
  let set = map.get(key)
  if (set === undefined) {
    set = new Set()
    map.set(key, set)
  }
  set.add(value)
}

/** Removes `value` from the set under `key`, and the key once empty; true if it was there. */
export function removeFrom<K, V> (map: Map<K, Set<V>>, key: K, value: V): boolean {
  const set = map.get(key)
  if (set === undefined || !set.delete(value)) return false
  if (set.size === 0) map.delete(key)
  return true
}

/** How many values each key holds. */
export function sizes (map: Map<string, Set<unknown>>): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const [key, set] of map) counts[key] = set.size
  return counts
}
