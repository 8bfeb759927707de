import { randomUUID } from 'node:crypto';
import type { Middleware } from 'koa';
import type { Logger } from '@conveyor/shared/logger';
import type { GatewayState } from './context.js';
import type { HttpMetrics } from './metrics.js';

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Gives every request an id (the caller's X-Request-Id when it is well-formed, a UUID otherwise),
 * echoes it (with `X-Content-Type-Options: nosniff`), binds it to a logger, and writes one access-log line per request with the method,
 * the matched route, the status and the duration.
 */
export function requestContext(log: Logger, metrics: HttpMetrics): Middleware<GatewayState> {
  return async (ctx, next) => {
    const started = process.hrtime.bigint();
    const offered = ctx.get('x-request-id');
    const requestId = SAFE_REQUEST_ID.test(offered) ? offered : randomUUID();
    ctx.state.requestId = requestId;
    ctx.state.log = log.child({ requestId });
    ctx.set('X-Request-Id', requestId);
    // On every answer, JSON and problems included: a browser must never sniff an answer into HTML.
    ctx.set('X-Content-Type-Options', 'nosniff');
    try {
      await next();
    } finally {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      const route = (ctx as { _matchedRoute?: string })._matchedRoute ?? 'unmatched';
      metrics.observe(ctx.method, route, ctx.status, durationMs / 1000, ctx.state.predictMode, ctx.state.model);
      const line = {
        method: ctx.method,
        route,
        path: ctx.path,
        status: ctx.status,
        durationMs: Math.round(durationMs * 100) / 100,
      };
      if (route === '/health' || route === '/metrics') ctx.state.log.debug(line, 'request');
      else ctx.state.log.info(line, 'request');
    }
  };
}
