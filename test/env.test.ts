import t from 'tap'
import Fastify from 'fastify'
import secureWs, { optionsFromEnv } from '../lib/index.js'

const LIMIT_VARIABLES = [
  ['WS_MAX_CONNECTIONS_PER_USER', 'connectionsPerUser'],
  ['WS_MAX_MESSAGES_PER_SECOND', 'messagesPerSecond'],
  ['WS_MAX_MESSAGES_PER_MINUTE', 'messagesPerMinute'],
  ['WS_MAX_PAYLOAD_BYTES', 'maxPayloadBytes']
] as const

/** The error `optionsFromEnv(env)` throws; fails the test when it throws nothing. */
function envError (t: { fail: (message: string) => unknown }, env: Record<string, string>): { code?: unknown, message: string } {
  try {
    const result = optionsFromEnv(env)
    t.fail(`expected ${JSON.stringify(env)} to throw, got ${JSON.stringify(result)}`)
  } catch (err) {
    return err as { code?: unknown, message: string }
  }
  return { message: '' }
}

t.test('reads every variable it knows', async (t) => {
  const result = optionsFromEnv({
    WS_ALLOWED_ORIGINS: 'https://app.example.com,http://localhost:3000',
    WS_MAX_CONNECTIONS_PER_USER: '3',
    WS_MAX_MESSAGES_PER_SECOND: '7',
    WS_MAX_MESSAGES_PER_MINUTE: '250',
    WS_MAX_PAYLOAD_BYTES: '4096'
  })
  t.same(result, {
    origins: ['https://app.example.com', 'http://localhost:3000'],
    limits: { connectionsPerUser: 3, messagesPerSecond: 7, messagesPerMinute: 250, maxPayloadBytes: 4096 }
  })
  t.equal(typeof result.limits.connectionsPerUser, 'number')
})

t.test('WS_ALLOWED_ORIGINS entries are trimmed and canonicalised', async (t) => {
  const result = optionsFromEnv({ WS_ALLOWED_ORIGINS: ' HTTPS://App.Example.COM:443 , http://LocalHost:80,http://127.0.0.1:3000 ' })
  t.same(result.origins, ['https://app.example.com', 'http://localhost', 'http://127.0.0.1:3000'])
})

t.test('a single origin needs no comma', async (t) => {
  t.same(optionsFromEnv({ WS_ALLOWED_ORIGINS: 'http://a.test:8080' }).origins, ['http://a.test:8080'])
})

t.test('unset variables are absent from the result', async (t) => {
  const none = optionsFromEnv({})
  t.same(none, { limits: {} })
  t.notOk('origins' in none, 'no origins key when WS_ALLOWED_ORIGINS is unset')

  const one = optionsFromEnv({ WS_MAX_MESSAGES_PER_SECOND: '4' })
  t.same(one, { limits: { messagesPerSecond: 4 } })
  t.same(Object.keys(one.limits), ['messagesPerSecond'], 'only the limit whose variable is set')
  t.notOk('origins' in one)
})

t.test('an empty variable counts as unset', async (t) => {
  const result = optionsFromEnv({ WS_ALLOWED_ORIGINS: '', WS_MAX_CONNECTIONS_PER_USER: '' })
  t.same(result, { limits: {} })
  t.notOk('origins' in result)
})

t.test('variables unrelated to the plugin are ignored', async (t) => {
  t.same(optionsFromEnv({ PATH: '/usr/bin', WS_JWT_SECRET: 'x', WS_MAX_CONNECTIONS: 'abc' }), { limits: {} })
})

t.test('reads process.env when no object is given', async (t) => {
  const saved = { origins: process.env.WS_ALLOWED_ORIGINS, connections: process.env.WS_MAX_CONNECTIONS_PER_USER }
  t.teardown(() => {
    if (saved.origins === undefined) delete process.env.WS_ALLOWED_ORIGINS
    else process.env.WS_ALLOWED_ORIGINS = saved.origins
    if (saved.connections === undefined) delete process.env.WS_MAX_CONNECTIONS_PER_USER
    else process.env.WS_MAX_CONNECTIONS_PER_USER = saved.connections
  })
  process.env.WS_ALLOWED_ORIGINS = 'http://env.test'
  process.env.WS_MAX_CONNECTIONS_PER_USER = '9'
  const result = optionsFromEnv()
  t.same(result.origins, ['http://env.test'])
  t.equal(result.limits.connectionsPerUser, 9)
})

