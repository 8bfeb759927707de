import type Router from '@koa/router';
import { z } from 'zod';
import { ProblemError } from '@conveyor/shared/problem';
import type { Access } from '../access/access.middleware.js';
import type { JobOwnership } from '../access/job-ownership.js';
import type { CallbackDispatcher } from '../callbacks/callback-dispatcher.js';
import { bindLog, type GatewayState } from '../http/context.js';
import type { JobCanceller } from '../jobs/job-canceller.js';

const JobId = z.uuid();

/**
 * DELETE /v1/jobs/{id}: cancels a job (JobCanceller). Who may cancel is who may read it
 * (JobOwnership: its owner or an admin with keys required, anyone holding the id without), and
 * another key's job is answered as an unknown one (404).
 *
 * - waiting → 200 with the cancelled job, as GET answers it from then on;
 * - running → 202 `{ status: 'active', cancelling: true }`: it is not interrupted, and its result is
 *   discarded for a cancelled one when it finishes;
 * - finished (completed, failed, expired) → 409 conflict, its result stands;
 * - cancelled already → 200 again, the same answer (idempotent).
 */
export function registerJobCancelRoute(
  router: Router<GatewayState>,
  deps: { canceller: JobCanceller; access: Access; callbacks: CallbackDispatcher; ownership: JobOwnership },
): void {
  router.delete('/v1/jobs/:id', deps.access.require('predict'), async (ctx) => {
    const id = ctx.params.id ?? '';
    const mine = JobId.safeParse(id).success && (await deps.ownership.mayRead(ctx.state.apiKey, id));
    const outcome = mine ? await deps.canceller.cancel(id) : { kind: 'unknown' as const };
    if (outcome.kind === 'unknown') throw new ProblemError('not-found', `No job ${id}: unknown, or its result has expired`);
    ctx.state.jobId = id;
    bindLog(ctx.state, { jobId: id });
    switch (outcome.kind) {
      case 'finished':
        throw new ProblemError(
          'conflict',
          `Job ${id} is finished (${outcome.result.status}); a finished job cannot be cancelled`,
          {
            jobStatus: outcome.result.status,
          },
        );
      case 'cancelling':
        ctx.state.log.info('cancellation requested for a running job: its result will be discarded');
        ctx.status = 202;
        ctx.set('Location', `/v1/jobs/${id}`);
        ctx.set('Retry-After', '1');
        ctx.body = { id, status: 'active', model: outcome.model, cancelling: true };
        return;
      case 'cancelled': {
        ctx.state.log.info('job cancelled');
        const callback = await deps.callbacks.state(id);
        ctx.body = { ...outcome.result, ...(callback ? { callback } : {}) };
        return;
      }
    }
  });
}
