import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { mlflowCredentials } from '@conveyor/shared/config';
import { ServiceFailure, stopSteps, type Service } from '@conveyor/shared/lifecycle';
import type { Logger } from '@conveyor/shared/logger';
import { MlflowAuthError, MlflowClient } from '@conveyor/shared/mlflow/client';
import { closeRedis, createRedis, waitForReady, type Redis } from '@conveyor/shared/redis';
import { AlertSink } from './alerts/alert-sink.js';
import { thresholdsFor, type MonitorConfig } from './config.js';
import { monitorMetrics } from './http/metrics.js';
import { createMonitorServer } from './http/server.js';
import { Monitor } from './monitor.js';
import { ProfileSource } from './reference/profile-source.js';
import { References } from './reference/learned-reference.js';
import { writeReport } from './reports/report.js';
import { MonitorStore } from './store/monitor-store.js';
import { oneByOne, StreamConsumer } from './store/stream-consumer.js';
import { DriftViews } from './views/drift-view.js';
import { ShadowPairs } from './shadow/shadow-pairs.js';
import { ShadowStore } from './shadow/shadow-store.js';
import { ShadowViews } from './views/shadow-view.js';

export interface MonitorService extends Service {
  /** The port of its HTTP endpoint (the one chosen by the system when MONITOR_PORT is 0). */
  readonly port: number;
}

/**
 * The monitor, wired from its configuration (the body main.ts had): Redis, the reference profiles,
 * the stream consumers, the HTTP endpoint. main.ts runs it as a process; tests may start it in-process.
 */
export async function startMonitor(config: MonitorConfig, baseLog: Logger): Promise<MonitorService> {
  const consumerName = `${os.hostname()}-${process.pid}`;
  const log = baseLog.child({ consumer: consumerName });

  const redis = createRedis(config.REDIS_URL, 'consumer', `conveyor:monitor:${consumerName}`, log);
  // Blocking reads get connections of their own.
  const blocking = (role: string) =>
    createRedis(config.REDIS_URL, 'consumer', `conveyor:monitor-${role}:${consumerName}`, log, { enableAutoPipelining: false });
  const predictionsConnection = blocking('predictions');
  const feedbackConnection = blocking('feedback');
  const shadowConnection = blocking('shadow');
  const connections = [redis, predictionsConnection, feedbackConnection, shadowConnection];
  await Promise.all(connections.map((r) => waitForReady(r, 30_000)));

  const mlflow = config.MLFLOW_TRACKING_URI
    ? new MlflowClient(config.MLFLOW_TRACKING_URI, { credentials: mlflowCredentials(config) })
    : undefined;
  await checkRegistry(mlflow, connections, config, log);
  const store = new MonitorStore(redis, config.REDIS_PREFIX);
  const profiles = profileSource(config, mlflow, log);
  const alerts = alertSink(config, redis, log);
  const windows = { windowSize: config.WINDOW_SIZE, minWindow: config.MIN_WINDOW, thresholdsFor: thresholdsFor(config) };
  const references = new References(
    profiles,
    store,
    { windows: config.REFERENCE_LEARN_WINDOWS, windowSize: config.WINDOW_SIZE },
    log.child({ module: 'references' }),
  );
  const monitor = new Monitor(
    store,
    references,
    alerts,
    {
      ...windows,
      policy: { consecutive: config.ALERT_CONSECUTIVE, cooldownMs: config.ALERT_COOLDOWN_MS },
      quality: {
        window: config.QUALITY_WINDOW,
        minLabels: config.QUALITY_MIN_LABELS,
        target: config.QUALITY_TARGET,
        confidence: config.QUALITY_CONFIDENCE,
      },
      predictionTtlSeconds: config.PREDICTION_TTL_SECONDS,
    },
    log,
  );
  const views = new DriftViews(store, references, windows);
  const { shadow, shadowViews } = shadowParts(config, consumerName, { reads: shadowConnection, state: redis }, log);

  const on = { predictions: predictionsConnection, feedback: feedbackConnection };
  const { predictions, feedback } = streamConsumers(config, consumerName, monitor, on, log);

  const report = async () => {
    const files = await writeReport(await store.windowRecords(), path.resolve(config.REPORT_DIR));
    log.info(files, 'drift report written');
    return files;
  };
  const server = createMonitorServer({
    driftView: async (model) => ({ ...(await views.view(model)), shadows: await shadowViews.view(model) }),
    registry: monitorMetrics(store, monitor, { predictions, feedback, shadow }, profiles, shadowViews),
    writeReport: report,
    ...(config.MONITOR_TOKEN ? { writeToken: config.MONITOR_TOKEN } : {}),
    redisPing: () => redis.ping(),
    log,
  });

  const { sweeper, reporter } = startTimers(monitor, report, config, log);

  const stop = stopMonitor(log, { predictions, feedback, shadow, sweeper, reporter, server, alerts, connections });

  await Promise.all([predictions.start(), feedback.start(), shadow.start()]);
  const port = await listen(server, config);
  log.info({ port, windowSize: config.WINDOW_SIZE }, 'monitor listening');
  return { stop, port };
}

