import type { Redis } from '@conveyor/shared/redis';
import type { JobResult, Keys, PredictionEvent, ReplyMessage } from '@conveyor/shared/contract/queue.contract';

/**
 * Publishes a finished job at most once, in one Lua call: the result record (with its TTL), the
 * deletion of the input image, the prediction event for the monitor, and the notification to the
 * waiting gateway — only if no result exists yet and this attempt still holds the job's lock.
 *
 * Why both checks: a worker frozen past its lock (a long GC pause, a VM freeze, a throttled
 * container; measured: SIGSTOP for 50 s) comes back to find that another worker took the job over
 * and finished it. Without them it published a second time: the result overwritten, the event
 * counted twice by the monitor.
 */
export type PublishOutcome = 'published' | 'already-published' | 'lock-lost';

// KEYS: result, input, predictions stream, job lock, queued-bytes counter. ARGV: token ('' = no lock
// check), result JSON, TTL (s), event JSON ('' = none), stream max length, reply channel ('' = none),
// reply JSON, the job's image size (taken off the gateways' queued-bytes count, once per job).
const COMMIT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[1] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[2])
if redis.call('DECRBY', KEYS[5], ARGV[8]) < 0 then redis.call('SET', KEYS[5], 0) end
if ARGV[4] ~= '' then redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4]) end
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return 1`;

type CommitRedis = Redis & {
  conveyorCommitResult(
    result: string,
    input: string,
    stream: string,
    lock: string,
    queuedBytes: string,
    token: string,
    resultJson: string,
    ttl: number,
    eventJson: string,
    maxLen: number,
    channel: string,
    replyJson: string,
    inputBytes: number,
  ): Promise<number>;
};

export class ResultPublisher {
  private readonly redis: CommitRedis;

  constructor(
    redis: Redis,
    private readonly keys: Keys,
    private readonly options: { resultTtlSeconds: number; streamMaxLen: number },
  ) {
    redis.defineCommand('conveyorCommitResult', { numberOfKeys: 5, lua: COMMIT });
    this.redis = redis as CommitRedis;
  }

  /**
   * `token`: the BullMQ lock token of the attempt publishing (without one, only the result is
   * checked); `inputBytes`: the size of the job's image; `queue`: the queue the job is on.
   */
  async publish(
    result: JobResult,
    replyTo: string | undefined,
    event: PredictionEvent | undefined,
    token: string | undefined,
    inputBytes: number,
    queue: string,
  ): Promise<PublishOutcome> {
    const reply: ReplyMessage | undefined = replyTo ? { kind: 'job-finished', version: 1, result } : undefined;
    const code = await this.redis.conveyorCommitResult(
      this.keys.result(result.id),
      this.keys.input(result.id),
      this.keys.predictions,
      this.keys.jobLock(queue, result.id),
      this.keys.queuedBytes,
      token ?? '',
      JSON.stringify(result),
      this.options.resultTtlSeconds,
      event ? JSON.stringify(event) : '',
      this.options.streamMaxLen,
      replyTo ? this.keys.replies(replyTo) : '',
      reply ? JSON.stringify(reply) : '',
      inputBytes,
    );
    return code === 1 ? 'published' : code === 0 ? 'already-published' : 'lock-lost';
  }
}
