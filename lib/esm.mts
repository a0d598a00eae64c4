// ESM entry: re-exports the CommonJS build so both module systems share one instance.
import cjs from './index.js'

export default cjs.default
export const {
  secureWs,
  defineRoute,
  optionsFromEnv,
  withoutQueryToken,
  memoryStore,
  MemoryStore,
  redisStore,
  RedisStore,
  DEFAULT_LIMITS,
  DEFAULT_SERVER_LIMITS,
  DEFAULT_CLOSE_REASONS,
  ERROR_MESSAGES,
  InvalidOptionError,
  InvalidEnvError,
  InvalidRouteError,
  StoreUnavailableError,
  RegistrationOrderError
} = cjs
export type * from './index.js'
