import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { connect as connectTcp, createServer, type Server, type Socket } from 'node:net'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Cluster, Redis } from 'ioredis'
import type { Test } from 'tap'
import { redisStore, type RedisStoreOptions } from '../lib/index.js'
import { build, connect, eventually, type Built, type Client } from './helpers.js'

/** A free TCP port on 127.0.0.1, found by letting the kernel pick one. */
export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

/** True when this machine can start a private redis-server for the tests. */
export function hasRedisServer (): boolean {
  return spawnSync(process.env.REDIS_SERVER_BIN ?? 'redis-server', ['--version']).status === 0
}

/**
 * Skips a Redis test file, loudly, when no redis-server is installed; under CI=true a
 * missing Redis fails the run instead, so CI can never pass without running these tests.
 */
export function requireRedis (t: { fail: (message: string) => unknown, plan: (n: number, comment?: string) => unknown }): boolean {
  if (hasRedisServer()) return true
  const message = 'redis-server not found: Redis store tests NOT run (install Debian\'s redis-server to run them)'
  if (process.env.CI === 'true') t.fail(message)
  else {
    process.stderr.write(`\n*** ${message} ***\n`)
    t.plan(0, message)
  }
  return false
}

/** A private, memory-only redis-server on its own port, which tests may stop and restart. */
export class RedisServer {
  readonly port: number
  readonly url: string
  #process: ChildProcess | undefined

  private constructor (port: number) {
    this.port = port
    this.url = `redis://127.0.0.1:${port}`
  }

  static async start (): Promise<RedisServer> {
    const server = new RedisServer(await freePort())
    await server.resume()
    return server
  }

  /** Starts (again) on the same port and resolves once it accepts connections. */
  async resume (): Promise<void> {
    const child = spawn(process.env.REDIS_SERVER_BIN ?? 'redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes',
      // DEBUG SLEEP: a Redis that stops answering for a while, as a slow one does.
      '--enable-debug-command', 'local'
    ], { stdio: ['ignore', 'pipe', 'inherit'] })
    this.#process = child
    await readyToAccept(child)
  }

  /** Kills the server outright, as a crash or network cut would. */
  async stop (): Promise<void> {
    const child = this.#process
    if (child === undefined || child.exitCode !== null) return
    this.#process = undefined
    child.kill('SIGKILL')
    await once(child, 'exit')
  }
}

let prefixes = 0

/** A key prefix no other test uses, so tests sharing one Redis never see each other's keys. */
export function freshPrefix (name = 'test'): string {
  return `${name}${process.pid}-${++prefixes}:`
}

/** Where a test's stores connect: one Redis (`url`) or a cluster's seed nodes. */
export interface RedisTarget {
  url?: string
  nodes?: string[]
}

/** `count` Fastify instances sharing `redis` under one fresh key prefix (or `store.prefix`). */
export async function instances (t: Test, redis: RedisTarget, count: number, store: Partial<RedisStoreOptions> = {}, options: Record<string, unknown> = {}): Promise<Built[]> {
  const prefix = freshPrefix()
  const built: Built[] = []
  for (let i = 0; i < count; i++) {
    built.push(await build(t, { options: { store: redisStore({ ...redis, prefix, syncIntervalMs: 20, ...store } as RedisStoreOptions), ...options } }))
  }
  // Every instance hears the others' events before the test starts.
  if (count > 1) await everyoneHearing(t, built)
  return built
}

/** Fails `t` unless each of `built` hears the events of another (so all are subscribed). */
export async function everyoneHearing (t: { ok: (value: unknown, message: string) => unknown }, built: Built[]): Promise<void> {
  for (let i = 0; i < built.length; i++) {
    if (!await hearing(built[i === 0 ? 1 : 0]!, built[i]!)) t.ok(false, `instance ${i} hears the others`)
  }
}

