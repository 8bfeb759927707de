import { readFileSync } from 'node:fs';
import path from 'node:path';
import type Router from '@koa/router';
import { z } from 'zod';
import { DriftLevel, type DriftSummary } from '@conveyor/shared/contract/api.contract';
import { ProblemError } from '@conveyor/shared/problem';
import type { Access } from '../access/access.middleware.js';
import type { GatewayState } from '../http/context.js';
import { PUBLIC_DIR } from './docs.route.js';

/**
 * The page at `/` (plain HTML, CSS and JavaScript, no build step) and `GET /v1/drift`, the drift
 * state per model that the page shows, read from the monitor (MONITOR_URL) and summed up.
 */
export const PAGE_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/** The part of the monitor's `GET /drift` the page needs (the monitor says more). */
const MonitorDrift = z.object({
  models: z.array(
    z.object({
      model: z.object({ name: z.string(), version: z.string() }),
      states: z.record(z.string(), DriftLevel),
      currentWindow: z.object({ status: z.string(), size: z.number() }).loose(),
    }),
  ),
  // A monitor older than shadow mode sends none.
  shadows: z
    .array(
      z.object({
        name: z.string(),
        shadow: z.object({ version: z.string() }).loose(),
        production: z.object({ version: z.string() }).loose(),
        pairs: z.number(),
        lastWindow: z.object({ size: z.number(), top1Agreement: z.number().nullable() }).loose().nullable(),
        currentWindow: z
          .object({
            size: z.number(),
            top1Agreement: z.number().nullable(),
            status: z.enum(['provisional', 'insufficient_data']),
          })
          .loose(),
      }),
    )
    .default([]),
});

/** A shadow as the page shows it: the last closed window's agreement, else the filling one's. */
function shadowSummary(s: z.infer<typeof MonitorDrift>['shadows'][number]): DriftSummary['shadows'][number] {
  const window = s.lastWindow
    ? { size: s.lastWindow.size, status: 'closed' as const, agreement: s.lastWindow.top1Agreement }
    : { size: s.currentWindow.size, status: s.currentWindow.status, agreement: s.currentWindow.top1Agreement };
  return {
    model: s.name,
    shadowVersion: s.shadow.version,
    productionVersion: s.production.version,
    pairs: s.pairs,
    agreement: window.agreement,
    window: { size: window.size, status: window.status },
  };
}

export function registerWebRoutes(
  router: Router<GatewayState>,
  deps: { access: Access; monitorUrl: string | undefined; fetch?: typeof fetch },
): void {
  const files = {
    '/': { type: 'text/html; charset=utf-8', body: readFileSync(path.join(PUBLIC_DIR, 'index.html')) },
    '/app.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(path.join(PUBLIC_DIR, 'app.js')) },
    '/app.css': { type: 'text/css; charset=utf-8', body: readFileSync(path.join(PUBLIC_DIR, 'app.css')) },
  };
  for (const [route, file] of Object.entries(files)) {
    router.get(route, (ctx) => {
      ctx.type = file.type;
      ctx.set('Content-Security-Policy', PAGE_CSP);
      ctx.set('X-Content-Type-Options', 'nosniff');
      ctx.set('Referrer-Policy', 'no-referrer');
      ctx.set('Cache-Control', 'no-cache');
      ctx.body = file.body;
    });
  }

  const fetchImpl = deps.fetch ?? fetch;
  router.get('/v1/drift', deps.access.require('predict'), async (ctx) => {
    if (!deps.monitorUrl) {
      ctx.body = { monitor: false, models: [], shadows: [] };
      return;
    }
    let snapshot: z.infer<typeof MonitorDrift>;
    try {
      const response = await fetchImpl(new URL('/drift', deps.monitorUrl), { signal: AbortSignal.timeout(2000) });
      snapshot = MonitorDrift.parse(await response.json());
    } catch (error) {
      ctx.state.log.warn({ err: error }, 'the monitor could not be read');
      throw new ProblemError('not-ready', 'The drift monitor cannot be reached now', { retryAfterSeconds: 10 });
    }
    const body: DriftSummary = {
      monitor: true,
      models: snapshot.models.map((m) => {
        const levels = Object.values(m.states);
        // No feature has a state until a window was judged: "ok" would claim a verdict nobody made.
        const level =
          levels.length === 0 ? 'learning' : levels.includes('alert') ? 'alert' : levels.includes('warn') ? 'warn' : 'ok';
        return { model: m.model.name, version: m.model.version, level, features: m.states, window: m.currentWindow.status };
      }),
      shadows: snapshot.shadows.map(shadowSummary),
    };
    ctx.body = body;
  });
}
