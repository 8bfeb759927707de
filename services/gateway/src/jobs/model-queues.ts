import { Queue } from 'bullmq';
import type { Redis } from '@conveyor/shared/redis';
import {
  inferenceQueue,
  type InferenceJob,
  type InferenceJobName,
  type InferenceJobReturn,
} from '@conveyor/shared/contract/jobs.contract';
import type { ModelName } from '@conveyor/shared/contract/common.contract';

/** A model's BullMQ queue, typed by the contract: its jobs' payload, return value and name. */
export type InferenceQueue = Queue<InferenceJob, InferenceJobReturn, InferenceJobName>;

/**
 * The BullMQ queue of each model (inferenceQueue), made the first time a model is routed to. Only
 * known models (configured, or announced by a worker: see ModelCatalogue) get one, so no request
 * can make the gateway create queues. They share one connection: JobSubmitter relies on the image
 * and the job going out on the same connection, and a Queue never blocks it.
 */
export class ModelQueues {
  private readonly queues = new Map<ModelName, InferenceQueue>();

  constructor(
    private readonly connection: Redis,
    private readonly prefix: string,
    /** Called once per new queue (error logging, the dashboard). */
    private readonly onCreate: (queue: InferenceQueue, model: ModelName) => void = () => undefined,
  ) {}

  get(model: ModelName): InferenceQueue {
    let queue = this.queues.get(model);
    if (!queue) {
      queue = new Queue<InferenceJob, InferenceJobReturn, InferenceJobName>(inferenceQueue(model), {
        connection: this.connection,
        prefix: this.prefix,
      });
      this.queues.set(model, queue);
      this.onCreate(queue, model);
    }
    return queue;
  }

  /** Idempotent; closes every queue even if one fails. */
  async close(): Promise<void> {
    const results = await Promise.allSettled([...this.queues.values()].map((q) => q.close()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}