/** Tries to connect every 100 ms until a connection stays open, for up to `ms`. */
export async function connectWhenPossible (url: string, options: Parameters<typeof connect>[1], ms: number): Promise<Client | undefined> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    const client = await connect(url, options)
    if (await client.admitted()) return client
    await client.closed
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return undefined
}

export async function ping (client: Client): Promise<unknown> {
  client.send({ type: 'ping' })
  return client.next()
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * The Redis that tests which leave it running share: CI's (REDIS_URL), or a private one
 * stopped in teardown.
 */
export async function sharedRedis (t: { teardown: (fn: () => unknown) => void }): Promise<RedisTarget> {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL }
  const server = await RedisServer.start()
  t.teardown(() => server.stop())
  return { url: server.url }
}

/**
 * A TCP relay in front of a Redis, so one instance can be cut off from it while others still
 * reach it (a network partition). Cut, it keeps every connection open and silent: commands
 * go unanswered, as across a dead link.
 */
export class TcpProxy {
  readonly url: string
  readonly #server: Server
  readonly #targetPort: number
  readonly #pairs = new Set<[Socket, Socket]>()
  #cut = false

  private constructor (server: Server, port: number, targetPort: number) {
    this.#server = server
    this.#targetPort = targetPort
    this.url = `redis://127.0.0.1:${port}`
  }

  static async start (t: { teardown: (fn: () => unknown) => void }, targetPort: number): Promise<TcpProxy> {
    // The server exists before the proxy that relays its connections.
    const created: { proxy?: TcpProxy } = {}
    const server = createServer((client) => { created.proxy!.#relay(client) })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const proxy = new TcpProxy(server, (server.address() as { port: number }).port, targetPort)
    created.proxy = proxy
    t.teardown(() => proxy.close())
    return proxy
  }

  #relay (client: Socket): void {
    const upstream = connectTcp(this.#targetPort, '127.0.0.1')
    const pair: [Socket, Socket] = [client, upstream]
    this.#pairs.add(pair)
    const end = (): void => {
      this.#pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
    if (this.#cut) return this.#silence(pair)
    client.pipe(upstream)
    upstream.pipe(client)
  }

  #silence ([client, upstream]: [Socket, Socket]): void {
    client.unpipe(upstream)
    upstream.unpipe(client)
    client.pause()
    upstream.pause()
  }

  /** From now on nothing passes, on open connections or new ones. */
  cut (): void {
    this.#cut = true
    for (const pair of this.#pairs) this.#silence(pair)
  }

  /** The link is back: the silenced connections are dropped, so clients reconnect through it. */
  heal (): void {
    this.#cut = false
    for (const [client, upstream] of this.#pairs) {
      client.destroy()
      upstream.destroy()
    }
  }

  async close (): Promise<void> {
    this.heal()
    await new Promise((resolve) => this.#server.close(resolve))
  }
}

/**
 * A private 3-master Redis Cluster on loopback (no replicas, memory only), for machines
 * without one (CI starts its own and sets REDIS_CLUSTER_NODES).
 */
export class RedisCluster {
  readonly nodes: string[]
  readonly #servers: ChildProcess[]
  readonly #dir: string

  private constructor (nodes: string[], servers: ChildProcess[], dir: string) {
    this.nodes = nodes
    this.#servers = servers
    this.#dir = dir
  }

  static async start (): Promise<RedisCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'secure-ws-cluster-'))
    const nodes: string[] = []
    const servers: ChildProcess[] = []
    const cluster = new RedisCluster(nodes, servers, dir)
    try {
      for (let i = 0; i < 3; i++) {
        // The cluster bus gets a port of its own: port + 10000, Redis's default, may be taken or out of range.
        const port = await freePort()
        const busPort = await freePort()
        const child = spawn(process.env.REDIS_SERVER_BIN ?? 'redis-server', [
          '--port', String(port), '--cluster-port', String(busPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
          '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`), '--cluster-node-timeout', '2000',
          '--dir', dir, '--enable-debug-command', 'local'
        ], { stdio: ['ignore', 'pipe', 'inherit'] })
        servers.push(child)
        await readyToAccept(child)
        nodes.push(`127.0.0.1:${port}`)
      }
      const create = spawnSync(process.env.REDIS_CLI_BIN ?? 'redis-cli', ['--cluster', 'create', ...nodes, '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8', timeout: 30_000 })
      if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`)
      await cluster.#waitForOk()
      return cluster
    } catch (err) {
      await cluster.stop()
      throw err
    }
  }

  async #waitForOk (): Promise<void> {
    const end = Date.now() + 20_000
    for (;;) {
      const states = this.nodes.map((node) => {
        const [host, port] = node.split(':')
        return spawnSync(process.env.REDIS_CLI_BIN ?? 'redis-cli', ['-h', host!, '-p', port!, 'cluster', 'info'], { encoding: 'utf8' }).stdout
      })
      if (states.every((info) => info.includes('cluster_state:ok'))) return
      if (Date.now() > end) throw new Error(`cluster not ok within 20 s: ${states.join('\n')}`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }

  async stop (): Promise<void> {
    await Promise.all(this.#servers.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGKILL')
      await once(child, 'exit')
    }))
    await rm(this.#dir, { recursive: true, force: true })
  }
}

/** Resolves once `child`, a redis-server, accepts connections. */
async function readyToAccept (child: ChildProcess): Promise<void> {
  let output = ''
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      output += chunk.toString()
      if (output.includes('Ready to accept connections')) {
        child.stdout!.off('data', onData)
        child.stdout!.resume()
        resolve()
      }
    }
    child.stdout!.on('data', onData)
    child.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${output}`)))
  })
}

