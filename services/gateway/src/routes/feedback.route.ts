import type { Access } from '../access/access.middleware.js';
import type Router from '@koa/router';
import { koaBody } from 'koa-body';
import { FeedbackBody } from '@conveyor/shared/contract/api.contract';
import type { JobStore } from '@conveyor/shared/contract/job-store';
import type { FeedbackEvent } from '@conveyor/shared/contract/events.contract';
import type { FleetStore } from '@conveyor/shared/contract/fleet-store';
import { ProblemError } from '@conveyor/shared/problem';
import type { GatewayState } from '../http/context.js';
import type { JobOwnership } from '../access/job-ownership.js';

/**
 * POST /v1/feedback `{ jobId, label }`: the ground truth of a prediction, learnt later. Accepted
 * once per job while the job's result is kept; the monitor joins it to the prediction and keeps
 * the rolling accuracy. Only for the key's own jobs (or any, with an admin key): another key's job
 * is answered as an unknown one, and its prediction is never told.
 */
export function registerFeedbackRoute(
  router: Router<GatewayState>,
  deps: { fleet: FleetStore; jobs: JobStore; access: Access; ownership: JobOwnership },
): void {
  router.post(
    '/v1/feedback',
    deps.access.require('feedback'),
    koaBody({ json: true, multipart: false, urlencoded: false, text: false, jsonLimit: 4096 }),
    async (ctx) => {
      if (!ctx.is('json')) throw new ProblemError('unsupported-media-type', 'Send application/json {"jobId": "…", "label": "…"}');
      const parsed = FeedbackBody.safeParse(ctx.request.body);
      if (!parsed.success) throw new ProblemError('invalid-request', 'Expected {"jobId": "<uuid>", "label": "<class>"}');
      const { jobId, label } = parsed.data;
      ctx.state.jobId = jobId;
      const result = (await deps.ownership.mayRead(ctx.state.apiKey, jobId)) ? await deps.jobs.readResult(jobId) : undefined;
      if (!result) throw new ProblemError('not-found', `No job ${jobId}: unknown, not finished yet, or its result has expired`);
      if (result.status !== 'completed')
        throw new ProblemError('conflict', `Job ${jobId} failed; there is no prediction to compare with`);
      // A label the model cannot predict is not ground truth for it (150 forged "banana" labels
      // raised a quality alert); the workers serving a version publish its labels.
      const model = `${result.model.name}@${result.model.version}`;
      const labels = await deps.fleet.labels(result.model);
      if (!labels) {
        throw new ProblemError('not-ready', `The labels of ${model} are not known yet; retry shortly`, { retryAfterSeconds: 5 });
      }
      if (!labels.includes(label)) {
        // Well-formed, but not one of this model's labels (which no schema can list): 422, not 400.
        throw new ProblemError('unknown-label', `${model} has no label "${label}"`, labels.length <= 100 ? { labels } : {});
      }
      const event: FeedbackEvent = {
        kind: 'feedback',
        version: 1,
        jobId,
        label,
        at: new Date().toISOString(),
        requestId: ctx.state.requestId,
        predicted: { label: result.prediction.label, confidence: result.prediction.confidence, model: result.model },
      };
      if ((await deps.jobs.recordFeedback(event)) === 'duplicate')
        throw new ProblemError('conflict', `Feedback for job ${jobId} was already recorded`);
      ctx.status = 202;
      ctx.body = { jobId, label, status: 'accepted', predicted: result.prediction.label, model: result.model };
    },
  );
}
