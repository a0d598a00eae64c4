import { Cluster, Redis, type ClusterNode, type RedisOptions } from 'ioredis'
import { InvalidOptionError } from '../errors.js'

/** A Redis Cluster seed node: `host:port`, a `redis://` URL, or `{ host, port }`. */
export type RedisNode = string | { host: string, port: number }

/** Where the store's connections go, as given in its options. */
export interface ClientOptions {
  client?: Redis | Cluster
  url?: string
  nodes?: readonly RedisNode[]
}

export interface Clients {
  client: Redis | Cluster
  /** A connection of its own for pub/sub, which takes a connection out of command use. */
  subscriber: Redis | Cluster
  /** Whether the store opened `client` (and so closes it). */
  owned: boolean
  cluster: boolean
}

const retryStrategy = (times: number): number => Math.min(times * 100, 1000)

// Commands fail at once while Redis is away instead of queueing, so a connect is refused
// (1013) rather than left waiting; reconnects keep trying.
const COMMAND_OPTIONS: RedisOptions = { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy }
// The subscriber waits for Redis instead: its subscription must outlive an outage.
const SUBSCRIBER_OPTIONS: RedisOptions = { enableOfflineQueue: true, maxRetriesPerRequest: null, retryStrategy }

/** Exactly one of `client`, `url` and `nodes`; several comma-separated URLs are a cluster's seeds. */
export function openClients (options: ClientOptions): Clients {
  const given = [options.client, options.url, options.nodes].filter((value) => value !== undefined).length
  if (given !== 1) throw new InvalidOptionError('redisStore: give exactly one of client, url or nodes')
  if (options.url !== undefined && (typeof options.url !== 'string' || options.url === '')) throw new InvalidOptionError('redisStore: url must be a non-empty string')
  let nodes = options.nodes
  if (options.url?.includes(',') === true) nodes = options.url.split(',').map((url) => url.trim())
  if (nodes !== undefined) {
    if (!Array.isArray(nodes) || nodes.length === 0 || !nodes.every(isNode)) {
      throw new InvalidOptionError('redisStore: nodes must be a non-empty array of "host:port", redis:// URLs or { host, port }')
    }
    const seeds = nodes as ClusterNode[]
    const client = new Cluster(seeds, { enableOfflineQueue: false, clusterRetryStrategy: retryStrategy, redisOptions: COMMAND_OPTIONS })
    const subscriber = new Cluster(seeds, { enableOfflineQueue: true, clusterRetryStrategy: retryStrategy, redisOptions: SUBSCRIBER_OPTIONS })
    return { client, subscriber, owned: true, cluster: true }
  }
  if (options.url !== undefined) {
    const client = new Redis(options.url, COMMAND_OPTIONS)
    return { client, subscriber: client.duplicate(SUBSCRIBER_OPTIONS), owned: true, cluster: false }
  }
  const client = options.client!
  if (typeof client !== 'object' || client === null || typeof (client as Redis).duplicate !== 'function') {
    throw new InvalidOptionError('redisStore: client must be an ioredis Redis or Cluster')
  }
  if (client.isCluster) {
    const cluster = client as Cluster
    return { client, subscriber: cluster.duplicate([], { enableOfflineQueue: true }), owned: false, cluster: true }
  }
  return { client, subscriber: (client as Redis).duplicate(SUBSCRIBER_OPTIONS), owned: false, cluster: false }
}

function isNode (node: unknown): boolean {
  if (typeof node === 'string') return node !== ''
  if (typeof node !== 'object' || node === null) return false
  const { host, port } = node as { host?: unknown, port?: unknown }
  return typeof host === 'string' && Number.isInteger(port)
}
