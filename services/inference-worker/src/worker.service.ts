import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { JobStore } from '@conveyor/shared/contract/job-store';
import { ResultCacheStore } from '@conveyor/shared/contract/result-cache-store';
import { WorkerResultCache } from './result-cache.js';
import { FleetStore } from '@conveyor/shared/contract/fleet-store';
import { redisKeys, type RedisKeys } from '@conveyor/shared/contract/redis-keys';
import { mlflowCredentials } from '@conveyor/shared/config';
import { ServiceFailure, stopSteps, type Service } from '@conveyor/shared/lifecycle';
import { startTracing, type Tracing } from '@conveyor/shared/tracing';
import type { Logger } from '@conveyor/shared/logger';
import { closeRedis, createBullConnection, createRedis, waitForReady, type Redis } from '@conveyor/shared/redis';
import type { WorkerConfig } from './config.js';
import { drain } from './drain.js';
import { ModelServing } from './model/model-serving.js';
import { RegistrySource } from './model/registry-source.js';
import { Heartbeat } from './heartbeat.js';
import { startMetricsServer, type MetricsServer } from './metrics/metrics-server.js';
import { WorkerMetrics } from './metrics/worker-metrics.js';
import { createInferenceProcessor } from './inference.processor.js';
import { ShadowLanes } from './shadow/shadow-lanes.js';
import { shadowLoader } from './model/shadow-loader.js';
import { startReplayRecording, type ReplayRecording } from './replay/replay-recorder.js';
import { restrictDecoders } from '@conveyor/shared/model/decoders';
import { MlflowAuthError, MlflowClient } from '@conveyor/shared/mlflow/client';

export interface WorkerService extends Service {
  /** Settles once every model is warm and taking jobs; rejects (a ServiceFailure) if one cannot be served. */
  readonly ready: Promise<void>;
  readonly workerId: string;
}

/**
 * An inference worker, wired from its configuration: the metrics endpoint first, Redis, then each
 * configured model loaded, warmed up, taking jobs and announced, side by side. It returns once Redis
 * is up; `ready` follows the models. main.ts runs it as a process; tests start it in-process.
 */
