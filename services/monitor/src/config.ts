import { z } from 'zod';
import {
  checkMlflowAuth,
  checkRedisConfig,
  env,
  logConfigShape,
  mlflowAuthShape,
  redisConfigShape,
} from '@conveyor/shared/config';

const Thresholds = z
  .object({ warn: z.number().min(0), alert: z.number().min(0) })
  .refine((t) => t.alert >= t.warn, { error: 'alert must be ≥ warn' });

const MonitorFields = z.object({
  ...redisConfigShape,
  ...logConfigShape,
  MONITOR_PORT: env.int(9100, 0, 65535, 'HTTP port of the monitor (/drift, /metrics, /reports, /health)'),
  MONITOR_HOST: env.string(
    '127.0.0.1',
    'Interface the monitor listens on; the default keeps it to this machine (0.0.0.0: every interface, as compose sets inside its network)',
  ),
  MONITOR_TOKEN: z
    .string()
    .min(16, 'at least 16 characters')
    .optional()
    .describe(
      'Bearer token for writes to the monitor (POST /reports with `Authorization: Bearer <token>`, at least 16 characters); unset: writes are refused with 403',
    ),
  WINDOW_SIZE: env.int(
    500,
    20,
    1_000_000,
    'Predictions per drift window (tumbling, per model version); 500 keeps false alarms near zero',
  ),
  MIN_WINDOW: env.int(200, 10, 1_000_000, 'Below this many predictions a window reports insufficient_data instead of a PSI'),
  REFERENCE_LEARN_WINDOWS: env.int(
    2,
    0,
    1000,
    'For a model version without a measured reference profile: windows (of WINDOW_SIZE predictions) pooled into a reference learned from its first traffic before drift is judged; meanwhile its windows say `learning` and raise no drift alert. 0: never learn (such windows stay `no_reference`)',
  ),
  DRIFT_WARN: env.number(0.1, 0, 100, 'Default PSI at which a feature is in WARN'),
  DRIFT_ALERT: env.number(0.25, 0, 100, 'Default PSI at which a feature is in ALERT'),
  DRIFT_THRESHOLDS: z
    .string()
    .default('{}')
    .transform((text, ctx) => {
      try {
        return z.record(z.string(), Thresholds).parse(JSON.parse(text));
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: `not a JSON object of {warn, alert} per feature: ${(error as Error).message}` });
        return z.NEVER;
      }
    })
    .describe(
      'Per-feature overrides as JSON, e.g. {"confidence":{"warn":0.15,"alert":0.3}}; `embedding` is the share of drifted principal components (default 0.25/0.5), a component drifting at the `embedding-component` warn PSI (default 0.2)',
    ),
  ALERT_CONSECUTIVE: env.int(2, 1, 100, 'Windows in a row that must agree before a state changes (hysteresis)'),
  ALERT_COOLDOWN_MS: env.int(
    600_000,
    0,
    86_400_000,
    'After a resolution, a new episode of the same feature within this time is not announced again',
  ),
  QUALITY_WINDOW: env.int(500, 10, 1_000_000, 'Labelled predictions the rolling accuracy is computed over'),
  QUALITY_MIN_LABELS: env.int(100, 1, 1_000_000, 'Labelled predictions needed before quality is judged'),
  QUALITY_TARGET: env.number(
    0.95,
    0,
    1,
    'Rolling accuracy below which quality warns (alerts when the whole 95 % interval is below)',
  ),
  QUALITY_CONFIDENCE: env.number(0.5, 0, 1, 'Confidence threshold of the rolling accuracy (coverage is the share above it)'),
  ALERT_WEBHOOK_URL: z
    .url()
    .optional()
    .describe('POST every alert here as JSON (signed with ALERT_WEBHOOK_SECRET, retried with backoff)'),
  ALERT_WEBHOOK_SECRET: env.optionalString('Shared secret for the X-Conveyor-Signature HMAC-SHA256 header of webhook calls'),
  WEBHOOK_MAX_ATTEMPTS: env.int(5, 1, 20, 'Attempts per webhook call (exponential backoff from 500 ms)'),
  REPORT_DIR: env.string('data/reports', 'Where drift reports (CSV, PNG) are written'),
  REPORT_INTERVAL_MS: env.int(600_000, 0, 86_400_000, 'How often reports are written (0: only on demand, POST /reports)'),
  MLFLOW_TRACKING_URI: z
    .url()
    .optional()
    .describe('MLflow server to fetch the reference profile of registry model versions from'),
  // Reads only: the workers' READ-only account will do.
  ...mlflowAuthShape,
  MODEL_SIGNING_PUBLIC_KEY_FILE: env.optionalString(
    "The trainer's Ed25519 public key (PEM); when set, a registry version's reference profile is used only if the version's release signature lists it with this SHA-256 (as the workers verify what they serve)",
  ),
  MODEL_DIR: env.string('models/digits', 'Local model folder whose reference profile is used for its own version'),
  MODELS_DIR: env.string(
    'models',
    'Folder of model folders (<MODELS_DIR>/<name>), each reference profile used for its own model version',
  ),
  READ_LINGER_MS: env.int(
    200,
    0,
    10_000,
    'After a read of predictions that did not fill a batch, wait this long before the next (events are applied in batches; drift figures lag by at most this)',
  ),
  CLAIM_IDLE_MS: env.int(
    30_000,
    100,
    3_600_000,
    'Events pending this long with a dead consumer are reclaimed by another monitor',
  ),
  PREDICTION_TTL_SECONDS: env.int(
    600,
    60,
    30 * 86_400,
    "How long the monitor keeps its record of each prediction (one key per job): it counts a redelivered event once, and joins feedback from gateways that do not send the prediction with it. Keep it above CLAIM_IDLE_MS × 5 deliveries; feedback itself may come as long as the job's result is kept (RESULT_TTL_SECONDS)",
  ),
  SHUTDOWN_BUDGET_MS: env.int(10_000, 100, 300_000, 'On SIGTERM, time allowed to finish the batch in hand'),
});
// Cross-field rules (user and password together, no credentials in the URL) need the whole object.
export const MonitorConfig = MonitorFields.superRefine(checkMlflowAuth).superRefine(checkRedisConfig);
export type MonitorConfig = z.infer<typeof MonitorConfig>;

export function thresholdsFor(config: MonitorConfig): (feature: string) => { warn: number; alert: number } {
  // The embedding is judged by the share of its principal components that drifted, a component
  // counting as drifted at a PSI of 0.2 (at the warn PSI, one component in four tripped in 1.2 % of
  // same-distribution windows of 500: measured by bench/drift.bench.ts).
  const defaults: Record<string, { warn: number; alert: number }> = {
    embedding: { warn: 0.25, alert: 0.5 },
    'embedding-component': { warn: 0.2, alert: 0.4 },
  };
  return (feature) =>
    config.DRIFT_THRESHOLDS[feature] ?? defaults[feature] ?? { warn: config.DRIFT_WARN, alert: config.DRIFT_ALERT };
}
