import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type Koa from 'koa';
import os from 'node:os';
import { JobStore } from '@conveyor/shared/contract/job-store';
import { FleetStore } from '@conveyor/shared/contract/fleet-store';
import { redisKeys, type RedisKeys } from '@conveyor/shared/contract/redis-keys';
import { stopSteps, type Service } from '@conveyor/shared/lifecycle';
import { startTracing, type Tracer, type Tracing } from '@conveyor/shared/tracing';
import type { Logger } from '@conveyor/shared/logger';
import { closeRedis, createBullConnection, createRedis, waitForReady, type Redis } from '@conveyor/shared/redis';
import { createApp } from './app.js';
import type { GatewayConfig } from './config.js';
import { dashboard } from './http/dashboard.js';
import { ConnectionGuard, type ConnectionRefusal } from './http/connection-guard.js';
import { HttpMetrics } from './http/metrics.js';
import { createImageFetcher } from './intake/fetch-image.js';
import { Admission } from './jobs/admission.js';
import { FairQueue, PriorityBands } from './jobs/fair-queue.js';
import { IdempotencyStore } from './jobs/idempotency.js';
import { MemoryGuard } from './jobs/memory-guard.js';
import { UploadBudget } from './intake/upload-guard.js';
import { createAccess } from './access/access.middleware.js';
import { ApiKeyStore } from './access/api-keys.js';
import { JobLookup } from './jobs/job-lookup.js';
import { JobCanceller } from './jobs/job-canceller.js';
import { JobIntake, type JobIntakeParts } from './jobs/job-intake.js';
import { ResultCacheStore } from '@conveyor/shared/contract/result-cache-store';
import { JobSubmitter } from './jobs/job-submitter.js';
import { ModelQueues } from './jobs/model-queues.js';
import { ResultWaiter } from './jobs/result-waiter.js';
import { ModelCatalogue } from './models/model-catalogue.js';
import { CallbackDispatcher } from './callbacks/callback-dispatcher.js';
import { CallbackStore } from './callbacks/callback-store.js';
import { OpenStreams } from './routes/events.route.js';

export interface GatewayService extends Service {
  /** The port it listens on (the one chosen by the system when PORT is 0). */
  readonly port: number;
  /** This instance's reply channel name (workers answer waiting requests on it). */
  readonly gatewayId: string;
}

/** Where jobs are made: admission's places, the priorities (fair queuing's, or the bands alone), and the submitter on the queues' connection. */
function createIntake(
  config: GatewayConfig,
  parts: Pick<JobIntakeParts, 'admission' | 'waiter' | 'callbacks' | 'tracer'> & {
    redis: Redis;
    queueConnection: Redis;
    queues: ModelQueues;
  },
): JobIntake {
  const keys = redisKeys(config.REDIS_PREFIX);
  return new JobIntake({
    ...parts,
    submitter: new JobSubmitter(
      new JobStore(parts.queueConnection, keys, { resultTtlSeconds: config.RESULT_TTL_SECONDS }),
      config.INPUT_TTL_SECONDS,
      config.INPUT_TTL_SECONDS + config.RESULT_TTL_SECONDS,
    ),
    fair: config.FAIR_QUEUING
      ? new FairQueue(parts.redis, keys, {
          tenantShare: config.FAIR_TENANT_SHARE,
          maxDepth: config.MAX_QUEUE_DEPTH,
          pixelsPerCost: config.FAIR_PIXELS_PER_COST,
        })
      : new PriorityBands(),
    // The result cache's look-ups and in-flight records: a job waits at most INPUT_TTL_SECONDS for a worker.
    cache: config.RESULT_CACHE
      ? { store: new ResultCacheStore(parts.redis, keys), inflightTtlMs: config.INPUT_TTL_SECONDS * 1000 }
      : undefined,
  });
}

