import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import {
  INFERENCE_JOB_NAME,
  INFERENCE_JOB_OPTIONS,
  type InferenceJob,
  type Keys,
} from '@conveyor/shared/contract/queue.contract';

/**
 * Where an upload becomes a job: the image bytes go to their own key as a binary string (not as
 * base64 inside the job's JSON), then the job is added with an id chosen by the gateway, so the
 * gateway can wait for it before it exists.
 */
export class JobSubmitter {
  constructor(
    private readonly queue: Queue,
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly inputTtlSeconds: number,
  ) {}

  async submit(jobId: string, bytes: Buffer, job: InferenceJob): Promise<void> {
    await this.redis.set(this.keys.input(jobId), bytes, 'EX', this.inputTtlSeconds);
    try {
      await this.queue.add(INFERENCE_JOB_NAME, job, { ...INFERENCE_JOB_OPTIONS, jobId });
    } catch (error) {
      await this.redis.del(this.keys.input(jobId)).catch(() => undefined);
      throw error;
    }
  }
}
