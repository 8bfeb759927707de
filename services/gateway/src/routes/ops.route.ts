import type Router from '@koa/router';
import { isRedisUnavailable } from '@conveyor/shared/redis';
import type { Redis } from '@conveyor/shared/redis';
import { servedModels } from '@conveyor/shared/contract/workers.contract';
import { problemCatalogue, problemType, ProblemError, type ProblemSlug } from '@conveyor/shared/problem';
import type { GatewayState } from '../http/context.js';
import type { HttpMetrics } from '../http/metrics.js';
import type { CatalogueView, ModelCatalogue } from '../models/model-catalogue.js';

/**
 * /health: the process is alive. /ready: Redis answers and at least one worker with a warm model
 * is alive (503 otherwise, so a load balancer holds traffic), with each known model's readiness
 * (`GET /v2/models/{name}/ready` probes one). /metrics: Prometheus. /problems/:slug: what each
 * problem type means.
 */
export function registerOpsRoutes(
  router: Router<GatewayState>,
  deps: { redis: Redis; catalogue: ModelCatalogue; metrics: HttpMetrics },
): void {
  router.get('/health', (ctx) => {
    ctx.body = { status: 'ok' };
  });

  router.get('/ready', async (ctx) => {
    const started = performance.now();
    let redisOk = false;
    let view: CatalogueView | undefined;
    try {
      await withTimeout(deps.redis.ping(), 1000);
      redisOk = true;
      view = await withTimeout(deps.catalogue.current(0), 1000);
    } catch (error) {
      // Probes ask every few seconds: an outage is reported by the connections themselves, once.
      if (isRedisUnavailable(error)) ctx.state.log.debug({ error: (error as Error).message }, 'readiness check failed');
      else ctx.state.log.warn({ err: error }, 'readiness check failed');
    }
    const workers = view?.workers ?? [];
    const ready = redisOk && workers.length > 0;
    ctx.status = ready ? 200 : 503;
    ctx.body = {
      status: ready ? 'ready' : 'not-ready',
      redis: { ok: redisOk, latencyMs: Math.round((performance.now() - started) * 100) / 100 },
      models: Object.fromEntries(
        [...(view?.models.values() ?? [])].map((m) => [m.name, { ready: m.ready, workers: m.workers, versions: m.versions }]),
      ),
      workers: workers.map((w) => ({
        id: w.id,
        model: w.model,
        models: servedModels(w).map((m) => ({ name: m.name, version: m.model.version, concurrency: m.concurrency })),
        concurrency: w.concurrency,
        processed: w.processed,
        lastSeen: w.at,
      })),
    };
  });

  router.get('/metrics', async (ctx) => {
    ctx.type = deps.metrics.registry.contentType;
    ctx.body = await deps.metrics.registry.metrics();
  });

  router.get('/problems/:slug', (ctx) => {
    const slug = ctx.params.slug as ProblemSlug;
    if (!Object.hasOwn(problemCatalogue, slug)) throw new ProblemError('not-found', `No problem type ${slug}`);
    ctx.body = { type: problemType(slug), ...problemCatalogue[slug] };
  });
}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
