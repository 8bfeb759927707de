import { randomUUID } from 'node:crypto';
import type { Middleware } from 'koa';
import type { Logger } from '@conveyor/shared/logger';
import { contextFrom, failSpan, logIds, NO_SPAN, SpanKind, type Tracing } from '@conveyor/shared/tracing';
import type { GatewayState } from './context.js';
import type { HttpMetrics } from './metrics.js';

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Scraped and probed every few seconds: a trace each would bury the requests' traces. */
const UNTRACED = new Set(['/health', '/metrics']);

/**
 * Gives every request an id (the caller's X-Request-Id when it is well-formed, a UUID otherwise),
 * echoes it (with `X-Content-Type-Options: nosniff`), binds it to a logger, and writes one access-log line per request with the method,
 * the matched route, the status and the duration.
 *
 * With tracing on, every request but the probes is a SERVER span, the child of the caller's
 * `traceparent` when it sent one; its log lines carry the span's `trace_id` and `span_id`.
 */
export function requestContext(
  log: Logger,
  metrics: HttpMetrics,
  tracing: Pick<Tracing, 'enabled' | 'tracer'>,
): Middleware<GatewayState> {
  return async (ctx, next) => {
    const started = process.hrtime.bigint();
    const offered = ctx.get('x-request-id');
    const requestId = SAFE_REQUEST_ID.test(offered) ? offered : randomUUID();
    const span =
      tracing.enabled && !UNTRACED.has(ctx.path)
        ? tracing.tracer.startSpan(
            ctx.method,
            {
              kind: SpanKind.SERVER,
              attributes: { 'http.request.method': ctx.method, 'url.path': ctx.path, 'conveyor.request_id': requestId },
            },
            contextFrom(ctx.headers),
          )
        : NO_SPAN;
    ctx.state.requestId = requestId;
    ctx.state.span = span;
    ctx.state.log = log.child({ requestId, ...logIds(span) });
    ctx.set('X-Request-Id', requestId);
    // On every answer, JSON and problems included: a browser must never sniff an answer into HTML.
    ctx.set('X-Content-Type-Options', 'nosniff');
    try {
      await next();
    } finally {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      const route = (ctx as { _matchedRoute?: string })._matchedRoute ?? 'unmatched';
      const traceId = span.isRecording() ? span.spanContext().traceId : undefined;
      metrics.observe(ctx.method, route, ctx.status, durationMs / 1000, ctx.state.predictMode, ctx.state.model, traceId);
      const line = {
        method: ctx.method,
        route,
        path: ctx.path,
        status: ctx.status,
        durationMs: Math.round(durationMs * 100) / 100,
      };
      if (route === '/health' || route === '/metrics') ctx.state.log.debug(line, 'request');
      else ctx.state.log.info(line, 'request');
      if (span.isRecording()) endServerSpan(ctx.state, route, ctx.method, ctx.status);
    }
  };
}

function endServerSpan(state: GatewayState, route: string, method: string, status: number): void {
  const { span } = state;
  span.updateName(route === 'unmatched' ? method : `${method} ${route}`);
  span.setAttributes({
    'http.route': route,
    'http.response.status_code': status,
    ...(state.model ? { 'conveyor.model': state.model } : {}),
    ...(state.jobId ? { 'conveyor.job.id': state.jobId } : {}),
  });
  // Only the server's own failures mark the span failed (OpenTelemetry's HTTP conventions): a 4xx is the caller's.
  if (status >= 500) failSpan(span, new Error(`HTTP ${status}`));
  span.end();
}
