import { z } from 'zod';
import { ModelName } from '@conveyor/shared/contract/common.contract';
import { env } from '@conveyor/shared/config';
import { parseReplayStoreLocation, replayS3Endpoint, type ReplayStoreLocation } from '@conveyor/shared/replay/replay-store';

/**
 * The live recorder's settings (docs/replay.md, "Recording"), spread into the worker's schema.
 * Recording is off unless REPLAY_SAMPLE_RATE gives a served model a rate above 0.
 */

/** REPLAY_SAMPLE_RATE, read: one rate for every served model, or rates by name (the others 0). */
export interface SampleRates {
  readonly all?: number;
  readonly byModel: ReadonlyMap<string, number>;
}

const rate = (text: string, where: string, ctx: z.RefinementCtx): number => {
  const value = text.trim() === '' ? Number.NaN : Number(text);
  if (!Number.isFinite(value) || value < 0 || value > 1) {
    ctx.addIssue({ code: 'custom', message: `${where}: ${JSON.stringify(text)} is not a rate between 0 and 1` });
    return 0;
  }
  return value;
};

export const SampleRates = z
  .string()
  .default('0')
  .transform((text, ctx): SampleRates => {
    const trimmed = text.trim();
    if (trimmed === '') return { all: 0, byModel: new Map() };
    if (!trimmed.includes('=')) return { all: rate(trimmed, 'REPLAY_SAMPLE_RATE', ctx), byModel: new Map() };
    const byModel = new Map<string, number>();
    for (const part of trimmed.split(',')) {
      const [name = '', value = '', ...rest] = part.split('=').map((s) => s.trim());
      if (rest.length > 0 || !ModelName.safeParse(name).success) {
        ctx.addIssue({
          code: 'custom',
          message: `REPLAY_SAMPLE_RATE: ${JSON.stringify(part)} is not <model>=<rate> (a number for every model, or name=rate,name=rate)`,
        });
        continue;
      }
      if (byModel.has(name)) ctx.addIssue({ code: 'custom', message: `REPLAY_SAMPLE_RATE names ${name} twice` });
      byModel.set(name, rate(value, `REPLAY_SAMPLE_RATE for ${name}`, ctx));
    }
    return { byModel };
  })
  .describe(
    "Share of each model's completed jobs whose input and answer are recorded to REPLAY_STORE for replay (0..1): one number for every served model, or `name=rate,name=rate` (models not named: 0). 0 (the default): recording off",
  );

export const replayConfigShape = {
  REPLAY_SAMPLE_RATE: SampleRates,
  REPLAY_STORE: z
    .string()
    .min(1)
    .superRefine((uri, ctx) => {
      try {
        parseReplayStoreLocation(uri);
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: (error as Error).message });
      }
    })
    .optional()
    .describe(
      'Where recorded inputs go: `s3://<bucket>/<prefix>` (credentials from the standard AWS chain) or a local folder; required when REPLAY_SAMPLE_RATE is above 0',
    ),
  REPLAY_S3_ENDPOINT_URL: z
    .url()
    .optional()
    .describe(
      'S3 endpoint of REPLAY_STORE outside AWS (MinIO, moto); unset: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, then MLFLOW_S3_ENDPOINT_URL, then AWS itself',
    ),
  REPLAY_DAILY_LIMIT: env.int(
    1000,
    0,
    10_000_000,
    'Examples recorded per model per UTC day, by all workers together (counted in Redis); past it, sampled jobs are not recorded',
  ),
  REPLAY_RETENTION_DAYS: env.int(
    30,
    1,
    3650,
    'Days a recorded day is kept in REPLAY_STORE; older days are deleted (every S3 version) by one worker at a time, hourly',
  ),
  REPLAY_MAX_IN_FLIGHT: env.int(
    8,
    1,
    1024,
    'Recordings one worker writes at once at most; a sampled job past it is not recorded (counted dropped_busy)',
  ),
  REPLAY_MAX_IN_FLIGHT_BYTES: env.int(
    32 * 1024 * 1024,
    1024,
    4 * 1024 * 1024 * 1024,
    'Image bytes one worker holds for recordings being written, at most (bytes); past it, as REPLAY_MAX_IN_FLIGHT',
  ),
};

type ReplayFields = z.output<z.ZodObject<typeof replayConfigShape>>;

/** The recorder's plan, resolved once with the rest of the configuration; `undefined`: recording off. */
export interface ReplayPlan {
  /** Each served model's rate, only those above 0. */
  readonly rates: ReadonlyMap<ModelName, number>;
  /** Rates named for models this worker does not serve (logged: a typo is seen, another fleet's name is fine). */
  readonly unserved: readonly string[];
  readonly store: ReplayStoreLocation;
  readonly endpoint: string | undefined;
  readonly dailyLimit: number;
  readonly retentionDays: number;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
}

const rateOf = (rates: SampleRates, model: string): number => rates.byModel.get(model) ?? rates.all ?? 0;

/** Cross-field rule, for the worker's `.superRefine`: a rate above 0 needs a store. */
export function checkReplayConfig(config: ReplayFields, ctx: z.RefinementCtx): void {
  const { all, byModel } = config.REPLAY_SAMPLE_RATE;
  const on = (all ?? 0) > 0 || [...byModel.values()].some((r) => r > 0);
  if (on && config.REPLAY_STORE === undefined)
    ctx.addIssue({
      code: 'custom',
      path: ['REPLAY_STORE'],
      message:
        'REPLAY_SAMPLE_RATE records inputs, so REPLAY_STORE must say where (s3://<bucket>/<prefix> or a folder); or set the rate to 0',
    });
}

export function planReplay(
  config: ReplayFields,
  served: readonly ModelName[],
  environment: Readonly<Record<string, string | undefined>> = process.env,
): ReplayPlan | undefined {
  const rates = new Map<ModelName, number>();
  for (const model of served) {
    const r = rateOf(config.REPLAY_SAMPLE_RATE, model);
    if (r > 0) rates.set(model, r);
  }
  if (rates.size === 0 || config.REPLAY_STORE === undefined) return undefined;
  const store = parseReplayStoreLocation(config.REPLAY_STORE);
  return {
    rates,
    unserved: [...config.REPLAY_SAMPLE_RATE.byModel.keys()].filter((m) => !served.includes(m)),
    store,
    endpoint:
      store.kind === 's3'
        ? replayS3Endpoint({ ...environment, REPLAY_S3_ENDPOINT_URL: config.REPLAY_S3_ENDPOINT_URL })
        : undefined,
    dailyLimit: config.REPLAY_DAILY_LIMIT,
    retentionDays: config.REPLAY_RETENTION_DAYS,
    maxInFlight: config.REPLAY_MAX_IN_FLIGHT,
    maxInFlightBytes: config.REPLAY_MAX_IN_FLIGHT_BYTES,
  };
}
