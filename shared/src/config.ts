import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ModelName } from './contract/common.contract.js';
import type { MlflowCredentials } from './mlflow/client.js';
import { hashTag, parseRedisUrl, redactUrl } from './redis.js';

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
    // The message goes to logs and terminals: a secret that fails validation is not printed, nor a
    // password in a URL — also in one no URL parser accepts (a Sentinel or Cluster host list, a bad port).
    const secret = typeof issue.path[0] === 'string' && SECRET_KEY.test(issue.path[0]);
    const shown = value === undefined ? 'unset' : secret ? 'set, not shown' : JSON.stringify(redactUrl(value));
    return `  ${key} (${shown}): ${issue.message}`;
  });
  throw new ConfigError(`Invalid configuration:\n${lines.join('\n')}`);
}

const SECRET_KEY = /(PASSWORD|SECRET|TOKEN)$/;

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
    .superRefine((url, ctx) => {
      try {
        parseRedisUrl(url);
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: (error as Error).message });
      }
    })
    .default('redis://127.0.0.1:6379')
    .describe(
      'Redis shared by every service: `redis://[user:password@]host:port[/db]` (`rediss://` for TLS); a Redis Cluster `redis+cluster://[user:password@]host:port,host:port,…` (seed nodes; REDIS_PREFIX then needs a hash tag, e.g. `{conveyor}`); a master found through Sentinel `redis+sentinel://[user:password@]host:26379,host:26379,…/<master-name>[?sentinelPassword=…]`',
    ),
  REDIS_PREFIX: z
    .string()
    .regex(/^([a-z][a-z0-9-]*|\{[a-z][a-z0-9-]*\})$/, 'lowercase letters, digits and dashes, optionally in braces ({conveyor})')
    .default('conveyor')
    .describe(
      'Key prefix for queues, results, streams and heartbeats; several deployments can share one Redis. In braces (`{conveyor}`) it is a Redis Cluster hash tag: every key of the deployment in one slot (required with `redis+cluster://`)',
    ),
};

/**
 * The rule between REDIS_URL and REDIS_PREFIX, for every service's schema (`.superRefine`): on a
 * Redis Cluster every key must hash to one slot, or BullMQ's scripts (and Conveyor's: admission,
 * the result commit) fail with CROSSSLOT.
 */
export function checkRedisConfig(config: { REDIS_URL: string; REDIS_PREFIX: string }, ctx: z.RefinementCtx): void {
  let cluster: boolean;
  try {
    cluster = parseRedisUrl(config.REDIS_URL).kind === 'cluster';
  } catch {
    return; // REDIS_URL's own check has said why
  }
  if (cluster && hashTag(config.REDIS_PREFIX) === undefined)
    ctx.addIssue({
      code: 'custom',
      path: ['REDIS_PREFIX'],
      message: `a Redis Cluster needs a hash-tag prefix, e.g. {${config.REDIS_PREFIX.replace(/[{}]/g, '')}}, so every key of a queue is in one slot`,
    });
}

/** One entry of MODELS: a serving name and, for a worker, how many of its jobs run at once. */
export interface ModelEntry {
  readonly name: ModelName;
  /** Unset: the worker's WORKER_CONCURRENCY. */
  readonly concurrency?: number;
}

/**
 * The models of a deployment, shared by the gateway and the workers so that one `.env` serves both:
 * `MODELS=digits:4,moderation:2` is what a worker serves (with each model's concurrency) and what
 * a gateway knows before any worker announced it (the concurrency is the workers' business).
 */
export const modelsConfigShape = {
  DEFAULT_MODEL: ModelName.default('digits').describe(
    'The model of /v1/predict and /predict (gateway), and the one a worker serves from MODEL_DIR or MODEL_URI',
  ),
  MODELS: z
    .string()
    .transform((value, ctx): ModelEntry[] => {
      const entries: ModelEntry[] = [];
      for (const part of value.split(',').map((s) => s.trim())) {
        if (part === '') continue;
        const [name = '', concurrency, ...rest] = part.split(':');
        const issue = (message: string) => ctx.addIssue({ code: 'custom', message: `"${part}": ${message}` });
        if (!ModelName.safeParse(name).success) {
          issue('not a model name (lowercase letters, digits, ".", "_" and "-")');
          continue;
        }
        if (rest.length > 0 || (concurrency !== undefined && !/^\d+$/.test(concurrency))) {
          issue('expected name or name:concurrency, e.g. moderation:2');
          continue;
        }
        const n = concurrency === undefined ? undefined : Number(concurrency);
        if (n !== undefined && (n < 1 || n > 256)) issue('the concurrency must be 1–256');
        if (entries.some((e) => e.name === name)) issue('named twice');
        entries.push(n === undefined ? { name } : { name, concurrency: n });
      }
      if (entries.length === 0) ctx.addIssue({ code: 'custom', message: 'name at least one model, or leave MODELS unset' });
      return entries;
    })
    .optional()
    .describe(
      "The deployment's models, comma-separated `name[:concurrency]` (e.g. digits:4,moderation:2). Worker: the models it serves, each from <MODELS_DIR>/<name> (the default model from MODEL_DIR when set) on its own queue, `concurrency` jobs at once (default WORKER_CONCURRENCY); unset: DEFAULT_MODEL alone. Gateway: models known before any worker announced them, whose async requests are queued while none serves them (the concurrency is ignored; DEFAULT_MODEL is always known)",
    ),
};