/**
 * Refused credentials are a configuration error to report now (exit 77, EX_NOPERM), not reference
 * profiles that silently never load; an unreachable registry is not (profiles are fetched when needed).
 */
async function checkRegistry(
  mlflow: MlflowClient | undefined,
  connections: readonly Redis[],
  config: MonitorConfig,
  log: Logger,
): Promise<void> {
  await mlflow?.checkAccess().catch(async (error: unknown) => {
    if (!(error instanceof MlflowAuthError)) {
      log.warn({ err: error }, 'MLflow unreachable at start-up; reference profiles are fetched from it when needed');
      return;
    }
    log.fatal({ err: error, registry: config.MLFLOW_TRACKING_URI }, error.message);
    await Promise.all(connections.map((r) => closeRedis(r)));
    throw new ServiceFailure('MLflow refused the credentials', 77, true, { cause: error });
  });
}

function profileSource(config: MonitorConfig, mlflow: MlflowClient | undefined, log: Logger): ProfileSource {
  return new ProfileSource(
    {
      ...(mlflow ? { client: mlflow } : {}),
      ...(config.MODEL_SIGNING_PUBLIC_KEY_FILE
        ? { signingKey: createPublicKey(readFileSync(config.MODEL_SIGNING_PUBLIC_KEY_FILE, 'utf8')) }
        : {}),
      modelDir: path.resolve(config.MODEL_DIR),
      modelsDir: path.resolve(config.MODELS_DIR),
    },
    log.child({ module: 'profiles' }),
  );
}

function alertSink(config: MonitorConfig, redis: Redis, log: Logger): AlertSink {
  const keys = redisKeys(config.REDIS_PREFIX);
  return new AlertSink(
    redis,
    keys.alerts,
    log.child({ module: 'alerts' }),
    config.ALERT_WEBHOOK_URL
      ? {
          url: config.ALERT_WEBHOOK_URL,
          maxAttempts: config.WEBHOOK_MAX_ATTEMPTS,
          ...(config.ALERT_WEBHOOK_SECRET ? { secret: config.ALERT_WEBHOOK_SECRET } : {}),
        }
      : undefined,
  );
}

function listen(server: Server, config: MonitorConfig): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.MONITOR_PORT, config.MONITOR_HOST, () => {
      server.off('error', reject);
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : config.MONITOR_PORT);
    });
  });
}

