import { problemBody, ProblemError } from '@conveyor/shared/problem';
import type { GatewayContext } from './context.js';

/**
 * The parts of a problem answer that more than the error middleware needs: the upload guard answers
 * a body that arrives too slowly from outside the chain, and the memory guard refuses with the
 * store-full problem. Kept apart from problem.middleware.ts, so that neither has to import it.
 */

/** The RFC 9457 members every problem answer has (the slug is in `type` already). */
export function answerBody(ctx: GatewayContext, problem: ProblemError): Record<string, unknown> {
  const { slug: _slug, ...members } = problemBody(problem);
  return { ...members, instance: ctx.originalUrl, requestId: ctx.state.requestId };
}

/** The answer every refusal for memory gets: the store's own words never reach a client. */
export function storeFullProblem(): ProblemError {
  return new ProblemError('overloaded', 'The queue store is full; retry later', { retryAfterSeconds: 5 });
}