export async function startWorker(config: WorkerConfig, baseLog: Logger): Promise<WorkerService> {
  const workerId = `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const log = baseLog.child({ workerId });

  restrictDecoders();
  sharp.cache(false); // every upload is new: libvips' operation cache would only hold memory
  sharp.concurrency(config.SHARP_CONCURRENCY);

  // Every configured model gets its own host, queue, concurrency and metrics series (the `model`
  // label is bounded by MODELS); they load and warm up side by side, each taking jobs once it is warm.
  // The cache is built once Redis is up (below); a model begins its cache generation after that, when it loads.
  const caching: { cache?: WorkerResultCache } = {};
  const served = config.models.map(
    (plan) =>
      new ModelServing(plan, log.child({ modelName: plan.name, queue: plan.queue }), config.TOP_K, (manifest) =>
        caching.cache ? caching.cache.begin(plan.name, manifest) : Promise.resolve(),
      ),
  );
  const metrics = new WorkerMetrics({ models: served.map((s) => s.metricsSource()) });
  // Before the models and Redis: a taken port fails the start at once, and a worker still loading its
  // models is already visible to Prometheus (up, no model_info yet).
  const metricsServer = await startMetricsEndpoint(config, metrics, log);

  const tracing = startTracing(config, 'inference-worker', workerId);
  const keys = redisKeys(config.REDIS_PREFIX);
  // Without auto-pipelining: a worker's commands come one job at a time (input, commit), rarely two in
  // one tick, and ioredis builds a pipeline object for every batch it makes, a single command included
  // (it copies each script defined on the connection into it): that was CPU per command for nothing.
  const redis = createRedis(config.REDIS_URL, 'consumer', `conveyor:worker:${workerId}`, log, { enableAutoPipelining: false });
  await waitForReady(redis, 30_000);
  const jobs = new JobStore(redis, keys, {
    resultTtlSeconds: config.RESULT_TTL_SECONDS,
    predictionStreamMaxLen: config.PREDICTION_STREAM_MAXLEN,
  });
  const cache = (caching.cache = workerResultCache(config, redis, keys, log));
  // BullMQ does not close a connection it was given; shutdown closes it below.
  const { connection: bullConnection, errors: workerErrors } = await createBullConnection(
    config.REDIS_URL,
    'consumer',
    `conveyor:worker-bull:${workerId}`,
    log,
    { error: 'worker error', restored: 'worker connection restored' },
  );

  const heartbeat = heartbeatOf(served, new FleetStore(redis, keys), workerId, config, log);
  const replay = await startReplayRecording(config.replay, { redis, keys, registry: metrics.registry, log });

  const registry = registryOf(config);
  const shadows = new ShadowLanes(config, shadowLoader(config, registry), redis, keys, metrics.registry, log);

  const stop = stopWorker(config, log, { served, heartbeat, redis, bullConnection, metricsServer, tracing, shadows, replay });

  const serving: Serving = {
    config,
    registry,
    jobs,
    cache,
    workerId,
    metrics,
    bullConnection,
    workerErrors,
    heartbeat,
    log,
    tracing,
    shadows,
    recorder: replay?.recorder,
  };
  const serve = (model: ModelServing) => serveOrRefuse(model, serving, served);

  // Serving goes on after start() returns (a model may take long to download): `ready` says how it went.
  const ready = serveAll(served, serve, config, log);
  // Nobody may be listening yet (a test that only stops it); runService and tests read it.
  ready.catch(() => undefined);
  return { stop, ready, workerId };
}

/** The worker's heartbeat: what it serves and refuses, and its counts, every HEARTBEAT_INTERVAL_MS. */
function heartbeatOf(
  served: readonly ModelServing[],
  fleet: FleetStore,
  workerId: string,
  config: WorkerConfig,
  log: Logger,
): Heartbeat {
  return new Heartbeat(
    fleet,
    workerId,
    config.HEARTBEAT_INTERVAL_MS,
    () => ({
      models: served.flatMap((s) => s.served() ?? []),
      announcements: served.flatMap((s) => s.announcement() ?? []),
      refused: served.flatMap((s) => s.refused() ?? []),
      processed: served.reduce((sum, s) => sum + s.counts.processed, 0),
      failed: served.reduce((sum, s) => sum + s.counts.failed, 0),
    }),
    log,
    config.HEALTH_FILE,
  );
}

/** The model registry to serve from, with the key that checks signatures, when MLFLOW_TRACKING_URI is set. */
function registryOf(config: WorkerConfig): Serving['registry'] {
  return config.MLFLOW_TRACKING_URI
    ? {
        client: new MlflowClient(config.MLFLOW_TRACKING_URI, { credentials: mlflowCredentials(config) }),
        signingKey: config.MODEL_SIGNING_PUBLIC_KEY_FILE
          ? createPublicKey(readFileSync(config.MODEL_SIGNING_PUBLIC_KEY_FILE, 'utf8'))
          : undefined,
      }
    : undefined;
}

/** Always built: a job's commit clears the in-flight record it leads even with RESULT_CACHE off here. */
function workerResultCache(config: WorkerConfig, redis: Redis, keys: RedisKeys, log: Logger): WorkerResultCache {
  return new WorkerResultCache(
    new ResultCacheStore(redis, keys),
    config.RESULT_CACHE
      ? {
          ttlSeconds: config.RESULT_CACHE_TTL_SECONDS,
          maxBytesPerModel: config.RESULT_CACHE_MAX_BYTES_PER_MODEL,
          entriesPerClient: config.RESULT_CACHE_ENTRIES_PER_CLIENT,
        }
      : undefined,
    config.TOP_K,
    log.child({ module: 'result-cache' }),
  );
}

/** The metrics endpoint, if METRICS_PORT is set; a port that cannot be listened on fails the start. */
async function startMetricsEndpoint(
  config: WorkerConfig,
  metrics: WorkerMetrics,
  log: Logger,
): Promise<MetricsServer | undefined> {
  let metricsServer: MetricsServer | undefined;
  if (config.METRICS_PORT !== undefined) {
    try {
      metricsServer = await startMetricsServer(metrics.registry, config.METRICS_PORT, config.METRICS_HOST);
    } catch (error) {
      log.fatal(
        { err: error, port: config.METRICS_PORT, host: config.METRICS_HOST },
        'metrics endpoint could not listen; choose another METRICS_PORT (or leave it unset for none)',
      );
      throw new ServiceFailure('the metrics endpoint could not listen', 1, true, { cause: error });
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

  return metricsServer;
}

/** Serves every model side by side; rejects (with the exit the failure calls for) if one cannot be served. */
async function serveAll(
  served: readonly ModelServing[],
  serve: (model: ModelServing) => Promise<void>,
  config: WorkerConfig,
  log: Logger,
): Promise<void> {
  const outcomes = await Promise.allSettled(served.map((s) => serve(s)));
  const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
  if (failure) {
    const error: unknown = failure.reason;
    if (error instanceof MlflowAuthError) {
      // Retrying cannot help: the same credentials get the same answer. Exit 77 (EX_NOPERM).
      log.fatal({ err: error, registry: config.MLFLOW_TRACKING_URI }, error.message);
      throw new ServiceFailure('MLflow refused the credentials', 77, true, { cause: error });
    }
    log.fatal({ err: error }, 'a model could not be served; stopping');
    throw new ServiceFailure('a model could not be served', 1, true, { cause: error });
  }
  const refused = served.flatMap((s) => s.refused() ?? []);
  if (refused.length === served.length) {
    log.fatal({ refused }, 'no configured model could be served; stopping');
    throw new ServiceFailure('no model could be served', 1, true);
  }
  if (served.every((s) => s.served() ?? s.refused())) {
    log.info(
      {
        models: served
          .filter((s) => s.served())
          .map((s) => ({ name: s.name, queue: s.plan.queue, concurrency: s.plan.concurrency })),
        ...(refused.length > 0 ? { refused: refused.map((r) => r.name) } : {}),
      },
      'worker ready',
    );
  }
}

/** The worker's shutdown: drain the models' jobs within the budget, stop the heartbeat, close models, Redis, metrics last. */
function stopWorker(
  config: WorkerConfig,
  log: Logger,
  parts: {
    served: readonly ModelServing[];
    heartbeat: Heartbeat;
    redis: Redis;
    bullConnection: Redis;
    metricsServer: MetricsServer | undefined;
    tracing: Tracing;
    shadows: ShadowLanes;
    replay: ReplayRecording | undefined;
  },
) {
  const { served, heartbeat, redis, bullConnection, metricsServer, tracing, shadows, replay } = parts;
  const inFlight = () => served.reduce((sum, s) => sum + s.counts.inFlight, 0);
  return stopSteps(log, [
    {
      name: 'drain jobs',
      run: async () => {
        for (const s of served) s.stopLoading();
        await Promise.all(
          served.flatMap((s) =>
            s.bullWorker
              ? [
                  drain(s.bullWorker, config.SHUTDOWN_BUDGET_MS, log, {
                    inFlight,
                    redisReady: () => bullConnection.status === 'ready' && redis.status === 'ready',
                  }),
                ]
              : [],
          ),
        );
      },
    },
    // After the drain (its jobs may still sample), before Redis (a write counts against the daily limit there first).
    { name: 'replay recordings', run: () => replay?.close(Math.min(5000, config.SHUTDOWN_BUDGET_MS)) ?? Promise.resolve() },
    { name: 'heartbeat', run: () => heartbeat.stop() },
    // After the drain (its jobs' last offers), before Redis (a run in hand publishes its pair).
    { name: 'shadows', run: () => shadows.close() },
    { name: 'models', run: () => Promise.all(served.map((s) => s.close())) },
    { name: 'redis', run: () => Promise.all([closeRedis(redis), closeRedis(bullConnection)]) },
    // After the drain, whose jobs' spans it exports.
    { name: 'traces', run: () => tracing.shutdown() },
    // Last, so the drain itself can be watched.
    { name: 'metrics', run: () => metricsServer?.close() ?? Promise.resolve() },
  ]);
}

/** What serving a model needs of the worker. */
interface Serving {
  readonly config: WorkerConfig;
  readonly registry: { client: MlflowClient; signingKey: KeyObject | undefined } | undefined;
  readonly jobs: JobStore;
  readonly cache: WorkerResultCache;
  readonly workerId: string;
  readonly metrics: WorkerMetrics;
  readonly bullConnection: Redis;
  readonly workerErrors: { error(error: unknown): void };
  readonly heartbeat: Heartbeat;
  readonly log: Logger;
  readonly tracing: Tracing;
  readonly shadows: ShadowLanes;
  readonly recorder: ReplayRecording['recorder'] | undefined;
}

/**
 * One model's folder failing its checks (a bad manifest, a wrong sha256, a broken export) is that
 * model's problem, not the deployment's: it is refused and reported, the others are served. Only a
 * worker left with nothing to serve stops. Refused credentials stop the worker whatever the model.
 */
async function serveOrRefuse(model: ModelServing, serving: Serving, served: readonly ModelServing[]): Promise<void> {
  try {
    await serveModel(model, serving);
  } catch (error) {
    if (error instanceof MlflowAuthError) throw error;
    model.refuse(error);
    // Beats already going: say so now, not at the next beat (else the first warm model's beat will).
    if (served.some((s) => s.served())) await serving.heartbeat.announce().catch(() => undefined);
  }
}

/** Load, warm up, take jobs, then announce: in that order, so no caller is routed to a cold model. */
async function serveModel(model: ModelServing, serving: Serving): Promise<void> {
  const { config, registry, jobs, cache, workerId, metrics } = serving;
  const { bullConnection, workerErrors, heartbeat, log, tracing, shadows, recorder } = serving;
  const source = registry
    ? new RegistrySource(registry.client, model.plan.uri, path.resolve(config.MODEL_CACHE_DIR), log, registry.signingKey)
    : undefined;
  await model.load(
    {
      threads: config.ORT_THREADS,
      offThread: config.INFERENCE_THREAD,
      callingThreadUpToMs: config.INFERENCE_THREAD_MIN_MS,
      intervalMs: config.MODEL_POLL_INTERVAL_MS,
    },
    source,
  );
  const processor = createInferenceProcessor({
    jobs,
    model: model.name,
    queue: model.plan.queue,
    models: model.host,
    workerId,
    limits: { maxPixels: config.MAX_IMAGE_PIXELS, maxSide: config.MAX_IMAGE_SIDE, maxAspectRatio: config.MAX_ASPECT_RATIO },
    preprocessTimeoutMs: config.PREPROCESS_TIMEOUT_MS,
    topK: config.TOP_K,
    eventEmbeddings: config.EVENT_EMBEDDINGS,
    log: log.child({ modelName: model.name }),
    counts: model.counts,
    metrics: metrics.forModel(model.name),
    tracer: tracing.tracer,
    cache,
    shadow: shadows.hookFor(model.name, model.host.manifest),
    recorder,
  });
  const bull = {
    connection: bullConnection,
    prefix: config.REDIS_PREFIX,
    lockDurationMs: config.LOCK_DURATION_MS,
    stalledIntervalMs: config.STALLED_INTERVAL_MS,
  };
  if (!model.start(processor, bull, (error) => workerErrors.error(error))) return;
  // The first warm model starts the heartbeat; each later one is announced at once, not at the next beat.
  await heartbeat.announce();
  const ref = model.host.ref;
  log.info(
    { modelName: model.name, model: ref, queue: model.plan.queue, concurrency: model.plan.concurrency },
    'model announced',
  );
}
