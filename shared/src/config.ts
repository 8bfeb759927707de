import { z } from 'zod';

/**
 * Configuration is read from the environment once, at start-up, and validated against a zod schema.
 * A bad value stops the process with one message that names every offending key, instead of a
 * confusing failure minutes later. Every key carries a description: `scripts/config-table.ts`
 * renders the README's configuration table from these schemas, so the docs cannot drift.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export function loadConfig<S extends z.ZodType>(schema: S, env: Record<string, string | undefined> = process.env): z.output<S> {
  // An empty variable means unset (compose files pass `KEY: ${KEY:-}` through).
  const given = Object.fromEntries(Object.entries(env).filter(([, value]) => value !== ''));
  const parsed = schema.safeParse(given);
  if (parsed.success) return parsed.data;
  const lines = parsed.error.issues.map((issue) => {
    const key = issue.path.join('.') || '(environment)';
    const value = typeof issue.path[0] === 'string' ? env[issue.path[0]] : undefined;
    const shown = value === undefined ? 'unset' : JSON.stringify(value);
    return `  ${key} (${shown}): ${issue.message}`;
  });
  throw new ConfigError(`Invalid configuration:\n${lines.join('\n')}`);
}

/** For entry points: a bad configuration is printed plainly (no stack trace) and the process exits 78 (EX_CONFIG). */
export function loadConfigOrExit<S extends z.ZodType>(
  schema: S,
  env: Record<string, string | undefined> = process.env,
): z.output<S> {
  try {
    return loadConfig(schema, env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`${error.message}\n`);
    process.exit(78);
  }
}

/** Field builders: environment values are strings, these coerce and bound them. */
export const env = {
  int: (def: number, min: number, max: number, description: string) =>
    z.coerce.number().int().min(min).max(max).default(def).describe(description),
  number: (def: number, min: number, max: number, description: string) =>
    z.coerce.number().min(min).max(max).default(def).describe(description),
  bool: (def: boolean, description: string) =>
    z
      .enum(['true', 'false', '1', '0', 'yes', 'no'])
      .default(def ? 'true' : 'false')
      .transform((v) => v === 'true' || v === '1' || v === 'yes')
      .describe(`${description} (true/false)`),
  string: (def: string, description: string) => z.string().min(1).default(def).describe(description),
  optionalString: (description: string) => z.string().min(1).optional().describe(description),
  /** Comma-separated list; empty string means an empty list. */
  list: (def: string, description: string) =>
    z
      .string()
      .default(def)
      .transform((v) =>
        v
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s.length > 0),
      )
      .describe(description),
} as const;

export const redisConfigShape = {
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
    .default('redis://127.0.0.1:6379')
    .describe('Redis connection URL shared by every service'),
  REDIS_PREFIX: z
    .string()
    .regex(/^[a-z][a-z0-9-]*$/, 'lowercase letters, digits and dashes')
    .default('conveyor')
    .describe('Key prefix for queues, results, streams and heartbeats; several deployments can share one Redis'),
};

export const logConfigShape = {
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info').describe('pino log level'),
};

export const resultConfigShape = {
  RESULT_TTL_SECONDS: env.int(3600, 1, 7 * 24 * 3600, 'How long a finished job (result or error) can be fetched, in seconds'),
  INPUT_TTL_SECONDS: env.int(
    24 * 3600,
    60,
    30 * 24 * 3600,
    'Safety expiry of an uploaded image that no worker has taken yet, in seconds; normally deleted as soon as the job finishes',
  ),
};

/** What an image may declare in its header, checked by the gateway (before queueing) and again by the worker. */
export const imageLimitsShape = {
  MAX_IMAGE_PIXELS: env.int(
    40_000_000,
    1,
    1_000_000_000,
    'Largest accepted width × height; larger (decompression bombs) → 422 before decoding',
  ),
  MAX_IMAGE_SIDE: env.int(16_384, 1, 1_000_000_000, 'Longest accepted side, in pixels; longer → 422 before decoding'),
  MAX_ASPECT_RATIO: env.number(
    50,
    1,
    1_000_000_000,
    'Largest accepted ratio of the longer side to the shorter → 422 before decoding (a 1 × 40,000,000 strip holds a worker for seconds)',
  ),
};
