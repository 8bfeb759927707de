import type { Redis } from '@conveyor/shared/redis';
import { JobResult, type CancelledResult } from './jobs.contract.js';
import { problemBody, ProblemError } from '../problem.js';
import type { FeedbackEvent, PredictionEvent } from './events.contract.js';
import type { RedisKeys } from './redis-keys.js';
import { setBytes } from './set-bytes.js';

/**
 * How a commit ended: 'published' kept the result; 'cancelled' kept a cancelled result instead (the
 * job was cancelled while the attempt ran, redisKeys().cancelled); the others changed nothing.
 */
export type CommitOutcome = 'published' | 'cancelled' | 'already-published' | 'lock-lost';

/** What marking a job cancelled found: no result yet (marked), or a result kept already. */
export type CancelMark = 'marked' | 'finished';

/** What an attempt finds when it takes a job's input. */
export type TakenInput =
  /** An earlier attempt committed the result and died before BullMQ recorded it. */
  | { readonly finished: true }
  /** `bytes` is null once the image expired (INPUT_TTL_SECONDS) or was never stored. */
  | { readonly finished: false; readonly bytes: Buffer | null };

export interface CommitOptions {
  /** The gateway instance waiting for the job (`InferenceJob.replyTo`); none for fire-and-poll jobs. */
  readonly replyTo?: string | undefined;
  /** The prediction event for the monitor; none for failed jobs. */
  readonly event?: PredictionEvent | undefined;
  /** The BullMQ lock token of the attempt committing (without one, only the result is checked). */
  readonly token?: string | undefined;
  /** The queue the job is on (its lock lives under the queue's name). */
  readonly queue: string;
}

export interface JobStoreOptions {
  /** How long a result (and the once-per-job feedback mark) is kept. */
  readonly resultTtlSeconds: number;
  /** The approximate length the predictions stream is trimmed to (commits only). */
  readonly predictionStreamMaxLen?: number;
}

/** The feedback stream is trimmed to about this many entries (the monitor reads it continuously). */
const FEEDBACK_STREAM_MAXLEN = 100_000;

/**
 * Commits a finished job at most once, in one Lua call: the result record (with its TTL), the
 * deletion of the input image, the release of its bytes from admission's count, the prediction event
 * for the monitor, and the notification to the waiting gateway — only if no result exists yet and
 * this attempt still holds the job's lock.
 *
 * Why both checks: a worker frozen past its lock (a long GC pause, a VM freeze, a throttled
 * container; measured: SIGSTOP for 50 s) comes back to find that another worker took the job over
 * and finished it. Without them it published a second time: the result overwritten, the event
 * counted twice by the monitor.
 *
 * The job's owner (when keys are required) is kept from then on exactly as long as its result.
 *
 * The shebang makes the script a flagged one (Redis 7): a Redis at its maxmemory refuses it before
 * its first command, never half-way through. Without it, Redis checks memory at each write, and a
 * commit could store the result and then be refused the rest (the event, the reply, the bytes).
 *
 * A job marked cancelled (KEYS[8], `DELETE /v1/jobs/{id}` while a worker held it) keeps the
 * cancelled result (ARGV[9]) instead, without a prediction event: the check and the write are one
 * script, so a cancellation either comes before the commit (the result is discarded) or finds the
 * result kept (409), never both.
 *
 * The reply to the waiting gateway is the ReplyMessage `{"kind":"job-finished","version":1,"result":…}`
 * around the result JSON the script keeps, spelled here in Lua rather than serialized a second time
 * in JS and sent over the socket twice (the result is most of a commit's bytes).
 *
 * KEYS: result, input, predictions stream, job lock, queued images (hash), their byte sum, owner, cancel mark.
 * ARGV: token ('' = no lock check), result JSON, TTL (s), event JSON ('' = none), stream max length,
 * reply channel ('' = none), the job id (its field in the queued images), the cancelled result JSON
 * ('' when the result is a cancellation already).
 */
const COMMIT = `#!lua
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[1] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
local code = 1
if ARGV[8] ~= '' and redis.call('EXISTS', KEYS[8]) == 1 then
  ARGV[2], ARGV[4], code = ARGV[8], '', 2
end
redis.call('DEL', KEYS[8])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('EXPIRE', KEYS[7], ARGV[3])
redis.call('DEL', KEYS[2])
local held = redis.call('HGET', KEYS[5], ARGV[7])
if held then
  redis.call('HDEL', KEYS[5], ARGV[7])
  if redis.call('DECRBY', KEYS[6], tonumber(string.match(held, '^%d+')) or 0) < 0 then redis.call('SET', KEYS[6], 0) end
end
if ARGV[4] ~= '' then redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4]) end
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], '{"kind":"job-finished","version":1,"result":' .. ARGV[2] .. '}') end
return code`;