/** Result callbacks: their dispatcher, taking deliveries on a connection of their own (closed at shutdown). */
function startCallbacks(
  config: GatewayConfig,
  redis: Redis,
  subscriber: Redis,
  jobs: JobStore,
  gatewayId: string,
  log: Logger,
  tracer: Tracer,
) {
  // BullMQ workers block on their connection: the callback deliveries get one of their own.
  const callbackConnection = createRedis(config.REDIS_URL, 'consumer', `conveyor:gateway-callbacks:${gatewayId}`, log);
  const callbacks = new CallbackDispatcher(
    callbackConnection,
    new CallbackStore(redis, redisKeys(config.REDIS_PREFIX)),
    jobs,
    config.REDIS_PREFIX,
    {
      secret: config.CALLBACK_SECRET,
      maxAttempts: config.CALLBACK_MAX_ATTEMPTS,
      backoffMs: config.CALLBACK_BACKOFF_MS,
      timeoutMs: config.CALLBACK_TIMEOUT_MS,
      concurrency: config.CALLBACK_CONCURRENCY,
      receiverConcurrency: config.CALLBACK_RECEIVER_CONCURRENCY,
      maxPendingPerClient: config.CALLBACK_MAX_PENDING_PER_CLIENT,
      sweepSeconds: config.CALLBACK_SWEEP_SECONDS,
      allowCidrs: config.URL_ALLOW_CIDRS,
      inputTtlSeconds: config.INPUT_TTL_SECONDS,
      resultTtlSeconds: config.RESULT_TTL_SECONDS,
    },
    log.child({ module: 'callbacks' }),
    tracer,
  );
  callbacks.start(subscriber, config.REDIS_PREFIX);
  return { callbacks, callbackConnection };
}

/** Which models exist and which can answer, as the workers announce them (see ModelCatalogue). */
function catalogueOf(config: GatewayConfig, fleet: FleetStore, log: Logger): ModelCatalogue {
  return new ModelCatalogue(
    fleet,
    {
      defaultModel: config.DEFAULT_MODEL,
      configured: (config.MODELS ?? []).map((m) => m.name),
      retireAfterMs: config.MODEL_RETIRE_AFTER_SECONDS * 1000,
    },
    log.child({ module: 'model-catalogue' }),
  );
}

/**
 * The gateway, wired from its configuration: Redis connections, the model catalogue, admission,
 * the result waiter, the Koa app and its HTTP server, listening once everything is ready. main.ts
 * runs it as a process; tests start it in-process (PORT 0) and stop it.
 */
