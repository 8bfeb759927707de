import type { Redis } from 'ioredis';
import type { JobResult, Keys, PredictionEvent, ReplyMessage } from '@conveyor/shared/contract/queue.contract';

/**
 * Publishes a finished job in one MULTI: the result record (with its TTL), the deletion of the
 * input image, the prediction event for the monitor, and the notification to the waiting gateway.
 * Either all of it happens or none (and the job is retried).
 */
export class ResultPublisher {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly options: { resultTtlSeconds: number; streamMaxLen: number },
  ) {}

  async publish(result: JobResult, replyTo: string | undefined, event?: PredictionEvent): Promise<void> {
    const tx = this.redis.multi();
    tx.set(this.keys.result(result.id), JSON.stringify(result), 'EX', this.options.resultTtlSeconds);
    tx.del(this.keys.input(result.id));
    if (event) {
      tx.xadd(this.keys.predictions, 'MAXLEN', '~', this.options.streamMaxLen, '*', 'event', JSON.stringify(event));
    }
    if (replyTo) {
      const message: ReplyMessage = { kind: 'job-finished', version: 1, result };
      tx.publish(this.keys.replies(replyTo), JSON.stringify(message));
    }
    const replies = await tx.exec();
    const failed = replies?.find(([error]) => error);
    if (!replies || failed)
      throw new Error(`storing the result of ${result.id} failed: ${String(failed?.[0] ?? 'transaction aborted')}`);
  }
}