/** The consumers of the predictions and feedback streams, each on its own (blocking) connection. */
function streamConsumers(
  config: MonitorConfig,
  consumerName: string,
  monitor: Monitor,
  on: { predictions: Redis; feedback: Redis },
  log: Logger,
) {
  const keys = redisKeys(config.REDIS_PREFIX);
  const consumerOptions = {
    group: 'monitor',
    consumer: consumerName,
    blockMs: 1000,
    claimIdleMs: config.CLAIM_IDLE_MS,
  };
  const predictions = new StreamConsumer(
    on.predictions,
    // Large reads: the per-read costs (round trips, the script call, the XACK) are shared by the batch.
    { ...consumerOptions, stream: keys.predictions, count: 500, maxDeliveries: 5, lingerMs: config.READ_LINGER_MS },
    (entries) => monitor.handlePredictions(entries),
    log.child({ module: 'predictions' }),
  );
  const feedback = new StreamConsumer(
    on.feedback,
    // Feedback may arrive before its prediction was applied: it is retried, then dead-lettered.
    {
      ...consumerOptions,
      stream: keys.feedbackStream,
      count: 200,
      maxDeliveries: 20,
      claimIdleMs: Math.min(config.CLAIM_IDLE_MS, 2000),
    },
    oneByOne((entry) => monitor.handleFeedback(entry), log.child({ module: 'feedback' })),
    log.child({ module: 'feedback' }),
  );

  return { predictions, feedback };
}

/**
 * Shadow pairs (docs/shadow.md): the consumer of the shadow stream, counting pairs into agreement
 * windows of the same size as drift's (each job once), and the view that shows them beside drift.
 */
function shadowParts(config: MonitorConfig, consumerName: string, on: { reads: Redis; state: Redis }, log: Logger) {
  const store = new ShadowStore(on.state, config.REDIS_PREFIX);
  const pairs = new ShadowPairs(
    store,
    { windowSize: config.WINDOW_SIZE, ttlSeconds: config.PREDICTION_TTL_SECONDS },
    log.child({ module: 'shadow' }),
  );
  const shadow = new StreamConsumer(
    on.reads,
    {
      stream: redisKeys(config.REDIS_PREFIX).shadowStream,
      group: 'monitor',
      consumer: consumerName,
      count: 500,
      blockMs: 1000,
      claimIdleMs: config.CLAIM_IDLE_MS,
      maxDeliveries: 5,
      lingerMs: config.READ_LINGER_MS,
    },
    (entries) => pairs.handle(entries),
    log.child({ module: 'shadow' }),
  );
  return { shadow, shadowViews: new ShadowViews(store, config.MIN_WINDOW) };
}

/** Stop consuming, then timers and HTTP, then the alert webhooks in flight, Redis last. */
function stopMonitor(
  log: Logger,
  parts: {
    predictions: StreamConsumer;
    feedback: StreamConsumer;
    shadow: StreamConsumer;
    sweeper: NodeJS.Timeout;
    reporter: NodeJS.Timeout | undefined;
    server: Server;
    alerts: AlertSink;
    connections: readonly Redis[];
  },
) {
  const { predictions, feedback, shadow, sweeper, reporter, server, alerts, connections } = parts;
  return stopSteps(log, [
    { name: 'stop consuming', run: () => Promise.all([predictions.stop(), feedback.stop(), shadow.stop()]) },
    {
      name: 'timers and http',
      run: async () => {
        clearInterval(sweeper);
        clearInterval(reporter);
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
      },
    },
    { name: 'webhook deliveries', run: () => alerts.drain() },
    { name: 'redis', run: () => Promise.all(connections.map((r) => closeRedis(r))) },
  ]);
}

/** The window sweep, and the periodic report (REPORT_INTERVAL_MS; 0: none). */
function startTimers(monitor: Monitor, report: () => Promise<unknown>, config: MonitorConfig, log: Logger) {
  // A window closed by a monitor that died before evaluating it is picked up here.
  const sweeper = setInterval(
    () => void monitor.evaluatePending().catch((error: unknown) => log.warn({ err: error }, 'window sweep failed')),
    1000,
  );
  const reporter =
    config.REPORT_INTERVAL_MS > 0
      ? setInterval(
          () => void report().catch((error: unknown) => log.warn({ err: error }, 'report failed')),
          config.REPORT_INTERVAL_MS,
        )
      : undefined;

  return { sweeper, reporter };
}
