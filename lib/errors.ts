import createError from '@fastify/error'

/** Thrown at registration (or by `optionsFromEnv`) when an option is missing or malformed. */
export const InvalidOptionError = createError<[string]>(
  'FST_SECURE_WS_INVALID_OPTION',
  '%s'
)

/** Thrown by `optionsFromEnv` when an environment variable is malformed; the message names it. */
export const InvalidEnvError = createError<[string]>(
  'FST_SECURE_WS_INVALID_ENV',
  '%s'
)

/** Thrown by `route()` when a route declaration is malformed. */
export const InvalidRouteError = createError<[string]>(
  'FST_SECURE_WS_INVALID_ROUTE',
  '%s'
)

/** Thrown by `register(@fastify/websocket)` after the plugin registered it itself. */
export const RegistrationOrderError = createError<[]>(
  'FST_SECURE_WS_REGISTRATION_ORDER',
  'fastify-secure-ws already registered @fastify/websocket; register @fastify/websocket before fastify-secure-ws, and the plugin uses yours with its options'
)

/** Raised by a store that cannot reach its backend; admission refuses with `storeUnavailable`. */
export const StoreUnavailableError = createError<[string]>(
  'FST_SECURE_WS_STORE_UNAVAILABLE',
  'Store unavailable: %s'
)
