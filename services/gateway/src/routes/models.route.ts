import type Router from '@koa/router';
import { ProblemError } from '@conveyor/shared/problem';
import type { Access } from '../access/access.middleware.js';
import type { GatewayContext, GatewayState } from '../http/context.js';
import type { ModelCatalogue, ModelStatus } from '../models/model-catalogue.js';

/**
 * What the deployment serves, read from the workers' announcements and heartbeats:
 *
 * - `GET /v1/models`: every known model (configured, or announced by a worker at some point);
 * - `GET /v1/models/{name}`: one of them (404 for an unknown name);
 * - `GET /v2/models/{name}/ready`: the Open Inference Protocol's (KServe v2) model readiness probe:
 *   200 `{name, ready: true}` while a live worker has the model warm, 503 `{name, ready: false}`
 *   otherwise. Only the probe is taken from that protocol, not its tensor API: models here take images.
 *
 * These read Redis afresh (concurrent calls share one read), not the cached view the predict path
 * routes with: a probe must see a worker that left a moment ago.
 */
const FRESH_MS = 0;

export function registerModelRoutes(router: Router<GatewayState>, deps: { catalogue: ModelCatalogue; access: Access }): void {
  const allowed = deps.access.require('predict');

  router.get('/v1/models', allowed, async (ctx) => {
    const view = await deps.catalogue.current(FRESH_MS);
    ctx.body = { models: [...view.models.values()].map(describe) };
  });

  router.get('/v1/models/:name', allowed, async (ctx) => {
    ctx.body = describe(await known(ctx, deps.catalogue));
  });

  router.get('/v2/models/:name/ready', async (ctx) => {
    const model = await known(ctx, deps.catalogue);
    ctx.status = model.ready ? 200 : 503;
    ctx.body = { name: model.name, ready: model.ready };
  });
}

async function known(ctx: GatewayContext, catalogue: ModelCatalogue): Promise<ModelStatus> {
  const name = (ctx as { params?: Record<string, string> }).params?.name ?? '';
  await catalogue.current(FRESH_MS);
  const model = await catalogue.resolve(name);
  if (!model)
    throw new ProblemError('not-found', `No model named ${JSON.stringify(name.slice(0, 64))}`, { models: catalogue.known() });
  return model;
}

/** The public description of a model. */
function describe(model: ModelStatus) {
  const { announced } = model;
  return {
    name: model.name,
    default: model.isDefault,
    ready: model.ready,
    /** Live workers with the model warm, and the jobs they take at once together. */
    workers: model.workers,
    concurrency: model.concurrency,
    ...(model.serviceMs === undefined ? {} : { serviceMs: Math.round(model.serviceMs * 100) / 100 }),
    ...(model.jobsPerSecond === undefined ? {} : { jobsPerSecond: Math.round(model.jobsPerSecond * 100) / 100 }),
    /** Served by live workers now (two during a rolling swap). */
    versions: model.versions,
    ...(announced
      ? {
          lastAnnounced: { version: announced.model.version, artifact: announced.model.name, at: announced.at },
          ...(announced.description ? { description: announced.description } : {}),
          input: announced.input,
          labels: announced.labels,
        }
      : {}),
    ...(model.refused.length > 0 ? { refused: model.refused } : {}),
    links: {
      self: `/v1/models/${model.name}`,
      predict: `/v1/models/${model.name}/predict`,
      ready: `/v2/models/${model.name}/ready`,
    },
  };
}