export const logConfigShape = {
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info').describe('pino log level'),
};

/**
 * OpenTelemetry traces (docs/tracing.md), under the standard variable names so an operator's usual
 * settings work unchanged. Read here, once, like every other setting: the SDK's own reading of the
 * environment is bypassed (the exporter is given its URL), so a test or an embedding can pass them.
 * Off unless an OTLP endpoint is set.
 */
export const tracingConfigShape = {
  OTEL_EXPORTER_OTLP_ENDPOINT: z
    .url({ protocol: /^https?$/, error: 'an http:// or https:// URL' })
    .optional()
    .describe(
      'OTLP/HTTP base URL of a trace collector (e.g. `http://otel-collector:4318`): spans go to `<it>/v1/traces`. Unset (and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT unset): tracing is off',
    ),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: z
    .url({ protocol: /^https?$/, error: 'an http:// or https:// URL' })
    .optional()
    .describe('Full OTLP/HTTP URL for traces, used as given (overrides OTEL_EXPORTER_OTLP_ENDPOINT)'),
  OTEL_EXPORTER_OTLP_PROTOCOL: z
    .enum(['http/protobuf', 'http/json'])
    .default('http/protobuf')
    .describe(
      'OTLP encoding: `http/protobuf` or `http/json` (`grpc` is not offered: one HTTP client serves both, and collectors take OTLP/HTTP on 4318)',
    ),
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: z
    .enum(['http/protobuf', 'http/json'])
    .optional()
    .describe('Overrides OTEL_EXPORTER_OTLP_PROTOCOL for traces'),
  OTEL_SERVICE_NAME: z
    .string()
    .min(1)
    .max(200)
    .optional()
    .describe("The `service.name` of this process's spans (default `conveyor-<service>`)"),
  OTEL_TRACES_SAMPLER: z
    .enum([
      'always_on',
      'always_off',
      'traceidratio',
      'parentbased_always_on',
      'parentbased_always_off',
      'parentbased_traceidratio',
    ])
    .default('parentbased_always_on')
    .describe(
      "Which traces are kept: the OpenTelemetry sampler names; `parentbased_*` follows a caller's `traceparent` sampled flag",
    ),
  OTEL_TRACES_SAMPLER_ARG: env.number(1, 0, 1, 'The ratio for `traceidratio` samplers (0–1)'),
  OTEL_SDK_DISABLED: env.bool(false, 'Turns tracing off even with an endpoint set'),
  OTEL_BSP_SCHEDULE_DELAY: env.int(5000, 1, 60_000, 'Longest time a finished span waits before it is exported, in ms'),
  OTEL_BSP_MAX_QUEUE_SIZE: env.int(
    2048,
    1,
    1_000_000,
    'Most finished spans held for export; beyond it new spans are dropped (a slow or dead collector costs bounded memory, never requests)',
  ),
};
export type TracingConfig = z.output<z.ZodObject<typeof tracingConfigShape>>;

export const resultConfigShape = {
  RESULT_TTL_SECONDS: env.int(
    600,
    1,
    7 * 24 * 3600,
    'How long a finished job (result or error) can be fetched, and feedback given for it, in seconds. Redis holds ~0.9 KB per job for this long: at 400 jobs/s, 600 s is ~210 MB (docs/redis-memory.md)',
  ),
  INPUT_TTL_SECONDS: env.int(
    24 * 3600,
    60,
    30 * 24 * 3600,
    'Safety expiry of an uploaded image that no worker has taken yet, in seconds; normally deleted as soon as the job finishes',
  ),
};

