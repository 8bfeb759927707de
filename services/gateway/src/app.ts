import cors from '@koa/cors';
import Router from '@koa/router';
import Koa, { type Middleware } from 'koa';
import type { Redis } from '@conveyor/shared/redis';
import type { JobStore } from '@conveyor/shared/contract/job-store';
import type { RedisKeys } from '@conveyor/shared/contract/redis-keys';
import type { FleetStore } from '@conveyor/shared/contract/fleet-store';
import type { Logger } from '@conveyor/shared/logger';
import type { Tracing } from '@conveyor/shared/tracing';
import type { GatewayState } from './http/context.js';
import { problemMiddleware } from './http/problem.middleware.js';
import { requestContext } from './http/request-context.middleware.js';
import type { JobLookup } from './jobs/job-lookup.js';
import { registerDocsRoutes } from './routes/docs.route.js';
import { registerEventRoutes, type EventStreamLimits, type OpenStreams } from './routes/events.route.js';
import { registerFeedbackRoute } from './routes/feedback.route.js';
import { registerJobRoutes } from './routes/jobs.route.js';
import { registerJobCancelRoute } from './routes/job-cancel.route.js';
import type { JobCanceller } from './jobs/job-canceller.js';
import { JobOwnership } from './access/job-ownership.js';
import { registerModelRoutes } from './routes/models.route.js';
import { registerWebRoutes } from './routes/web.route.js';
import { registerOpsRoutes } from './routes/ops.route.js';
import { registerPredictRoute, type PredictDeps } from './routes/predict.route.js';
import type { CallbackDispatcher } from './callbacks/callback-dispatcher.js';
import type { ModelCatalogue } from './models/model-catalogue.js';

export interface AppDeps extends PredictDeps {
  /** Spans for requests (off: nothing recorded). */
  readonly tracing: Pick<Tracing, 'enabled' | 'tracer'>;
  readonly catalogue: ModelCatalogue;
  /** Result callbacks (`Callback-Url`): their state is shown with the job. */
  readonly callbacks: CallbackDispatcher;
  /** The queue dashboard, when credentials are configured. */
  readonly dashboard?: Middleware<GatewayState>;
  readonly log: Logger;
  readonly redis: Redis;
  readonly keys: RedisKeys;
  /** Results and feedback of jobs, on `redis`. */
  readonly jobs: JobStore;
  /** The workers and the models they announced, on `redis`. */
  readonly fleet: FleetStore;
  readonly lookup: JobLookup;
  /** Cancels jobs (`DELETE /v1/jobs/{id}`). */
  readonly canceller: JobCanceller;
  readonly trustProxy: boolean;
  /**
   * Proxies in front that append to X-Forwarded-For. `ctx.ip` is the entry the farthest of them
   * wrote: Koa's maxIpsCount keeps only the last `n` entries, and ctx.ip is the first of those. The
   * entries before are the client's own writing (with Koa's default, ctx.ip was the very first one,
   * and a client rotating it passed any per-address limit).
   */
  readonly trustProxyHops: number;
  /** The open event streams, which shutdown ends. */
  readonly eventStreams?: OpenStreams;
  /** Bounds of the job event streams (SSE). */
  readonly eventLimits: EventStreamLimits;
  /** Origins whose pages may call the API (CORS); `*` for any. */
  readonly corsOrigins: readonly string[];
  readonly monitorUrl: string | undefined;
}

/** The Koa application, built from its dependencies (main.ts wires real ones; tests may too). */
export function createApp(deps: AppDeps): Koa<GatewayState> {
  const app = new Koa<GatewayState>({ proxy: deps.trustProxy, maxIpsCount: deps.trustProxyHops });
  const router = new Router<GatewayState>();
  registerPredictRoute(router, deps);
  const ownership = new JobOwnership(deps.jobs);
  registerJobRoutes(router, deps.lookup, deps.access, deps.callbacks, ownership);
  registerJobCancelRoute(router, { canceller: deps.canceller, access: deps.access, callbacks: deps.callbacks, ownership });
  registerEventRoutes(router, {
    ...deps,
    limits: deps.eventLimits,
    ownership,
    ...(deps.eventStreams ? { streams: deps.eventStreams } : {}),
  });
  registerFeedbackRoute(router, {
    fleet: deps.fleet,
    jobs: deps.jobs,
    access: deps.access,
    ownership,
  });
  registerModelRoutes(router, deps);
  registerOpsRoutes(router, deps);
  registerWebRoutes(router, { access: deps.access, monitorUrl: deps.monitorUrl });
  registerDocsRoutes(router, {
    defaultModel: deps.config.DEFAULT_MODEL,
    syncWaitDefaultSeconds: deps.config.SYNC_WAIT_DEFAULT_SECONDS,
    syncWaitMaxSeconds: deps.config.SYNC_WAIT_MAX_SECONDS,
    maxUploadBytes: deps.config.MAX_UPLOAD_BYTES,
    callbacks: deps.callbacks.enabled,
  });

  app.use(requestContext(deps.log, deps.metrics, deps.tracing));
  app.use(problemMiddleware());
  if (deps.corsOrigins.length > 0) app.use(corsFor(deps.corsOrigins));
  if (deps.dashboard) app.use(deps.dashboard);
  app.use(router.routes());
  app.use(router.allowedMethods());
  // Errors are answered by problemMiddleware; this only sees failures writing to the socket.
  app.on('error', (error: Error) => deps.log.debug({ err: error }, 'response stream error'));
  return app;
}

/**
 * CORS for front ends on other origins (CORS_ORIGINS): preflights are answered before any key is
 * asked for; the headers a client sends and reads (Prefer, Callback-Url, Location, Retry-After…)
 * are allowed and exposed. The page at / is same-origin and needs none.
 */
function corsFor(origins: readonly string[]): Middleware<GatewayState> {
  const any = origins.includes('*');
  return cors({
    origin: (ctx) => {
      const origin = ctx.get('origin');
      return any || origins.includes(origin) ? origin : '';
    },
    allowMethods: ['GET', 'POST', 'DELETE'],
    allowHeaders: ['Authorization', 'X-API-Key', 'Content-Type', 'Prefer', 'Callback-Url', 'Idempotency-Key', 'X-Request-Id'],
    exposeHeaders: [
      'Location',
      'Retry-After',
      'Preference-Applied',
      'Idempotent-Replayed',
      'X-Request-Id',
      'RateLimit',
      'RateLimit-Policy',
    ],
    maxAge: 600,
  });
}