for (const [variable] of LIMIT_VARIABLES) {
  for (const bad of ['abc', '0', '-1', '1.5', '1e3', '0x10', '9007199254740993']) {
    t.test(`${variable}=${JSON.stringify(bad)} throws an error naming ${variable}`, async (t) => {
      const err = envError(t, { [variable]: bad })
      t.equal(err.code, 'FST_SECURE_WS_INVALID_ENV')
      t.equal(err.message, `${variable} must be a positive integer, got "${bad}"`)
    })
  }
}

t.test('a malformed limit fails even when the other variables are fine', async (t) => {
  const err = envError(t, { WS_ALLOWED_ORIGINS: 'http://a.test', WS_MAX_CONNECTIONS_PER_USER: '5', WS_MAX_PAYLOAD_BYTES: 'lots' })
  t.equal(err.code, 'FST_SECURE_WS_INVALID_ENV')
  t.match(err.message, /^WS_MAX_PAYLOAD_BYTES /)
})

for (const bad of ['http://a.test/path', 'http://a.test/', 'a.test', 'null', 'http://user:pw@a.test', 'http://a.test?x=1']) {
  t.test(`WS_ALLOWED_ORIGINS with ${JSON.stringify(bad)} throws an error naming the variable`, async (t) => {
    const err = envError(t, { WS_ALLOWED_ORIGINS: `http://ok.test,${bad}` })
    t.equal(err.code, 'FST_SECURE_WS_INVALID_ENV')
    t.equal(err.message, `WS_ALLOWED_ORIGINS must be a comma-separated list of scheme://host[:port] origins, got "${bad}"`)
  })
}

t.test('an empty entry in WS_ALLOWED_ORIGINS is refused, not skipped', async (t) => {
  const err = envError(t, { WS_ALLOWED_ORIGINS: 'http://a.test,,http://b.test' })
  t.equal(err.code, 'FST_SECURE_WS_INVALID_ENV')
  t.match(err.message, /^WS_ALLOWED_ORIGINS /)
})

t.test('the result registers as plugin options', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  const fromEnv = optionsFromEnv({ WS_ALLOWED_ORIGINS: 'http://a.test', WS_MAX_CONNECTIONS_PER_USER: '2' })
  await app.register(secureWs, { origins: fromEnv.origins!, limits: fromEnv.limits, jwt: { key: 'k'.repeat(32), algorithms: ['HS256'] } })
  await app.ready()
  t.ok(app.hasDecorator('secureWs'))
})

t.test('the hostile-client variables: buffered bytes, auth failures, heartbeat', async (t) => {
  t.same(optionsFromEnv({ WS_MAX_BUFFERED_BYTES: '2048', WS_MAX_AUTH_FAILURES_PER_MINUTE: '5', WS_HEARTBEAT_INTERVAL_MS: '1000' }), {
    limits: { maxBufferedBytes: 2048, authFailuresPerMinute: 5 },
    heartbeatIntervalMs: 1000
  })
  t.same(optionsFromEnv({ WS_MAX_AUTH_FAILURES_PER_MINUTE: '0', WS_HEARTBEAT_INTERVAL_MS: '0' }), {
    limits: { authFailuresPerMinute: 0 },
    heartbeatIntervalMs: 0
  }, '0 turns the lockout and the heartbeat off')
  const bad: Array<[string, string, string]> = [
    ['WS_MAX_BUFFERED_BYTES', '0', 'WS_MAX_BUFFERED_BYTES must be a positive integer, got "0"'],
    ['WS_MAX_BUFFERED_BYTES', '1mb', 'WS_MAX_BUFFERED_BYTES must be a positive integer, got "1mb"'],
    ['WS_MAX_AUTH_FAILURES_PER_MINUTE', '-1', 'WS_MAX_AUTH_FAILURES_PER_MINUTE must be 0 (off) or a positive integer, got "-1"'],
    ['WS_HEARTBEAT_INTERVAL_MS', '2147483648', 'WS_HEARTBEAT_INTERVAL_MS must be 0 (off) or an integer from 1 to 2147483647, got "2147483648"'],
    ['WS_HEARTBEAT_INTERVAL_MS', 'soon', 'WS_HEARTBEAT_INTERVAL_MS must be 0 (off) or an integer from 1 to 2147483647, got "soon"'],
    ['WS_ALLOWED_ORIGINS', 'https://*.example.com', 'WS_ALLOWED_ORIGINS must list every origin: wildcards are not supported, got "https://*.example.com"']
  ]
  for (const [name, value, message] of bad) {
    const err = envError(t, { [name]: value })
    t.equal(err.code, 'FST_SECURE_WS_INVALID_ENV')
    t.equal(err.message, message)
  }
})