/** The shared result cache (docs/result-cache.md): gateways read it, workers fill it; both read the switch. */
export const resultCacheConfigShape = {
  RESULT_CACHE: env.bool(
    false,
    'The shared result cache: gateways answer an image the same model version already answered from it (Cache-Status: conveyor; hit) and merge identical synchronous requests in flight into one job; workers store completed answers. Off by default: a hit is no new prediction for the drift monitor and has no job to give feedback on (docs/result-cache.md)',
  ),
  RESULT_CACHE_TTL_SECONDS: env.int(
    3600,
    1,
    7 * 24 * 3600,
    'How long a cached answer is served, in seconds (a model swap changes the key at once; the TTL only bounds how long an entry holds memory)',
  ),
  RESULT_CACHE_MAX_BYTES_PER_MODEL: env.int(
    16 * 1024 * 1024,
    1024,
    4 * 1024 * 1024 * 1024,
    "Bytes of Redis one model's cached answers may hold (each counted as its JSON + 300 bytes of keys and indexes, ~0.6–1.5 KB): beyond, the oldest entries are evicted",
  ),
  RESULT_CACHE_ENTRIES_PER_CLIENT: env.int(
    4000,
    1,
    100_000_000,
    "Entries one client's jobs (API key, or address when keys are off) may hold in one model's cache: beyond, that client's oldest go first, so one client cannot evict everyone else's answers (the default is ~1/4–1/8 of the default budget)",
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

/**
 * Credentials for an MLflow server with authentication (`mlflow server --app-name basic-auth`), for
 * every process that talks to the registry. MLflow's own client reads the same two variables; the
 * `_FILE` variant takes a secret's path (compose, Kubernetes), like MODEL_SIGNING_KEY_FILE.
 * Objects using it add `.superRefine(checkMlflowAuth)`.
 */
export const mlflowAuthShape = {
  MLFLOW_TRACKING_USERNAME: env.optionalString(
    'User for an MLflow server with authentication (`--app-name basic-auth`), with MLFLOW_TRACKING_PASSWORD_FILE or MLFLOW_TRACKING_PASSWORD; a refusal (401/403) is reported as such and never retried',
  ),
  MLFLOW_TRACKING_PASSWORD_FILE: env.optionalString(
    'File holding the password of MLFLOW_TRACKING_USERNAME (a compose or Kubernetes secret; a trailing newline is ignored)',
  ),
  MLFLOW_TRACKING_PASSWORD: env.optionalString(
    'The password itself, where a file is impractical (prefer MLFLOW_TRACKING_PASSWORD_FILE: environments show up in `docker inspect` and crash reports)',
  ),
};

type MlflowAuthConfig = {
  [K in keyof typeof mlflowAuthShape]?: string | undefined;
} & { MLFLOW_TRACKING_URI?: string | undefined };

/** A secret file's content; a trailing newline (from `echo` or an editor) is not part of the secret. */
export function readSecretFile(file: string): string {
  const value = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  if (!value) throw new Error('the file is empty');
  return value;
}

/** The cross-field rules of mlflowAuthShape, checked at start-up with the rest of the configuration. */
export function checkMlflowAuth(config: MlflowAuthConfig, ctx: z.RefinementCtx): void {
  const issue = (key: string, message: string) => ctx.addIssue({ code: 'custom', path: [key], message });
  const { MLFLOW_TRACKING_URI: uri, MLFLOW_TRACKING_USERNAME: user } = config;
  const { MLFLOW_TRACKING_PASSWORD: password, MLFLOW_TRACKING_PASSWORD_FILE: file } = config;
  if (uri && URL.canParse(uri)) {
    const parsed = new URL(uri);
    if (parsed.username || parsed.password)
      issue(
        'MLFLOW_TRACKING_URI',
        'no credentials in the URL (it is logged): use MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD_FILE',
      );
  }
  if (password && file)
    issue('MLFLOW_TRACKING_PASSWORD', 'set MLFLOW_TRACKING_PASSWORD_FILE or MLFLOW_TRACKING_PASSWORD, not both');
  if (user && !password && !file)
    issue('MLFLOW_TRACKING_USERNAME', 'needs MLFLOW_TRACKING_PASSWORD_FILE (or MLFLOW_TRACKING_PASSWORD)');
  if (!user && (password || file))
    issue('MLFLOW_TRACKING_USERNAME', 'a password is configured but no user: set MLFLOW_TRACKING_USERNAME too');
  if (file) {
    try {
      readSecretFile(file);
    } catch (error) {
      issue('MLFLOW_TRACKING_PASSWORD_FILE', `cannot read the password: ${(error as Error).message}`);
    }
  }
}

/** The configured MLflow credentials (the password read from its file), or undefined for none. */
export function mlflowCredentials(config: MlflowAuthConfig): MlflowCredentials | undefined {
  const username = config.MLFLOW_TRACKING_USERNAME;
  if (!username) return undefined;
  const file = config.MLFLOW_TRACKING_PASSWORD_FILE;
  const password = file ? readSecretFile(file) : config.MLFLOW_TRACKING_PASSWORD;
  return password ? { username, password } : undefined;
}
