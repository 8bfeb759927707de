import { createPublicKey, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'bullmq';
import sharp from 'sharp';
import { keys as keysOf, QUEUES } from '@conveyor/shared/contract/queue.contract';
import { loadConfigOrExit, mlflowCredentials } from '@conveyor/shared/config';
import { installCrashHandlers, installShutdown } from '@conveyor/shared/lifecycle';
import { createLogger } from '@conveyor/shared/logger';
import { closeRedis, connectionErrorLog, createRedis, waitForReady } from '@conveyor/shared/redis';
import { WorkerConfig } from './config.js';
import { drain } from './drain.js';
import { ModelHost } from './model/model-host.js';
import { ModelWatcher } from './model/model-watcher.js';
import { RegistrySource } from './model/registry-source.js';
import { Heartbeat } from './heartbeat.js';
import { startMetricsServer, type MetricsServer } from './metrics/metrics-server.js';
import { WorkerMetrics } from './metrics/worker-metrics.js';
import { createInferenceProcessor } from './inference.processor.js';
import { ResultPublisher } from './result-publisher.js';
import { restrictDecoders } from '@conveyor/shared/model/decoders';
import { MlflowAuthError, MlflowClient } from '@conveyor/shared/mlflow/client';
import { loadCheckedModel } from '@conveyor/shared/validation/model-folder';

const config = loadConfigOrExit(WorkerConfig);
const workerId = `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
const log = createLogger('inference-worker', config.LOG_LEVEL).child({ workerId });

restrictDecoders();
sharp.cache(false); // every upload is new: libvips' operation cache would only hold memory
sharp.concurrency(config.SHARP_CONCURRENCY);

// The model: from the MLflow registry (followed as its alias moves) when configured, else the
// local model folder (the committed default).
const models = new ModelHost(log);
const inFlight = { count: 0 };
const metrics = new WorkerMetrics({
  model: () => models.ref,
  inFlight: () => inFlight.count,
  concurrency: config.WORKER_CONCURRENCY,
});
// Before the model and Redis: a taken port fails the start at once, and a worker still loading its
// model is already visible to Prometheus (up, no model_info yet).
let metricsServer: MetricsServer | undefined;
if (config.METRICS_PORT !== undefined) {
  try {
    metricsServer = await startMetricsServer(metrics.registry, config.METRICS_PORT, config.METRICS_HOST);
  } catch (error) {
    log.fatal(
      { err: error, port: config.METRICS_PORT, host: config.METRICS_HOST },
      'metrics endpoint could not listen; choose another METRICS_PORT (or leave it unset for none)',
    );
    await new Promise<void>((resolve) => log.flush(() => resolve()));
    process.exit(1);
  }
  log.info(
    {
      port: metricsServer.port,
      host: config.METRICS_HOST,
      url: `http://${config.METRICS_HOST.includes(':') ? `[${config.METRICS_HOST}]` : config.METRICS_HOST}:${metricsServer.port}/metrics`,
    },
    'metrics listening',
  );
} else {
  log.info('metrics endpoint off (METRICS_PORT unset)');
}

let watcher: ModelWatcher | undefined;
if (config.MLFLOW_TRACKING_URI) {
  const source = new RegistrySource(
    new MlflowClient(config.MLFLOW_TRACKING_URI, { credentials: mlflowCredentials(config) }),
    config.MODEL_URI,
    path.resolve(config.MODEL_CACHE_DIR),
    log,
    config.MODEL_SIGNING_PUBLIC_KEY_FILE
      ? createPublicKey(readFileSync(config.MODEL_SIGNING_PUBLIC_KEY_FILE, 'utf8'))
      : undefined,
  );
  watcher = new ModelWatcher(source, models, { threads: config.ORT_THREADS, intervalMs: config.MODEL_POLL_INTERVAL_MS }, log);
  try {
    await watcher.start();
  } catch (error) {
    if (!(error instanceof MlflowAuthError)) throw error;
    // Retrying cannot help: the same credentials get the same answer. Exit 77 (EX_NOPERM).
    log.fatal({ err: error, registry: config.MLFLOW_TRACKING_URI }, error.message);
    await new Promise<void>((resolve) => log.flush(() => resolve()));
    process.exit(77);
  }
} else {
  const model = await loadCheckedModel(path.resolve(config.MODEL_DIR), { threads: config.ORT_THREADS });
  models.replace(model, { name: model.manifest.name, version: model.manifest.version });
  log.info({ model: models.ref, dir: model.dir }, 'model loaded');
}

