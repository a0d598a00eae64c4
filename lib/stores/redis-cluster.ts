// Redis Cluster puts every key in one of 16384 hash slots: CRC16 (XMODEM) of the key, or of
// its hash tag, the part between the first `{` and the next `}` when that is not empty. A
// script or a MULTI may only touch keys of one slot, so the store groups its calls by slot.

const SLOTS = 16384

const CRC16_TABLE = (() => {
  const table = new Uint16Array(256)
  for (let i = 0; i < 256; i++) {
    let crc = i << 8
    for (let bit = 0; bit < 8; bit++) crc = (crc & 0x8000) !== 0 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
    table[i] = crc
  }
  return table
})()

function crc16 (bytes: Uint8Array, start: number, end: number): number {
  let crc = 0
  for (let i = start; i < end; i++) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ bytes[i]!) & 0xff]!
  return crc
}

/** The hash slot of `key`, as Redis Cluster computes it (on the key's UTF-8 bytes). */
export function keySlot (key: string): number {
  const bytes = Buffer.from(key)
  const open = bytes.indexOf(0x7b)
  if (open !== -1) {
    const close = bytes.indexOf(0x7d, open + 1)
    if (close > open + 1) return crc16(bytes, open + 1, close) % SLOTS
  }
  return crc16(bytes, 0, bytes.length) % SLOTS
}

/**
 * Splits `items` into script calls of at most `size` items; on a cluster, also one slot per
 * call (a user's keys share a hash tag, so a user's items always share a call's slot).
 */
export function batches<T> (items: readonly T[], keyOf: (item: T) => string, size: number, cluster: boolean): T[][] {
  if (!cluster) {
    const parts: T[][] = []
    for (let start = 0; start < items.length; start += size) parts.push(items.slice(start, start + size))
    return parts
  }
  const bySlot = new Map<number, T[][]>()
  for (const item of items) {
    const slot = keySlot(keyOf(item))
    let parts = bySlot.get(slot)
    if (parts === undefined) bySlot.set(slot, parts = [[]])
    let last = parts[parts.length - 1]!
    if (last.length === size) parts.push(last = [])
    last.push(item)
  }
  return [...bySlot.values()].flat()
}
