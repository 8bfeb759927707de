import type { Access } from '../access/access.middleware.js';
import type Router from '@koa/router';
import { z } from 'zod';
import { problemBody, ProblemError } from '@conveyor/shared/problem';
import { bindLog, type GatewayState } from '../http/context.js';
import type { JobLookup } from '../jobs/job-lookup.js';
import type { CallbackDispatcher } from '../callbacks/callback-dispatcher.js';
import type { JobOwnership } from '../access/job-ownership.js';

const JobId = z.uuid();

/**
 * GET /v1/jobs/:id, for a job of any model: status while queued or running, the result (or error)
 * once finished. Another key's job is answered as an unknown one (JobOwnership).
 */
export function registerJobRoutes(
  router: Router<GatewayState>,
  lookup: JobLookup,
  access: Access,
  callbacks: CallbackDispatcher,
  ownership: JobOwnership,
): void {
  router.get('/v1/jobs/:id', access.require('predict'), async (ctx) => {
    const id = ctx.params.id ?? '';
    const view =
      JobId.safeParse(id).success && (await ownership.mayRead(ctx.state.apiKey, id)) ? await lookup.find(id) : undefined;
    if (!view) throw new ProblemError('not-found', `No job ${id}: unknown, or its result has expired`);
    ctx.state.jobId = id;
    bindLog(ctx.state, { jobId: id });
    // A job given a Callback-Url shows how its delivery went.
    const callback = await callbacks.state(id);
    const extra = callback ? { callback } : {};
    switch (view.kind) {
      case 'pending':
        ctx.set('Retry-After', '1');
        ctx.body = { id, status: view.status, model: view.model, ...extra };
        return;
      case 'finished':
        ctx.body = { ...view.result, ...extra };
        return;
      case 'lost':
        ctx.body = { ...lostJob(id, view.reason), ...extra };
        return;
    }
  });
}

/**
 * A job BullMQ failed without a result record, as the API shows it. BullMQ's reason is shown when
 * it is BullMQ's or the worker's own words; an error Redis answered (`OOM command not allowed …
 * script: d932…`, `ERR …`) says nothing a client can act on and shows how the store works inside.
 */
export function lostJob(id: string, reason: string) {
  const detail = REDIS_ERROR.test(reason) ? 'The job could not be completed; submit it again' : reason;
  return { id, status: 'failed', error: problemBody(new ProblemError('inference-failed', detail)) };
}

/** Redis's error replies start with an upper-case code (OOM, ERR, READONLY, NOSCRIPT…); scripts name themselves. */
const REDIS_ERROR = /^[A-Z]{2,}(?: |$)|\bscript: [0-9a-f]{8,}|maxmemory|@user_script/;
