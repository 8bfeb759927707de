import { DelayedError, Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from '@conveyor/shared/redis';
import type { CallbackState } from '@conveyor/shared/contract/api.contract';
import type { TraceContext } from '@conveyor/shared/contract/common.contract';
import type { JobStore } from '@conveyor/shared/contract/job-store';
import { CallbackJob, QUEUES, ReplyMessage, type JobResult } from '@conveyor/shared/contract/jobs.contract';
import type { Logger } from '@conveyor/shared/logger';
import { ProblemError } from '@conveyor/shared/problem';
import { tracingOff, type Tracer } from '@conveyor/shared/tracing';
import { filteringAgents } from '../http/outbound.js';
import { CallbackDelivery } from './callback-delivery.js';
import { postCallback } from './callback-post.js';
import type { CallbackStore } from './callback-store.js';
import { parseCallbackUrl } from './callback-url.js';
import { secretBytes } from './webhook-signature.js';

/**
 * Result callbacks for asynchronous jobs. A request may name a `Callback-Url`; once its job is
 * finished the result is POSTed there, signed as Standard Webhooks do, retried with exponential
 * backoff, and the delivery state is kept beside the result (`GET /v1/jobs/{id}` shows it).
 *
 * Each callback is a BullMQ job on its own queue, added (delayed) before the inference job, so no
 * finished job can be missed. A delivery waiting for its job costs nothing: it sleeps as a delayed
 * job until the worker's commit of the result notifies this gateway (the reply on its channel),
 * which promotes it at once; a notification that was lost (this gateway restarted, say) is made up
 * by a slow sweep: the delivery wakes every CALLBACK_SWEEP_SECONDS, looks for the result once and
 * sleeps again. Deliveries never touch the result: polling works whatever a receiver does.
 *
 * This is the queue side (schedule, cancel, wake, park, close); one try of the signed POST and the
 * state it leaves is the delivery side (callback-delivery.ts); the records are CallbackStore's, and
 * results are read through JobStore.
 *
 * Isolation: CALLBACK_CONCURRENCY deliveries at once per gateway, of which at most
 * CALLBACK_RECEIVER_CONCURRENCY to one receiver (origin). A delivery for a receiver at its cap is
 * parked (delayed again, no attempt spent, no slot held) and woken when one of that receiver's
 * deliveries ends here, so one slow or dead receiver cannot hold the slots other receivers need. A
 * client (API key or address) may have CALLBACK_MAX_PENDING_PER_CLIENT callbacks pending; the next
 * request naming one is a 429. A receiver's answer is judged by its status alone (callback-post.ts).
 *
 * Outgoing requests go through the filtering agents image fetching uses too (http/outbound.ts): a callback may reach exactly
 * the addresses an image URL may (public unicast, plus URL_ALLOW_CIDRS), checked at every delivery
 * on the address actually connected to (DNS rebinding included); literal addresses are refused at
 * the request already (callback-url.ts). Redirects are not followed.
 */
export interface CallbackOptions {
  readonly secret: string | undefined;
  readonly maxAttempts: number;
  readonly backoffMs: number;
  readonly timeoutMs: number;
  readonly concurrency: number;
  /** Deliveries at once to one origin (within `concurrency`). */
  readonly receiverConcurrency: number;
  /** Callbacks one client may have pending. */
  readonly maxPendingPerClient: number;
  /** How often a delivery whose job has no result looks again if no notification woke it. */
  readonly sweepSeconds: number;
  readonly allowCidrs: readonly string[];
  /** How long a job may wait for a worker (INPUT_TTL_SECONDS): a callback gives up after that. */
  readonly inputTtlSeconds: number;
  readonly resultTtlSeconds: number;
}

export class CallbackDispatcher {
  private readonly queue: Queue<CallbackJob>;
  private worker: Worker<CallbackJob> | undefined;
  private readonly secret: Buffer | undefined;
  /** The delivery side; absent when callbacks are off (no secret). */
  private readonly delivery: CallbackDelivery | undefined;
  /** Jobs with a callback that this gateway scheduled and whose reply it may still receive. */
  private readonly awaiting = new Set<string>();
  /**
   * Jobs whose reply came while their delivery was awake (looking for the result, about to sleep
   * again): it could not be promoted then, so it is as soon as it sleeps.
   */
  private readonly early = new Set<string>();
  /** Deliveries in flight from this gateway, per receiver origin. */
  private readonly running = new Map<string, number>();
  /** Deliveries parked here because their origin was at its cap, oldest first, per origin. */
  private readonly parked = new Map<string, string[]>();

  constructor(
    /** A connection for BullMQ (maxRetriesPerRequest: null); closed by the caller. */
    private readonly connection: Redis,
    private readonly records: CallbackStore,
    private readonly results: Pick<JobStore, 'readResult'>,
    prefix: string,
    private readonly options: CallbackOptions,
    private readonly log: Logger,
    tracer: Tracer = tracingOff().tracer,
  ) {
    this.queue = new Queue<CallbackJob>(QUEUES.callbacks, { connection, prefix });
    this.queue.on('error', (error) => log.warn({ err: error }, 'callback queue error'));
    this.secret = options.secret ? secretBytes(options.secret) : undefined;
    const agents = filteringAgents(options.allowCidrs);
    this.delivery = this.secret
      ? new CallbackDelivery(
          records,
          (url, body, headers) => postCallback(url, body, headers, agents, options.timeoutMs),
          this.secret,
          options.resultTtlSeconds,
          log,
          tracer,
        )
      : undefined;
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
      // Every reply to a waiting request comes here too: with no delivery waiting for one (callbacks
      // off, or none pending), it is not parsed a second time (the result waiter reads it).
      if (this.awaiting.size === 0) return;
      let id: string;
      try {
        id = ReplyMessage.parse(JSON.parse(message)).result.id;
      } catch {
        return; // the result waiter reports malformed replies
      }
      if (!this.awaiting.delete(id)) return;
      this.wake(id);
    });
  }

  /** Makes a sleeping (delayed) delivery runnable now; one already running or gone is left alone. */
  private wake(id: string): void {
    void this.queue
      .getJob(id)
      .then((job) => job?.promote())
      .catch(() => {
        // Not delayed: running now. If it is about to sleep again, it is woken once it does.
        if (this.early.size > 10_000) this.early.clear(); // ids of deliveries that ended elsewhere
        this.early.add(id);
      });
  }

  /** Whether callbacks are on (a CALLBACK_SECRET is configured): the OpenAPI document offers `Callback-Url` only then. */
  get enabled(): boolean {
    return this.secret !== undefined;
  }

  /**
   * The callback URL a request names (every value of its Callback-Url header), checked as image URLs
   * are and its literal address judged now (callback-url.ts); undefined if none.
   */
  parse(values: readonly string[] | undefined): URL | undefined {
    if (!values || values.every((v) => v === '')) return undefined;
    if (!this.secret) {
      throw new ProblemError('invalid-request', 'Callbacks are off on this gateway (no CALLBACK_SECRET is configured)');
    }
    return parseCallbackUrl(values, this.options.allowCidrs);
  }

  /**
   * Counts a callback against its client's share (keys().callbacksPending), or refuses it with a
   * 429. The member carries its own deadline, so a delivery that never settles (a gateway killed
   * mid-way) stops counting when it would have given up anyway.
   */
  async reserve(client: string, jobId: string): Promise<void> {
    const deadline = Date.now() + this.lifetimeMs();
    const admitted = await this.records.reserve(client, jobId, deadline, this.options.maxPendingPerClient);
    if (!admitted) {
      throw new ProblemError(
        'rate-limited',
        `This client has ${this.options.maxPendingPerClient} callbacks pending, the most allowed; retry once some are delivered, or poll without a Callback-Url`,
        { retryAfterSeconds: Math.max(1, Math.ceil(this.options.timeoutMs / 1000)), limit: this.options.maxPendingPerClient },
      );
    }
  }

  /** Before the job is queued: its delivery is waiting for it from now on (`reserve` first). */
  async schedule(jobId: string, url: URL, requestId: string, client: string, trace?: TraceContext): Promise<CallbackState> {
    const state: CallbackState = { url: url.href, state: 'pending', attempts: 0, webhookId: `msg_${jobId}` };
    await this.records.write(jobId, state, this.options.inputTtlSeconds + this.options.resultTtlSeconds);
    const data: CallbackJob = {
      kind: 'callback',
      version: 1,
      jobId,
      requestId,
      url: url.href,
      webhookId: state.webhookId,
      client,
      ...(trace ? { trace } : {}),
    };
    await this.queue.add('deliver', data, {
      jobId,
      // Asleep until the result's notification wakes it; the sweep is for a lost notification.
      delay: this.options.sweepSeconds * 1000,
      attempts: this.options.maxAttempts,
      backoff: { type: 'exponential', delay: this.options.backoffMs },
      removeOnComplete: true,
      removeOnFail: { age: 24 * 3600, count: 1000 },
    });
    this.awaiting.add(jobId);
    return state;
  }

  /** The job could not be queued after all: no delivery, and the client's share back. */
  async cancel(jobId: string, client: string): Promise<void> {
    this.awaiting.delete(jobId);
    await Promise.allSettled([this.queue.remove(jobId), this.records.drop(jobId, client)]);
  }

  state(jobId: string): Promise<CallbackState | undefined> {
    return this.records.read(jobId);
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
    const result = await this.results.readResult(data.jobId);
    if (!result) return this.sleep(job, data, token);
    this.early.delete(data.jobId);
    const origin = new URL(data.url).origin;
    const inFlight = this.running.get(origin) ?? 0;
    if (inFlight >= Math.min(this.options.receiverConcurrency, this.options.concurrency)) {
      // The receiver has its share of this gateway's slots: wait parked (no attempt spent, no slot
      // held) until one of its deliveries ends here, or for the longest a try can last.
      const queue = this.parked.get(origin) ?? [];
      if (!queue.includes(data.jobId)) queue.push(data.jobId);
      this.parked.set(origin, queue);
      await job.moveToDelayed(Date.now() + this.options.timeoutMs + 1000, token);
      throw new DelayedError();
    }
    this.unpark(origin, data.jobId);
    this.running.set(origin, inFlight + 1);
    try {
      await this.attempt(job, data, result);
    } finally {
      const left = (this.running.get(origin) ?? 1) - 1;
      if (left > 0) this.running.set(origin, left);
      else this.running.delete(origin);
      const next = this.parked.get(origin)?.shift();
      if (next !== undefined) this.wake(next);
      if (this.parked.get(origin)?.length === 0) this.parked.delete(origin);
    }
  }

  /** The job has no result yet (woken by the sweep): sleep again, or give up once it never can have one. */
  private async sleep(job: Job<CallbackJob>, data: CallbackJob, token: string | undefined): Promise<never> {
    const waited = Date.now() - job.timestamp;
    if (waited > (this.options.inputTtlSeconds + this.options.resultTtlSeconds) * 1000) {
      await this.delivery?.abandon(data, 'the job never finished');
      throw new UnrecoverableError('the job never finished');
    }
    // Not finished yet: sleep again without spending an attempt. The notification wakes it earlier
    // if it reaches this gateway.
    this.awaiting.add(data.jobId);
    await job.moveToDelayed(Date.now() + sweepDelay(waited, this.options.sweepSeconds), token);
    // The result's reply came while this looked (after the read, before the sleep): wake it now.
    if (this.early.delete(data.jobId)) this.wake(data.jobId);
    throw new DelayedError();
  }

  /** One try, by the delivery side. */
  private attempt(job: Job<CallbackJob>, data: CallbackJob, result: JobResult): Promise<void> {
    if (!this.delivery) throw new UnrecoverableError('callbacks are off on this gateway (no CALLBACK_SECRET)');
    const attempt = job.attemptsMade + 1;
    return this.delivery.attempt({ data, attempt, last: attempt >= (job.opts.attempts ?? 1) }, result);
  }

  private unpark(origin: string, jobId: string): void {
    const queue = this.parked.get(origin);
    if (!queue) return;
    const at = queue.indexOf(jobId);
    if (at >= 0) queue.splice(at, 1);
    if (queue.length === 0) this.parked.delete(origin);
  }

  /** The longest a callback can stay pending: its job's wait and result life, then every try and backoff. */
  private lifetimeMs(): number {
    const { inputTtlSeconds, resultTtlSeconds, maxAttempts, backoffMs, timeoutMs, sweepSeconds } = this.options;
    const retries = backoffMs * (2 ** Math.min(maxAttempts, 30) - 1) + maxAttempts * timeoutMs;
    // The job's wait and result life, the longest sleep past them, then every try and backoff.
    return (inputTtlSeconds + resultTtlSeconds + 10 * sweepSeconds) * 1000 + retries;
  }
}

/**
 * How long a delivery whose job has no result sleeps before its next look, if no notification wakes
 * it first: the sweep interval, growing with the wait so far up to ten intervals. Each look costs
 * some thirty Redis commands (BullMQ's moves included), so a long wait is looked at rarely; a lost
 * notification delays a delivery by at most about its wait so far, and never more than ten intervals.
 */
export function sweepDelay(waitedMs: number, sweepSeconds: number): number {
  const interval = sweepSeconds * 1000;
  return Math.min(Math.max(interval, waitedMs), 10 * interval);
}
