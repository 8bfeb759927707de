import type { Middleware } from 'koa';
import { ProblemError } from '@conveyor/shared/problem';
import { isRedisOutOfMemory, isRedisUnavailable } from '@conveyor/shared/redis';
import { answerBody, storeFullProblem } from './problem-answer.js';
import type { GatewayContext, GatewayState } from './context.js';

/**
 * The one error handler, first in the chain: every failure leaves as RFC 9457 problem details
 * with the request id. Client mistakes keep their 4xx; anything unexpected is logged with its
 * stack and answered as a bare 500 that leaks nothing.
 */
export function problemMiddleware(): Middleware<GatewayState> {
  return async (ctx, next) => {
    try {
      await next();
      if (ctx.body === undefined && ctx.status === 404) {
        throw new ProblemError('not-found', `No route for ${ctx.method} ${ctx.path}`);
      }
      // The router's allowedMethods() answers 405/501 with an Allow header and no body.
      if (ctx.body === undefined && (ctx.status === 405 || ctx.status === 501)) {
        throw new ProblemError('method-not-allowed', `${ctx.method} is not allowed on ${ctx.path}`, {
          allow: ctx.response.get('Allow'),
        });
      }
    } catch (error) {
      // Already answered from outside the chain (a body that arrived too slowly): keep that answer.
      if (ctx.res.headersSent) {
        ctx.state.log.debug({ err: error }, 'request ended after it was answered');
        return;
      }
      if (clientGone(ctx)) {
        // Nobody is left to answer, and nothing failed on our side: not a 5xx in the access log or
        // the metrics (nginx's 499, "client closed request"), and no error line with a stack.
        ctx.status = CLIENT_CLOSED_REQUEST;
        ctx.state.log.debug({ err: error }, 'the client closed the request before it was answered');
        return;
      }
      const problem = toProblem(error);
      if (isRedisOutOfMemory(error)) {
        // A refusal, as designed (the memory guard caught most before Redis had to): one line, no stack.
        ctx.state.log.warn({ problem: problem.slug }, 'refused: Redis is full');
      } else if (problem.status >= 500 && !(error instanceof ProblemError) && !isRedisUnavailable(error)) {
        // A Redis outage is reported once by the connections themselves, not by every request it fails.
        ctx.state.log.error({ err: error }, 'unhandled error');
      }
      sendProblem(ctx, problem);
    }
  };
}

/** nginx's code for a request the client abandoned; it never reaches the client. */
export const CLIENT_CLOSED_REQUEST = 499;

/** The client hung up before the request was read or answered (aborted upload, closed socket). */
export function clientGone(ctx: GatewayContext): boolean {
  return (
    ctx.req.readableAborted || (ctx.req.destroyed && !ctx.req.complete) || (ctx.req.socket.destroyed && !ctx.res.writableEnded)
  );
}

export function sendProblem(ctx: GatewayContext, problem: ProblemError): void {
  const { retryAfterSeconds, allow, ...extra } = problem.extra as { retryAfterSeconds?: number; allow?: string };
  ctx.status = problem.status;
  ctx.type = 'application/problem+json';
  if (retryAfterSeconds !== undefined) ctx.set('Retry-After', String(retryAfterSeconds));
  if (allow !== undefined) ctx.set('Allow', allow);
  ctx.body = { ...answerBody(ctx, problem), ...(ctx.state.jobId ? { jobId: ctx.state.jobId } : {}), ...extra };
}

/** Maps what libraries throw (koa-body/formidable, co-body, the router, ioredis) to problems. */
export function toProblem(error: unknown): ProblemError {
  if (error instanceof ProblemError) return error;
  const e = (error ?? {}) as {
    status?: unknown;
    statusCode?: unknown;
    httpCode?: unknown;
    message?: unknown;
    code?: unknown;
    headers?: unknown;
  };
  const message = typeof e.message === 'string' ? e.message : 'Unexpected error';
  // formidable sets httpCode but no status: without this mapping Koa answers 500.
  const status = [e.status, e.statusCode, e.httpCode].find((v): v is number => typeof v === 'number');
  if (status === 413) return new ProblemError('payload-too-large', 'The request body is larger than the limit');
  if (status === 415) return new ProblemError('unsupported-media-type', message);
  if (status === 405) {
    const allow = (e.headers as Record<string, string> | undefined)?.Allow;
    return new ProblemError('method-not-allowed', message, allow ? { allow } : {});
  }
  if (status === 404) return new ProblemError('not-found', message);
  if (status !== undefined && status >= 400 && status < 500)
    return new ProblemError('invalid-request', cleanParserMessage(message));
  // Redis at its maxmemory with noeviction refuses writes: the system is full, not broken.
  if (isRedisOutOfMemory(error)) return storeFullProblem();
  if (isRedisUnavailable(error)) {
    return new ProblemError('not-ready', 'The queue is unavailable; retry shortly', { retryAfterSeconds: 2 });
  }
  return new ProblemError('internal', 'Internal error');
}

function cleanParserMessage(message: string): string {
  if (/Unexpected token|JSON/i.test(message)) return 'The body is not valid JSON';
  return message;
}