const keys = keysOf(config.REDIS_PREFIX);
const redis = createRedis(config.REDIS_URL, 'consumer', `conveyor:worker:${workerId}`, log);
await waitForReady(redis, 30_000);
const stats = { processed: 0, failed: 0 };
const publisher = new ResultPublisher(redis, keys, {
  resultTtlSeconds: config.RESULT_TTL_SECONDS,
  streamMaxLen: config.PREDICTION_STREAM_MAXLEN,
});
const processor = createInferenceProcessor({
  redis,
  keys,
  publisher,
  models,
  workerId,
  limits: { maxPixels: config.MAX_IMAGE_PIXELS, maxSide: config.MAX_IMAGE_SIDE, maxAspectRatio: config.MAX_ASPECT_RATIO },
  preprocessTimeoutMs: config.PREPROCESS_TIMEOUT_MS,
  topK: config.TOP_K,
  eventEmbeddings: config.EVENT_EMBEDDINGS,
  log,
  stats,
  inFlight,
  metrics,
});

// BullMQ does not close a connection it was given; shutdown closes it below.
const bullConnection = createRedis(config.REDIS_URL, 'consumer', `conveyor:worker-bull:${workerId}`, log, {
  enableAutoPipelining: false,
});
const worker = new Worker(QUEUES.inference, processor, {
  connection: bullConnection,
  prefix: config.REDIS_PREFIX,
  concurrency: config.WORKER_CONCURRENCY,
  lockDuration: config.LOCK_DURATION_MS,
  stalledInterval: config.STALLED_INTERVAL_MS,
  // A job may be orphaned by two crashed workers before it is declared failed.
  maxStalledCount: 2,
  autorun: false,
});
// BullMQ re-emits its connections' errors here: one warning per outage, not one per reconnect attempt.
const workerErrors = connectionErrorLog(log, { error: 'worker error', restored: 'worker connection restored' });
worker.on('error', (error) => workerErrors.error(error));
bullConnection.on('ready', () => workerErrors.restored());
worker.on('stalled', (jobId) => log.warn({ jobId }, 'took over a stalled job'));

const heartbeat = new Heartbeat(
  redis,
  keys,
  workerId,
  config.HEARTBEAT_INTERVAL_MS,
  () => ({
    model: models.ref!,
    concurrency: config.WORKER_CONCURRENCY,
    ...stats,
  }),
  () => models.labels,
  log,
  config.HEALTH_FILE,
);

const shutdown = installShutdown(
  log,
  [
    {
      name: 'drain jobs',
      run: () =>
        drain(worker, config.SHUTDOWN_BUDGET_MS, log, {
          inFlight: () => inFlight.count,
          redisReady: () => bullConnection.status === 'ready' && redis.status === 'ready',
        }),
    },
    { name: 'heartbeat', run: () => heartbeat.stop() },
    {
      name: 'model',
      run: () => {
        watcher?.stop();
        return models.close();
      },
    },
    { name: 'redis', run: () => Promise.all([closeRedis(redis), closeRedis(bullConnection)]) },
    // Last, so the drain itself can be watched.
    { name: 'metrics', run: () => metricsServer?.close() ?? Promise.resolve() },
  ],
  config.SHUTDOWN_BUDGET_MS + 3000,
);
installCrashHandlers(log, shutdown);

await heartbeat.start();
void worker.run();
log.info({ queue: QUEUES.inference, concurrency: config.WORKER_CONCURRENCY }, 'worker ready');