export async function startGateway(config: GatewayConfig, log: Logger): Promise<GatewayService> {
  const gatewayId = `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const tracing = startTracing(config, 'gateway', gatewayId);

  const keys = redisKeys(config.REDIS_PREFIX);
  const { redis, subscriber, queueConnection, queues, board } = await connect(config, gatewayId, log);
  const fleet = new FleetStore(redis, keys);
  const catalogue = catalogueOf(config, fleet, log);
  // Read once before serving: the models announced so far get their queues (and dashboard entries) now.
  await catalogue.current();
  for (const model of catalogue.known()) queues.get(model);
  const admission = createAdmission(config, redis);
  const uploadBudget = new UploadBudget(config.MAX_INFLIGHT_UPLOAD_BYTES, config.MAX_INFLIGHT_UPLOAD_BYTES_PER_CLIENT);
  // Made before the server, so that the metrics can read it; attached to the server below.
  // (metrics is made just below; a refusal can only happen once the server listens)
  const connections = connectionGuard(config, log, (reason) => metrics.connectionsRefused.inc({ reason }));
  const reconciler = reconcileNowAndThen(admission, config.RECONCILE_INTERVAL_MS, log);
  const metrics = httpMetrics(uploadBudget, connections, catalogue, admission, queues, tracing.enabled);
  const jobs = new JobStore(redis, keys, { resultTtlSeconds: config.RESULT_TTL_SECONDS });
  const waiter = new ResultWaiter(subscriber, jobs, keys, gatewayId, log.child({ module: 'result-waiter' }));
  await waiter.start();
  const { callbacks, callbackConnection } = startCallbacks(config, redis, subscriber, jobs, gatewayId, log, tracing.tracer);

  const eventStreams = new OpenStreams();
  const { lookup, canceller } = jobAccess(config, catalogue, queues, jobs, gatewayId, new ResultCacheStore(redis, keys));
  const app = createApp({
    ...(board ? { dashboard: board.middleware } : {}),
    config,
    log,
    tracing,
    redis,
    keys,
    jobs,
    fleet,
    metrics,
    catalogue,
    uploadBudget,
    access: accessFor(config, redis),
    callbacks,
    eventLimits: {
      maxConnections: config.SSE_MAX_CONNECTIONS,
      maxPerClient: config.SSE_MAX_PER_CLIENT,
      maxSeconds: config.SSE_MAX_SECONDS,
    },
    eventStreams,
    trustProxy: config.TRUST_PROXY,
    trustProxyHops: config.TRUST_PROXY_HOPS,
    corsOrigins: config.CORS_ORIGINS,
    monitorUrl: config.MONITOR_URL,
    lookup,
    canceller,
    intake: createIntake(config, { redis, queueConnection, queues, admission, waiter, callbacks, tracer: tracing.tracer }),
    callbackUrl: (values) => callbacks.parse(values),
    idempotency: idempotencyStore(config, redis, keys),
    fetchImage: imageFetcher(config),
  });

  const server = createHttpServer(app.callback(), config, connections);
  const closed = new Promise<void>((resolve) => server.on('close', () => resolve()));

  const stop = stopGateway(config, log, {
    server,
    closed,
    connections,
    waiter,
    eventStreams,
    reconciler,
    queues,
    callbacks,
    connectionsToClose: [redis, subscriber, queueConnection, callbackConnection],
    tracing,
  });

  const port = await listen(server, config);
  log.info({ port, host: config.HOST, gatewayId }, 'gateway listening');
  return { stop, port, gatewayId };
}

/** A job of any known model, found (polls) or cancelled: both search every known model's queue. */
function jobAccess(
  config: GatewayConfig,
  catalogue: ModelCatalogue,
  queues: ModelQueues,
  jobs: JobStore,
  gatewayId: string,
  cache: ResultCacheStore,
) {
  const knownQueues = async () => {
    await catalogue.current();
    return catalogue.known().map((model) => ({ model, queue: queues.get(model) }));
  };
  return {
    lookup: new JobLookup(knownQueues, jobs),
    canceller: new JobCanceller(knownQueues, jobs, {
      gatewayId,
      markTtlSeconds: config.INPUT_TTL_SECONDS + config.RESULT_TTL_SECONDS,
      cache,
    }),
  };
}

/** The Idempotency-Key records (jobs/idempotency.ts), within each client's share. */
function idempotencyStore(config: GatewayConfig, redis: Redis, keys: RedisKeys): IdempotencyStore {
  return new IdempotencyStore(redis, keys, {
    ttlSeconds: config.IDEMPOTENCY_TTL_SECONDS,
    // Outlasts the longest step of making a job (a URL fetch) with room for a slow Redis.
    leaseMs: config.URL_TOTAL_TIMEOUT_MS + 30_000,
    keysPerClient: config.IDEMPOTENCY_KEYS_PER_CLIENT,
  });
}

/** The HTTP server, with the timeouts that bound slow and silent clients, counted by the connection guard. */
function createHttpServer(handle: ReturnType<Koa['callback']>, config: GatewayConfig, connections: ConnectionGuard): Server {
  // Node checks the headers and request timeouts only every connectionsCheckingInterval (30 s by
  // default): a silent connection then lived up to 45 s. Checked every second, it lives
  // HEADERS_TIMEOUT_MS (+ ≤ 1 s), which is what bounds a client opening connections and sending nothing.
  const server = createServer({ connectionsCheckingInterval: 1000 }, (req, res) => void handle(req, res));
  // A request may legitimately wait SYNC_WAIT_MAX_SECONDS for its result; slow uploads may not linger forever.
  server.requestTimeout = (config.SYNC_WAIT_MAX_SECONDS + 30) * 1000;
  server.headersTimeout = config.HEADERS_TIMEOUT_MS;
  // Node's default of 5 s races clients that keep idle connections about as long: a request sent
  // on a connection the gateway is closing at that moment fails (EPIPE/ECONNRESET) before it is read.
  // Idle connections are bounded by the connection guard, which closes them first when full.
  server.keepAliveTimeout = config.KEEP_ALIVE_TIMEOUT_MS;
  // Connections are counted per client address as well as in total (not server.maxConnections,
  // which one client could fill): see http/connection-guard.ts.
  connections.attach(server);
  return server;
}

/** Waits for in-flight requests within the shutdown budget, then cuts the connections still open. */
async function finishRequests(
  server: Server,
  closed: Promise<void>,
  connections: ConnectionGuard,
  budgetMs: number,
  log: Logger,
): Promise<void> {
  // Keep-alive connections would hold the server open forever; cut what is left at the budget.
  const idle = setInterval(() => server.closeIdleConnections(), 100);
  let timer: NodeJS.Timeout | undefined;
  const budget = new Promise<'budget'>((resolve) => {
    timer = setTimeout(() => resolve('budget'), budgetMs - 500).unref();
  });
  const outcome = await Promise.race([closed.then(() => 'closed' as const), budget]);
  clearTimeout(timer);
  clearInterval(idle);
  if (outcome === 'budget') {
    log.warn({ open: connections.open }, 'shutdown budget reached; closing the connections still open');
  }
  server.closeAllConnections();
  connections.close();
}

/** Listens on PORT (0: one the system chooses); the port listened on. */
function listen(server: Server, config: GatewayConfig): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.PORT, config.HOST, () => {
      server.off('error', reject);
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : config.PORT);
    });
  });
}

function createAdmission(config: GatewayConfig, redis: Redis): Admission {
  const keys = redisKeys(config.REDIS_PREFIX);
  return new Admission(
    redis,
    { reserved: keys.admissionReserved, queuedImages: keys.queuedImages, queuedBytes: keys.queuedBytes, input: keys.input },
    { maxDepth: config.MAX_QUEUE_DEPTH, maxQueuedBytes: config.MAX_QUEUED_BYTES },
    undefined,
    new MemoryGuard(redis, config.ADMISSION_MEMORY_FRACTION),
  );
}

/**
 * Jobs removed from BullMQ without a commit give their bytes (and images) back here; every gateway
 * runs it, which is harmless (each job's field is removed once). Returns the timer, which shutdown clears.
 */
function reconcileNowAndThen(admission: Admission, intervalMs: number, log: Logger): NodeJS.Timeout {
  const reconciler = setInterval(
    () =>
      void admission
        .reconcile()
        .then(({ jobs, bytes }) => {
          if (jobs > 0) log.info({ jobs, bytes }, 'gave back the queued bytes of jobs that left the queue without a result');
        })
        .catch((error: unknown) => log.debug({ err: error }, 'queued-bytes reconciliation failed; retried on the next tick')),
    intervalMs,
  );
  reconciler.unref();
  return reconciler;
}

function httpMetrics(
  uploadBudget: UploadBudget,
  connections: ConnectionGuard,
  catalogue: ModelCatalogue,
  admission: Admission,
  queues: ModelQueues,
  exemplars: boolean,
): HttpMetrics {
  return new HttpMetrics({
    exemplars,
    uploadBytes: () => uploadBudget.bytes,
    connections: () => connections.open,
    queueDepths: async () => {
      await catalogue.current();
      return Promise.all(
        catalogue.known().map(async (model) => ({ model, waiting: await admission.waiting(queues.get(model)) })),
      );
    },
    liveWorkers: async () => (await catalogue.current()).workers.length,
    modelWorkers: async () =>
      [...(await catalogue.current()).models.values()].map((m) => ({ model: m.name, workers: m.workers })),
  });
}

function accessFor(config: GatewayConfig, redis: Redis) {
  return createAccess(redis, config.REDIS_PREFIX, new ApiKeyStore(redis, redisKeys(config.REDIS_PREFIX).apiKeys), {
    keysRequired: config.API_KEYS_REQUIRED,
    ratePoints: config.RATE_LIMIT_REQUESTS,
    rateWindowSeconds: config.RATE_LIMIT_WINDOW_SECONDS,
    authFailurePoints: config.AUTH_FAILURE_LIMIT,
    authFailureWindowSeconds: config.AUTH_FAILURE_WINDOW_SECONDS,
    addressMaxPriority: config.ADDRESS_MAX_PRIORITY,
  });
}

/** The gateway's shutdown: stop taking connections, release waiters and streams, finish requests, close queues, Redis last. */
function stopGateway(
  config: GatewayConfig,
  log: Logger,
  parts: {
    server: Server;
    closed: Promise<void>;
    connections: ConnectionGuard;
    waiter: ResultWaiter;
    eventStreams: OpenStreams;
    reconciler: NodeJS.Timeout;
    queues: ModelQueues;
    callbacks: CallbackDispatcher;
    connectionsToClose: readonly Redis[];
    tracing: Tracing;
  },
) {
  return stopSteps(log, [
    {
      name: 'stop accepting connections',
      run: () => {
        parts.server.close();
        parts.server.closeIdleConnections();
        return Promise.resolve();
      },
    },
    // Requests still waiting for a result get their 202 now; their jobs carry on without them.
    { name: 'release waiting requests', run: () => parts.waiter.close() },
    // Event streams would otherwise stay open until the budget runs out: each gets a last event
    // telling its client to reconnect (to another instance, or this one restarted) and is ended.
    {
      name: 'end event streams',
      run: () => {
        const ended = parts.eventStreams.closeAll();
        if (ended > 0) log.info({ streams: ended }, 'event streams ended for shutdown');
        return Promise.resolve();
      },
    },
    {
      name: 'finish in-flight requests',
      run: () => finishRequests(parts.server, parts.closed, parts.connections, config.SHUTDOWN_BUDGET_MS, log),
    },
    {
      name: 'queues',
      run: () => {
        clearInterval(parts.reconciler);
        return parts.queues.close();
      },
    },
    { name: 'callbacks', run: () => parts.callbacks.close() },
    // After the callbacks, whose last deliveries are spans too; before Redis, which it does not need.
    { name: 'traces', run: () => parts.tracing.shutdown() },
    {
      name: 'redis',
      run: () => Promise.all(parts.connectionsToClose.map((connection) => closeRedis(connection))),
    },
  ]);
}

/** The gateway's Redis connections, and the models' queues on theirs (with the dashboard, if configured). */
async function connect(config: GatewayConfig, gatewayId: string, log: Logger) {
  const redis = createRedis(config.REDIS_URL, 'producer', `conveyor:gateway:${gatewayId}`, log);
  const subscriber = createRedis(config.REDIS_URL, 'subscriber', `conveyor:gateway-sub:${gatewayId}`, log);
  await Promise.all([waitForReady(redis, 30_000), waitForReady(subscriber, 30_000)]);

  // BullMQ does not close a connection it was given; shutdown closes it below.
  const { connection: queueConnection, errors: queueErrors } = await createBullConnection(
    config.REDIS_URL,
    'producer',
    `conveyor:gateway-queue:${gatewayId}`,
    log,
    { error: 'queue error', restored: 'queue connection restored' },
  );
  const board =
    config.DASHBOARD_USER && config.DASHBOARD_PASSWORD
      ? dashboard([], { user: config.DASHBOARD_USER, password: config.DASHBOARD_PASSWORD })
      : undefined;
  // One queue per model, made when first needed (the dashboard shows each from then on).
  const queues = new ModelQueues(queueConnection, config.REDIS_PREFIX, (queue) => {
    queue.on('error', (error) => queueErrors.error(error));
    board?.add(queue);
  });
  return { redis, subscriber, queueConnection, queues, board };
}

function connectionGuard(config: GatewayConfig, log: Logger, onRefused: (reason: ConnectionRefusal) => void): ConnectionGuard {
  return new ConnectionGuard(
    {
      maxConnections: config.MAX_CONNECTIONS,
      // Behind a proxy every connection is the proxy's: the share would cap the proxy, not a client.
      maxPerClient: config.MAX_CONNECTIONS_PER_CLIENT ?? (config.TRUST_PROXY ? config.MAX_CONNECTIONS : 64),
    },
    log.child({ module: 'connections' }),
    onRefused,
  );
}

function imageFetcher(config: GatewayConfig) {
  return createImageFetcher({
    maxBytes: config.MAX_UPLOAD_BYTES,
    connectTimeoutMs: config.URL_CONNECT_TIMEOUT_MS,
    totalTimeoutMs: config.URL_TOTAL_TIMEOUT_MS,
    maxRedirects: config.URL_MAX_REDIRECTS,
    allowCidrs: config.URL_ALLOW_CIDRS,
  });
}