/**
 * The targets every shared-Redis test runs against: one Redis, and a 3-master Redis Cluster
 * (CI's, from REDIS_CLUSTER_NODES, or a private one). Under CI=true a cluster that cannot be
 * had fails the run rather than skipping it.
 */
export async function redisTargets (t: Test): Promise<Array<[name: string, target: RedisTarget]>> {
  const targets: Array<[string, RedisTarget]> = [['one Redis', await sharedRedis(t)]]
  if (process.env.REDIS_CLUSTER_NODES) {
    targets.push(['Redis Cluster', { nodes: process.env.REDIS_CLUSTER_NODES.split(',') }])
    return targets
  }
  try {
    const cluster = await RedisCluster.start()
    t.teardown(() => cluster.stop())
    targets.push(['Redis Cluster', { nodes: cluster.nodes }])
  } catch (err) {
    const message = `no Redis Cluster: cluster tests NOT run (${(err as Error).message})`
    if (process.env.CI === 'true') t.fail(message)
    else process.stderr.write(`\n*** ${message} ***\n`)
  }
  return targets
}

/** A client of the test's own on `target`, for looking at keys; closed in teardown. */
export function adminClient (t: { teardown: (fn: () => unknown) => void }, target: RedisTarget): Redis | Cluster {
  const client = target.nodes !== undefined ? new Cluster(target.nodes) : new Redis(target.url!)
  t.teardown(() => client.disconnect())
  return client
}

/**
 * Resolves once `listener` hears the store events `speaker` sends: an instance subscribes to
 * them as it starts, and one sent before that is not heard (pub/sub keeps nothing). Shows as
 * a revocation of a throwaway user (`warm-up-<n>`) in the listener's stats.
 */
export async function hearing (speaker: Built, listener: Built): Promise<boolean> {
  const end = Date.now() + 10_000
  while (Date.now() < end) {
    const known = listener.app.secureWs.stats().store.revocations
    await speaker.app.secureWs.revokeUser(`warm-up-${++warmUps}`, { ttlMs: 60_000 })
    if (await eventually(() => listener.app.secureWs.stats().store.revocations > known, 100)) return true
  }
  return false
}

let warmUps = 0
