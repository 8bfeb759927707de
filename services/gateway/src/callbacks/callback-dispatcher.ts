import { DelayedError, Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import { got, RequestError } from 'got';
import type { Redis } from '@conveyor/shared/redis';
import { CallbackState, type CallbackPayload } from '@conveyor/shared/contract/api.contract';
import { CallbackJob, JobResult, QUEUES, ReplyMessage, type Keys } from '@conveyor/shared/contract/queue.contract';
import type { Logger } from '@conveyor/shared/logger';
import { ProblemError } from '@conveyor/shared/problem';
import { filteringAgents, isAddressRefused } from '../intake/fetch-image.js';
import { parseImageUrl } from '../intake/read-input.js';
import { secretBytes, signWebhook } from './webhook-signature.js';

/**
 * Result callbacks for asynchronous jobs. A request may name a `Callback-Url`; once its job is
 * finished the result is POSTed there, signed as Standard Webhooks do, retried with exponential
 * backoff, and the delivery state is kept beside the result (`GET /v1/jobs/{id}` shows it).
 *
 * Each callback is a BullMQ job on its own queue, added before the inference job, so no finished
 * job can be missed: the delivery job reads the stored result and, while there is none, puts
 * itself back as delayed (without spending an attempt). The worker's reply on this gateway's
 * channel promotes it at once, so a delivery normally follows the result within a round trip; a
 * lost reply only delays it to the next poll. Deliveries never touch the result: polling works
 * whatever a receiver does.
 *
 * Outgoing requests go through the image fetcher's filtering agents: a callback may reach exactly
 * the addresses an image URL may (public unicast, plus URL_ALLOW_CIDRS), checked at every delivery
 * on the address actually connected to (DNS rebinding included). Redirects are not followed.
 */
export interface CallbackOptions {
  readonly secret: string | undefined;
  readonly maxAttempts: number;
  readonly backoffMs: number;
  readonly timeoutMs: number;
  readonly concurrency: number;
  readonly allowCidrs: readonly string[];
  /** How long a job may wait for a worker (INPUT_TTL_SECONDS): a callback gives up after that. */
  readonly inputTtlSeconds: number;
  readonly resultTtlSeconds: number;
}

export class CallbackDispatcher {
  private readonly queue: Queue<CallbackJob>;
  private worker: Worker<CallbackJob> | undefined;
  private readonly secret: Buffer | undefined;
  private readonly client;
  /** Jobs with a callback that this gateway scheduled and whose reply it may still receive. */
  private readonly awaiting = new Set<string>();

  constructor(
    /** A connection for BullMQ (maxRetriesPerRequest: null); closed by the caller. */
    private readonly connection: Redis,
    private readonly redis: Redis,
    private readonly keys: Keys,
    prefix: string,
    private readonly options: CallbackOptions,
    private readonly log: Logger,
  ) {
    this.queue = new Queue<CallbackJob>(QUEUES.callbacks, { connection, prefix });
    this.queue.on('error', (error) => log.warn({ err: error }, 'callback queue error'));
    this.secret = options.secret ? secretBytes(options.secret) : undefined;
    this.client = got.extend({
      agent: filteringAgents(options.allowCidrs),
      timeout: { request: options.timeoutMs },
      followRedirect: false,
      retry: { limit: 0 },
      throwHttpErrors: false,
      headers: { 'user-agent': 'Conveyor callbacks' },
    });
  }

  /** Takes deliveries from the queue, and promotes one as soon as its job's reply arrives on `subscriber`. */
  start(subscriber: Redis, prefix: string): void {
    this.worker = new Worker<CallbackJob>(QUEUES.callbacks, (job, token) => this.deliver(job, token), {
      connection: this.connection,
      prefix,
      concurrency: this.options.concurrency,
    });
    this.worker.on('error', (error) => this.log.warn({ err: error }, 'callback worker error'));
    subscriber.on('message', (_channel: string, message: string) => {
      let id: string;
      try {
        id = ReplyMessage.parse(JSON.parse(message)).result.id;
      } catch {
        return; // the result waiter reports malformed replies
      }
      if (!this.awaiting.delete(id)) return;
      void this.queue
        .getJob(id)
        .then((job) => job?.promote())
        .catch(() => undefined); // not delayed (already running): nothing to hurry
    });
  }

  /** The callback URL a request names, checked as image URLs are (http/https, no credentials); undefined if none. */
  parse(header: string): URL | undefined {
    if (!header) return undefined;
    if (!this.secret) {
      throw new ProblemError('invalid-request', 'Callbacks are off on this gateway (no CALLBACK_SECRET is configured)');
    }
    if (header.length > 2048) throw new ProblemError('invalid-request', 'The Callback-Url is longer than 2048 characters');
    return parseImageUrl(header);
  }

  /** Before the job is queued: its delivery is waiting for it from now on. */
  async schedule(jobId: string, url: URL, requestId: string): Promise<CallbackState> {
    const state: CallbackState = { url: url.href, state: 'pending', attempts: 0, webhookId: `msg_${jobId}` };
    await this.write(jobId, state, this.options.inputTtlSeconds + this.options.resultTtlSeconds);
    const data: CallbackJob = { kind: 'callback', version: 1, jobId, requestId, url: url.href, webhookId: state.webhookId };
    await this.queue.add('deliver', data, {
      jobId,
      delay: 250,
      attempts: this.options.maxAttempts,
      backoff: { type: 'exponential', delay: this.options.backoffMs },
      removeOnComplete: true,
      removeOnFail: { age: 24 * 3600, count: 1000 },
    });
    this.awaiting.add(jobId);
    return state;
  }

  /** The job could not be queued after all: no delivery. */
  async cancel(jobId: string): Promise<void> {
    this.awaiting.delete(jobId);
    await Promise.allSettled([this.queue.remove(jobId), this.redis.del(this.keys.callback(jobId))]);
  }

  async state(jobId: string): Promise<CallbackState | undefined> {
    const raw = await this.redis.get(this.keys.callback(jobId));
    return raw === null ? undefined : CallbackState.parse(JSON.parse(raw));
  }

  async close(): Promise<void> {
    const closing = Promise.all([this.worker?.close(), this.queue.close()]).then(() => undefined);
    // With Redis away, BullMQ's close waits for it to come back, past any shutdown budget. Nothing
    // is lost by not waiting: a delivery left unfinished is still a job in Redis whose lock lapses,
    // and another gateway (or this one, restarted) delivers it.
    let poll: NodeJS.Timeout | undefined;
    const pointless = new Promise<void>((resolve) => {
      poll = setInterval(() => {
        if (this.connection.status === 'ready') return;
        this.log.warn('Redis is unreachable: not waiting for the callback queue to close');
        resolve();
      }, 100);
    });
    try {
      await Promise.race([closing, pointless]);
    } finally {
      clearInterval(poll);
      closing.catch(() => undefined);
    }
  }

  private async deliver(job: Job<CallbackJob>, token: string | undefined): Promise<void> {
    const data = CallbackJob.parse(job.data);
    const log = this.log.child({ jobId: data.jobId, requestId: data.requestId, attempt: job.attemptsMade + 1 });
    const raw = await this.redis.get(this.keys.result(data.jobId));
    if (raw === null) {
      const waited = Date.now() - job.timestamp;
      if (waited > (this.options.inputTtlSeconds + this.options.resultTtlSeconds) * 1000) {
        await this.update(data.jobId, { state: 'failed', lastError: 'the job never finished' }, this.options.resultTtlSeconds);
        throw new UnrecoverableError('the job never finished');
      }
      // Not finished yet: wait again without spending an attempt (a reply promotes it earlier).
      this.awaiting.add(data.jobId);
      await job.moveToDelayed(Date.now() + pollDelay(waited), token);
      throw new DelayedError();
    }
    const result = JobResult.parse(JSON.parse(raw));
    const payload: CallbackPayload = {
      type: result.status === 'completed' ? 'job.completed' : 'job.failed',
      timestamp: new Date().toISOString(),
      data: result,
    };
    const body = JSON.stringify(payload);
    const timestamp = Math.floor(Date.now() / 1000);
    const attempts = job.attemptsMade + 1;
    const last = attempts >= (job.opts.attempts ?? 1);
    let status: number;
    try {
      const response = await this.client.post(data.url, {
        body,
        headers: {
          'content-type': 'application/json',
          'webhook-id': data.webhookId,
          'webhook-timestamp': String(timestamp),
          'webhook-signature': signWebhook(this.secret!, data.webhookId, timestamp, body),
        },
      });
      status = response.statusCode;
    } catch (error) {
      if (isAddressRefused(error)) {
        const lastError = 'The URL resolves to a private, loopback or link-local address';
        await this.update(data.jobId, { state: 'failed', attempts, lastError }, this.options.resultTtlSeconds);
        log.warn({ url: data.url }, 'callback refused: the address is not allowed');
        throw new UnrecoverableError(lastError);
      }
      const lastError = error instanceof RequestError ? `${error.code}: ${error.message}` : (error as Error).message;
      await this.update(data.jobId, { state: last ? 'failed' : 'pending', attempts, lastError }, this.options.resultTtlSeconds);
      log.info({ err: error, last }, 'callback delivery failed');
      throw error;
    }
    if (status >= 200 && status < 300) {
      await this.update(
        data.jobId,
        { state: 'delivered', attempts, lastStatus: status, deliveredAt: new Date().toISOString() },
        this.options.resultTtlSeconds,
      );
      log.debug({ status }, 'callback delivered');
      return;
    }
    await this.update(
      data.jobId,
      { state: last ? 'failed' : 'pending', attempts, lastStatus: status, lastError: `the receiver answered HTTP ${status}` },
      this.options.resultTtlSeconds,
    );
    log.info({ status, last }, 'callback receiver refused the delivery');
    throw new Error(`the receiver answered HTTP ${status}`);
  }

  private async update(jobId: string, change: Partial<CallbackState>, ttlSeconds: number): Promise<void> {
    const current = await this.state(jobId);
    if (!current) return; // expired with its job
    await this.write(jobId, { ...current, ...change }, ttlSeconds);
  }

  private async write(jobId: string, state: CallbackState, ttlSeconds: number): Promise<void> {
    await this.redis.set(this.keys.callback(jobId), JSON.stringify(state), 'EX', ttlSeconds);
  }
}

/** How long an unfinished job's delivery waits before looking again: soon at first, then less often. */
function pollDelay(waitedMs: number): number {
  if (waitedMs < 5_000) return 250;
  if (waitedMs < 60_000) return 1_000;
  return 10_000;
}
