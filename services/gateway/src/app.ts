import Router from '@koa/router';
import Koa, { type Middleware } from 'koa';
import type { Redis } from 'ioredis';
import type { Keys } from '@conveyor/shared/contract/queue.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { GatewayState } from './http/context.js';
import { problemMiddleware } from './http/problem.middleware.js';
import { requestContext } from './http/request-context.middleware.js';
import type { JobLookup } from './jobs/job-lookup.js';
import { registerDocsRoutes } from './routes/docs.route.js';
import { registerEventRoutes, type EventStreamLimits } from './routes/events.route.js';
import { registerFeedbackRoute } from './routes/feedback.route.js';
import { registerJobRoutes } from './routes/jobs.route.js';
import { registerModelRoutes } from './routes/models.route.js';
import { registerOpsRoutes } from './routes/ops.route.js';
import { registerPredictRoute, type PredictDeps } from './routes/predict.route.js';

export interface AppDeps extends PredictDeps {
  /** The queue dashboard, when credentials are configured. */
  readonly dashboard?: Middleware<GatewayState>;
  readonly log: Logger;
  readonly redis: Redis;
  readonly keys: Keys;
  readonly lookup: JobLookup;
  readonly trustProxy: boolean;
  /** Bounds of the job event streams (SSE). */
  readonly eventLimits: EventStreamLimits;
}

/** The Koa application, built from its dependencies (main.ts wires real ones; tests may too). */
export function createApp(deps: AppDeps): Koa<GatewayState> {
  const app = new Koa<GatewayState>({ proxy: deps.trustProxy });
  const router = new Router<GatewayState>();
  registerPredictRoute(router, deps);
  registerJobRoutes(router, deps.lookup, deps.access, deps.callbacks);
  registerEventRoutes(router, { ...deps, limits: deps.eventLimits });
  registerFeedbackRoute(router, {
    redis: deps.redis,
    keys: deps.keys,
    resultTtlSeconds: deps.config.RESULT_TTL_SECONDS,
    access: deps.access,
  });
  registerModelRoutes(router, deps);
  registerOpsRoutes(router, deps);
  registerDocsRoutes(router, {
    defaultModel: deps.config.DEFAULT_MODEL,
    syncWaitDefaultSeconds: deps.config.SYNC_WAIT_DEFAULT_SECONDS,
    syncWaitMaxSeconds: deps.config.SYNC_WAIT_MAX_SECONDS,
    maxUploadBytes: deps.config.MAX_UPLOAD_BYTES,
  });

  app.use(requestContext(deps.log, deps.metrics));
  app.use(problemMiddleware());
  if (deps.dashboard) app.use(deps.dashboard);
  app.use(router.routes());
  app.use(router.allowedMethods());
  // Errors are answered by problemMiddleware; this only sees failures writing to the socket.
  app.on('error', (error: Error) => deps.log.debug({ err: error }, 'response stream error'));
  return app;
}
