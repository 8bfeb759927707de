import { INFERENCE_JOB_NAME, INFERENCE_JOB_OPTIONS, type InferenceJob } from '@conveyor/shared/contract/jobs.contract';
import type { ModelName, TraceContext } from '@conveyor/shared/contract/common.contract';
import type { JobCache } from '@conveyor/shared/contract/cache.contract';
import type { JobStore } from '@conveyor/shared/contract/job-store';
import type { ImageFacts } from '../intake/inspect-image.js';
import type { PredictInput } from '../intake/read-input.js';
import type { InferenceQueue } from './model-queues.js';

/** What a predict request knows once its image passed the checks: everything a job is made of. */
export interface Submission {
  /** The queue of the model the job is for. */
  readonly queue: InferenceQueue;
  readonly model: ModelName;
  /** Chosen by the gateway (at admission), so it can wait for the job before it exists. */
  readonly jobId: string;
  readonly requestId: string;
  /** When the gateway accepted the request (epoch ms). */
  readonly acceptedAt: number;
  readonly input: PredictInput;
  readonly bytes: Buffer;
  readonly facts: ImageFacts;
  /** This gateway instance, when a request waits for the job's reply; absent for fire-and-poll. */
  readonly replyTo?: string | undefined;
  /** The API key id that made the job, when keys are required (only it, or an admin, may read the job). */
  readonly owner?: string | undefined;
  /** The job's BullMQ priority from fair queuing (jobs/fair-queue.ts); absent: plain FIFO. */
  readonly priority?: number | undefined;
  /** The caller's processing deadline (epoch ms): a worker drops the job unrun after it. */
  readonly deadline?: number | undefined;
  /** The trace the job continues (the gateway's enqueue span), when tracing is on and the request sampled. */
  readonly trace?: TraceContext | undefined;
  /** The result cache's facts (its answer is stored; the in-flight record it leads). */
  readonly cache?: JobCache | undefined;
}

/**
 * Where an upload becomes a job: the job's payload is built here from what the request learnt, the
 * image bytes go to their own key (JobStore.putInput), then the job is added with the gateway's id.
 *
 * Both commands go out on the queue's own connection without waiting for each other: Redis runs a
 * connection's commands in order, so no worker can see the job before its image, and the request
 * pays one round trip instead of two. (A MULTI would be atomic too, but ioredis copies every one
 * of BullMQ's ~50 scripts onto each transaction object: measured, it cost the gateway 40 % more CPU
 * per request than two plain commands.)
 */
export class JobSubmitter {
  constructor(
    /** Built on the connection every model's queue was built with: the ordering above holds only on one connection. */
    private readonly inputs: JobStore,
    private readonly inputTtlSeconds: number,
    /** How long an owner is kept: as long as the job can be read (waiting, then its result). */
    private readonly ownerTtlSeconds: number,
  ) {}

  /** Queues the job a submission describes on its model's queue. */
  async submit(submission: Submission): Promise<void> {
    const { queue, jobId, bytes, owner, priority } = submission;
    // The owner goes first: no one may read the job before it is known whose it is.
    const [owned, stored, added] = await Promise.allSettled([
      owner === undefined ? undefined : this.inputs.putOwner(jobId, owner, this.ownerTtlSeconds),
      this.inputs.putInput(jobId, bytes, this.inputTtlSeconds),
      queue.add(INFERENCE_JOB_NAME, inferenceJob(submission), {
        ...INFERENCE_JOB_OPTIONS,
        jobId,
        ...(priority === undefined ? {} : { priority }),
      }),
    ]);
    if (owned.status === 'fulfilled' && stored.status === 'fulfilled' && added.status === 'fulfilled') return;
    // Leave nothing behind: a job without its image would fail, an image without a job would
    // hold memory until its TTL.
    await Promise.allSettled([
      owned.status === 'fulfilled' && owner !== undefined ? this.inputs.dropOwner(jobId) : undefined,
      stored.status === 'fulfilled' ? this.inputs.dropInput(jobId) : undefined,
      added.status === 'fulfilled' ? queue.remove(jobId) : undefined,
    ]);
    const failed = [owned, stored, added].find((r): r is PromiseRejectedResult => r.status === 'rejected');
    throw failed?.reason;
  }
}

/** The job's payload, as the contract has it (the image itself is under its own key). */
export function inferenceJob(submission: Submission): InferenceJob {
  const { input, facts, bytes, replyTo } = submission;
  return {
    kind: 'inference',
    version: 1,
    requestId: submission.requestId,
    ...(replyTo ? { replyTo } : {}),
    acceptedAt: submission.acceptedAt,
    model: submission.model,
    ...(submission.deadline === undefined ? {} : { deadline: submission.deadline }),
    ...(submission.trace ? { trace: submission.trace } : {}),
    ...(submission.cache ? { cache: submission.cache } : {}),
    input: {
      ...facts,
      bytes: bytes.length,
      source:
        input.kind === 'url'
          ? { kind: 'url', url: input.url.href }
          : { kind: 'upload', ...(input.filename ? { filename: input.filename } : {}) },
    },
  };
}
