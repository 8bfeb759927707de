import type { Middleware } from 'koa';
import { ProblemError } from '@conveyor/shared/problem';
import { answerBody } from '../http/problem-answer.js';
import { clientOf } from '../http/client-identity.js';
import type { GatewayContext, GatewayState, Held } from '../http/context.js';

/**
 * What an outsider can make one gateway hold while bodies arrive. Bodies are kept in memory (they
 * go to Redis as they are), so without a bound 150 uploads of 3 MB held open at once took a gateway
 * from 104 MB to 547 MB; and a body trickling in was held for 60–90 s.
 *
 * - Bytes being received at once are bounded: every request reserves its declared Content-Length
 *   (or the upload limit, when the length is not declared) before its body is read, and beyond the
 *   budget it is told 503 + Retry-After unread. The reservation is given back once its job is
 *   queued or the request ends.
 * - Each client (API key, or address when keys are off: `clientOf`) may hold only its share of that
 *   budget; beyond it, 429 + Retry-After unread. Without a share, 22 uploads trickling at 20 KB/s
 *   from one client held the whole 64 MiB and every other client's upload got 503 for as long.
 * - A body that arrives slower than a minimum rate, after a short grace, is answered 408 and its
 *   connection closed. The rate is read from the socket's own byte counter, so nothing competes
 *   with the body parser for the stream.
 */
export interface UploadGuardOptions {
  /** The most a body may be (the upload limit and multipart framing): reserved when no length is declared. */
  readonly undeclaredBytes: number;
  readonly minBytesPerSecond: number;
  readonly graceMs: number;
}

/** A share of the budget, held while a body is in memory. */
export type UploadReservation = Held;

export type UploadRefusal = 'total' | 'client';

export class UploadBudget {
  private held = 0;
  private readonly byClient = new Map<string, number>();

  constructor(
    readonly capacity: number,
    readonly perClient: number,
  ) {}

  get bytes(): number {
    return this.held;
  }

  /** Bytes `client` holds now. */
  heldBy(client: string): number {
    return this.byClient.get(client) ?? 0;
  }

  /** A reservation of `bytes` for `client`, or which bound refused it. */
  reserve(client: string, bytes: number): UploadReservation | UploadRefusal {
    const own = this.heldBy(client);
    // The client's own share is checked first: a client over it is told so (429), not that the gateway is full.
    if (own + bytes > this.perClient) return 'client';
    if (this.held + bytes > this.capacity) return 'total';
    this.held += bytes;
    this.byClient.set(client, own + bytes);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.held -= bytes;
        const left = this.heldBy(client) - bytes;
        if (left > 0) this.byClient.set(client, left);
        else this.byClient.delete(client);
      },
    };
  }
}

export function uploadGuard(budget: UploadBudget, options: UploadGuardOptions): Middleware<GatewayState> {
  return async (ctx, next) => {
    const declared = Number(ctx.get('content-length') || NaN);
    // A declared length over the most a body may be is refused (413) by the parser before a byte is
    // read: it needs no more than that most, and must not be told 429/503 instead.
    const bytes = Number.isFinite(declared) ? Math.min(declared, options.undeclaredBytes) : options.undeclaredBytes;
    const reservation = budget.reserve(clientOf(ctx), bytes);
    if (reservation === 'client') {
      throw new ProblemError(
        'rate-limited',
        `This client already has ${budget.heldBy(clientOf(ctx))} bytes of uploads in progress; its share is ${budget.perClient} bytes. Retry once one has finished`,
        { retryAfterSeconds: 2 },
      );
    }
    if (reservation === 'total') {
      throw new ProblemError('overloaded', 'The gateway is receiving as many uploads as it can hold; retry shortly', {
        retryAfterSeconds: 2,
      });
    }
    ctx.state.upload = reservation;
    const stopWatching = watchBodyRate(ctx, options);
    try {
      await next();
    } finally {
      stopWatching();
      reservation.release();
    }
  };
}

/** Stops watching once the body is complete (or the request is over); returns the stop function. */
function watchBodyRate(ctx: GatewayContext, options: UploadGuardOptions): () => void {
  const socket = ctx.req.socket;
  const started = Date.now();
  const startBytes = socket.bytesRead;
  const timer = setInterval(() => {
    if (ctx.req.complete || ctx.res.headersSent || socket.destroyed) return clearInterval(timer);
    const elapsedMs = Date.now() - started;
    if (elapsedMs < options.graceMs) return;
    const rate = ((socket.bytesRead - startBytes) * 1000) / elapsedMs;
    if (rate >= options.minBytesPerSecond) return;
    clearInterval(timer);
    const problem = new ProblemError(
      'request-timeout',
      `The body arrived at ${Math.round(rate)} bytes/s; the minimum is ${options.minBytesPerSecond} bytes/s`,
    );
    ctx.state.log.info({ rate: Math.round(rate), elapsedMs }, 'dropping a body that arrives too slowly');
    // Answered here and now (the body parser is still waiting for the rest): the status is kept for
    // the access log, and the connection is closed once the answer is out.
    ctx.status = problem.status;
    ctx.res.writeHead(problem.status, {
      'content-type': 'application/problem+json',
      'x-content-type-options': 'nosniff',
      connection: 'close',
      'x-request-id': ctx.state.requestId,
    });
    ctx.res.end(JSON.stringify(answerBody(ctx, problem)), () => {
      // The request too: once its answer is out, Node no longer aborts it with the socket, and the
      // body parser would wait for the rest forever (holding this request's budget).
      ctx.req.destroy();
      socket.destroy();
    });
  }, 250);
  timer.unref();
  return () => clearInterval(timer);
}