/**
 * A job's image, unless an earlier attempt already committed its result (then 1): one command, one
 * write to the socket. Flagged read-only, so a Redis at its maxmemory still answers it (an attempt
 * must be able to see its input while it waits for room to commit). KEYS: result, input.
 */
const TAKE_INPUT = `#!lua flags=no-writes
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
return redis.call('GET', KEYS[2])`;

// Marks a job cancelled unless its result is kept already. KEYS: result, cancel mark. ARGV: TTL (s).
const MARK_CANCELLED = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return 1`;

type CommitRedis = Redis & {
  conveyorCommitResult(
    result: string,
    input: string,
    stream: string,
    lock: string,
    queuedImages: string,
    queuedBytes: string,
    owner: string,
    cancelMark: string,
    token: string,
    resultJson: string,
    ttl: number,
    eventJson: string,
    maxLen: number,
    channel: string,
    jobId: string,
    cancelledJson: string,
  ): Promise<number>;
  conveyorMarkCancelled(result: string, mark: string, ttl: number): Promise<number>;
  conveyorTakeInputBuffer(result: string, input: string): Promise<1 | Buffer | null>;
};

/**
 * The one owner of a job's state in Redis (besides BullMQ's own): the gateway puts the image and
 * reads results, owners and records feedback through it, the worker takes the image and commits the
 * result through it. No other module reads or writes `redisKeys().input`, `result`, `owner`, `feedback` or publishes on
 * `replies`, so the layout of a job in Redis can be read (and changed) in this file alone.
 *
 * It is used on whatever connection its caller needs: the gateway builds one on the queues'
 * connection to put images (JobSubmitter's ordering argument) and one on its own for the rest.
 */
export class JobStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly options: JobStoreOptions,
  ) {
    // Defined now, not on first use: ioredis's auto-pipelining copies a connection's commands into a
    // pipeline when it opens one, so a script defined while another command's pipeline is open is
    // missing from it (job-store.test.ts shows the failure).
    if (typeof (redis as Partial<CommitRedis> & Redis).conveyorCommitResult !== 'function') {
      redis.defineCommand('conveyorCommitResult', { numberOfKeys: 8, lua: COMMIT });
      redis.defineCommand('conveyorMarkCancelled', { numberOfKeys: 2, lua: MARK_CANCELLED });
      redis.defineCommand('conveyorTakeInput', { numberOfKeys: 2, lua: TAKE_INPUT });
    }
  }

  /** Whether the connection is up (a sweep that cannot reach Redis waits for the next tick). */
  get ready(): boolean {
    return this.redis.status === 'ready';
  }

  // --- the gateway's side ---

  /** Stores a job's image as a binary string (not base64 inside the job's JSON), expiring after `ttlSeconds`. */
  async putInput(jobId: string, bytes: Buffer, ttlSeconds: number): Promise<void> {
    // Without ioredis's copy of the image into a fresh Buffer of the whole command (set-bytes.ts).
    await setBytes(this.redis, this.keys.input(jobId), bytes, ttlSeconds);
  }

  /** Removes an image whose job could not be queued (it would hold memory until its TTL). */
  async dropInput(jobId: string): Promise<void> {
    await this.redis.del(this.keys.input(jobId));
  }

  /**
   * Records which API key made a job (its owner), for as long as the job can be read. Written only
   * when keys are required: without keys a job id (a random UUID) is the capability to read it.
   */
  async putOwner(jobId: string, owner: string, ttlSeconds: number): Promise<void> {
    await this.redis.set(this.keys.owner(jobId), owner, 'EX', ttlSeconds);
  }

  /** Removes the owner of a job that could not be queued. */
  async dropOwner(jobId: string): Promise<void> {
    await this.redis.del(this.keys.owner(jobId));
  }

  /** The API key id that made a job; undefined for a job made without keys, unknown, or expired. */
  async readOwner(jobId: string): Promise<string | undefined> {
    return (await this.redis.get(this.keys.owner(jobId))) ?? undefined;
  }

  /** The stored result of a finished job; undefined while it is not finished or once it expired. */
  async readResult(jobId: string): Promise<JobResult | undefined> {
    const raw = await this.redis.get(this.keys.result(jobId));
    return raw === null ? undefined : JobResult.parse(JSON.parse(raw));
  }

  /** The stored results of many jobs in one MGET, in order; a missing or unreadable record is undefined. */
  async readResults(jobIds: readonly string[]): Promise<(JobResult | undefined)[]> {
    if (jobIds.length === 0) return [];
    const values = await this.redis.mget(jobIds.map((id) => this.keys.result(id)));
    return values.map((value) => {
      if (value === null) return undefined;
      const result = JobResult.safeParse(JSON.parse(value));
      return result.success ? result.data : undefined;
    });
  }

  /**
   * Records the ground truth of a job, once per job while its result is kept, and hands it to the
   * monitor on the feedback stream. 'duplicate' when feedback for the job was recorded before.
   */
  async recordFeedback(event: FeedbackEvent): Promise<'recorded' | 'duplicate'> {
    const first = await this.redis.set(this.keys.feedback(event.jobId), event.label, 'EX', this.options.resultTtlSeconds, 'NX');
    if (first !== 'OK') return 'duplicate';
    await this.redis.xadd(this.keys.feedbackStream, 'MAXLEN', '~', FEEDBACK_STREAM_MAXLEN, '*', 'event', JSON.stringify(event));
    return 'recorded';
  }

  /**
   * Marks a job cancelled, so that its commit keeps a cancelled result instead of the worker's
   * (see COMMIT); 'finished' when its result is kept already (nothing is marked then).
   */
  async markCancelled(jobId: string, ttlSeconds: number): Promise<CancelMark> {
    const code = await this.commitCommand().conveyorMarkCancelled(
      this.keys.result(jobId),
      this.keys.cancelled(jobId),
      ttlSeconds,
    );
    return code === 1 ? 'marked' : 'finished';
  }

  /** Takes back the mark of a job that turned out not to exist. */
  async unmarkCancelled(jobId: string): Promise<void> {
    await this.redis.del(this.keys.cancelled(jobId));
  }

  // --- the worker's side ---

  /**
   * The image of a job, and whether an earlier attempt already finished it, in one round trip (see
   * TAKE_INPUT). Not an ioredis pipeline of EXISTS and GET: building one copies every script defined
   * on the connection into it, which cost the worker more CPU than the script.
   */
  async takeInput(jobId: string): Promise<TakenInput> {
    const taken = await this.commitCommand().conveyorTakeInputBuffer(this.keys.result(jobId), this.keys.input(jobId));
    return taken === 1 ? { finished: true } : { finished: false, bytes: taken };
  }

  /**
   * Commits a finished job at most once (see COMMIT): result, input deletion, event, reply. The
   * gateway commits cancellations of waiting jobs through it too (no token, no event).
   */
  async commit(result: JobResult, options: CommitOptions): Promise<CommitOutcome> {
    const { replyTo, event, token, queue } = options;
    const cancelled = result.status === 'cancelled' ? undefined : cancelledInstead(result);
    const code = await this.commitCommand().conveyorCommitResult(
      this.keys.result(result.id),
      this.keys.input(result.id),
      this.keys.predictions,
      this.keys.jobLock(queue, result.id),
      this.keys.queuedImages,
      this.keys.queuedBytes,
      this.keys.owner(result.id),
      this.keys.cancelled(result.id),
      token ?? '',
      JSON.stringify(result),
      this.options.resultTtlSeconds,
      event ? JSON.stringify(event) : '',
      event ? this.streamMaxLen() : 0,
      replyTo ? this.keys.replies(replyTo) : '',
      result.id,
      cancelled ? JSON.stringify(cancelled) : '',
    );
    return code === 1 ? 'published' : code === 2 ? 'cancelled' : code === 0 ? 'already-published' : 'lock-lost';
  }

  private streamMaxLen(): number {
    const maxLen = this.options.predictionStreamMaxLen;
    if (maxLen === undefined) throw new Error('this JobStore was built without predictionStreamMaxLen: it cannot commit');
    return maxLen;
  }

  private commitCommand(): CommitRedis {
    return this.redis as CommitRedis;
  }
}

/**
 * The problem every cancelled-while-running result carries: made once, not per commit (a ProblemError
 * captures a stack trace, and every commit sends the cancelled alternative along).
 */
const CANCELLED_WHILE_RUNNING = Object.freeze(
  problemBody(new ProblemError('cancelled', 'The job was cancelled while a worker ran it; its result was discarded')),
);

/** The cancelled result a commit keeps instead of `result` when the job was cancelled while it ran. */
function cancelledInstead(result: Exclude<JobResult, CancelledResult>): CancelledResult {
  const { id, requestId, acceptedAt, finishedAt, attempt, worker } = result;
  return {
    id,
    requestId,
    acceptedAt,
    finishedAt,
    attempt,
    worker,
    status: 'cancelled',
    ...('model' in result && result.model ? { model: result.model } : {}),
    error: CANCELLED_WHILE_RUNNING,
  };
}
