import { randomUUID } from 'node:crypto';
import type { CallbackState } from '@conveyor/shared/contract/api.contract';
import type { ModelName } from '@conveyor/shared/contract/common.contract';
import { carrierOf, childOf, failSpan, NO_SPAN, SpanKind, tracingOff, type Span, type Tracer } from '@conveyor/shared/tracing';
import type { CachedAnswer } from '@conveyor/shared/contract/cache.contract';
import type { ResultCacheStore } from '@conveyor/shared/contract/result-cache-store';
import type { CallbackDispatcher } from '../callbacks/callback-dispatcher.js';
import type { FairPlace, QueuePlace, Tenant } from '../http/context.js';
import type { Priority } from '../http/priority.js';
import type { Admission } from './admission.js';
import type { FairQueue } from './fair-queue.js';
import type { DeadlineLimit } from './deadline-admission.js';
import type { JobSubmitter, Submission } from './job-submitter.js';
import type { ModelQueues } from './model-queues.js';
import type { CachePlan } from './result-cache.js';
import type { ResultWaiter, Ticket } from './result-waiter.js';

/** What JobIntake works with (narrowed to what it calls, so a test can hand it fakes). */
export interface JobIntakeParts {
  readonly queues: Pick<ModelQueues, 'get'>;
  /** `admitPlaced` (when given) reserves the place and runs fair queuing's placement in one call. */
  readonly admission: Pick<Admission, 'admit'> & Partial<Pick<Admission, 'admitPlaced'>>;
  /**
   * A job's BullMQ priority: fair queuing between tenants within each request priority's band
   * (FairQueue), or the bands alone, first come, first served within each (PriorityBands, with
   * FAIR_QUEUING=false). Absent (in tests): no priority, BullMQ's plain first come, first served.
   */
  readonly fair?: (Pick<FairQueue, 'place'> & Partial<Pick<FairQueue, 'step'>>) | undefined;
  readonly submitter: Pick<JobSubmitter, 'submit'>;
  readonly waiter: Pick<ResultWaiter, 'register' | 'gatewayId'>;
  readonly callbacks: Pick<CallbackDispatcher, 'reserve' | 'schedule' | 'cancel'>;
  /** Spans of admission and of queueing (absent: none). */
  readonly tracer?: Tracer | undefined;
  /** The shared result cache (absent: RESULT_CACHE off), and how long an in-flight record lives at most. */
  readonly cache?:
    | { readonly store: Pick<ResultCacheStore, 'lookup' | 'lookupOrJoin' | 'leave' | 'release'>; readonly inflightTtlMs: number }
    | undefined;
}

/** A model's queue place for a request, taken before its body is read. */
export interface AdmittedPlace {
  readonly place: QueuePlace;
  /** Its BullMQ priority (its band, and its place among tenants with fair queuing on). */
  readonly fair?: FairPlace | undefined;
}

/** Everything a job is made of, once the request's image passed the checks. */
export interface NewJob extends Pick<
  Submission,
  'model' | 'jobId' | 'requestId' | 'acceptedAt' | 'input' | 'bytes' | 'facts' | 'owner' | 'deadline' | 'cache'
> {
  /** The place taken at admission; given back once the job is queued (or could not be). */
  readonly place?: QueuePlace | undefined;
  readonly fair?: FairPlace | undefined;
  /** Whose share of pending callbacks a callback counts against (clientOf). */
  readonly client: string;
  /** Where to POST the result (Callback-Url), if anywhere. */
  readonly callbackUrl?: URL | undefined;
  /** Whether the caller waits for the result. */
  readonly waits: boolean;
  /** The request's span: the job's enqueue span is its child, and the job carries that span's trace. */
  readonly span?: Span | undefined;
}

export interface CreatedJob {
  readonly jobId: string;
  /** The reply to wait for, when the caller waits. */
  readonly ticket?: Ticket | undefined;
  /** The callback's first state, when the request named one. */
  readonly callback?: CallbackState | undefined;
}

/** What a request got from the result cache, or the job made for it (JobIntake.obtain). */
export type Obtained =
  /** A stored answer: no job is made. */
  | { readonly kind: 'hit'; readonly answer: CachedAnswer }
  /**
   * An identical request of the same client has job `jobId` queued or running: `ticket` waits for it.
   * `leave` says the caller hung up (the job then no longer counts it among those who want it).
   */
  | {
      readonly kind: 'follow';
      readonly jobId: string;
      readonly ticket: Ticket;
      leave(): Promise<void>;
      /** The job turned out lost (BullMQ failed it without a result): its record is dropped, so the next request runs anew. */
      drop(): Promise<void>;
    }
  /**
   * The request's own job. With `lead`, identical requests may follow it: `lead.release()` is asked
   * before a hung-up caller's job is cancelled, and answers how many still wait for it (none: the
   * record is gone, and the job may be cancelled).
   */
  | { readonly kind: 'created'; readonly job: CreatedJob; readonly lead?: { release(): Promise<number> } | undefined };

/**
 * Where a job comes to exist. Creating one is three parties agreeing: the reply ticket a waiting
 * caller listens on, the callback delivery that waits for the job, and the job in its model's queue
 * (JobSubmitter: its image, owner and BullMQ job). Either all three exist, or none does: if queueing
 * fails, the ticket is cancelled and the callback unscheduled (its client's share given back), and
 * the request is answered with the failure. The place admission reserved is given back either way.
 */
export class JobIntake {
  private readonly tracer: Tracer;

  constructor(private readonly parts: JobIntakeParts) {
    this.tracer = parts.tracer ?? tracingOff().tracer;
  }

  /**
   * A place on `model`'s queue for a job of up to `bytes` (within `deadline`'s depth, when it has
   * one), and its BullMQ priority for `tenant` at `priority`.
   */
  async admit(
    model: ModelName,
    tenant: Tenant,
    bytes: number,
    priority: Priority = 'normal',
    deadline?: DeadlineLimit,
    span: Span = NO_SPAN,
  ): Promise<AdmittedPlace> {
    const queue = this.parts.queues.get(model);
    const step = span.isRecording()
      ? this.tracer.startSpan(
          'admission',
          { attributes: { 'conveyor.model': model, 'conveyor.priority': priority } },
          childOf(span),
        )
      : NO_SPAN;
    const { admission, fair: fairQueue } = this.parts;
    const jobId = randomUUID();
    let place: QueuePlace;
    try {
      // Fair queuing's placement in admission's own call to Redis, when both can: one round trip.
      if (fairQueue?.step && admission.admitPlaced) {
        return await admission.admitPlaced(queue, jobId, bytes, deadline, fairQueue.step(queue, tenant, jobId, priority));
      }
      place = await admission.admit(queue, jobId, bytes, deadline);
    } catch (error) {
      failSpan(step, error);
      throw error;
    } finally {
      step.end();
    }
    if (!this.parts.fair) return { place };
    // After the reservation, which keeps the tenant's new place counted until its job is queued.
    const fair = await this.parts.fair.place(queue, tenant, place.jobId, priority).catch((error: unknown) => {
      place.release();
      throw error;
    });
    return { place, fair };
  }

  /**
   * A reply ticket for a job that already exists (a retry with its Idempotency-Key): it waits beside
   * any other waiter of the job. No reply is published for it when the job was made elsewhere or
   * without a waiter; the waiter's sweep reads the stored result instead.
   */
  follow(jobId: string): Ticket {
    return this.parts.waiter.register(jobId);
  }

  /**
   * The request's answer from the result cache, or the job of an identical request to wait for, or
   * its own job (create), as `plan` allows (jobs/result-cache.ts). A hit or a follower makes no job:
   * the queue place taken at admission is given back. A leader whose job cannot be made drops its
   * in-flight record, so nobody goes on following a job that will never exist.
   */
  async obtain(job: NewJob, plan: CachePlan): Promise<Obtained> {
    const cache = this.parts.cache;
    const withFacts: NewJob = plan.facts ? { ...job, cache: plan.facts } : job;
    if (!cache || !plan.entry) return { kind: 'created', job: await this.create(withFacts) };
    const { entry, inflight } = plan;
    const model = job.model;
    const found = inflight
      ? await cache.store.lookupOrJoin(model, entry, inflight, job.jobId, cache.inflightTtlMs)
      : await cache.store.lookup(model, entry);
    // The request's span says how the cache answered (a hit or a follower makes no enqueue span).
    job.span?.setAttribute('conveyor.cache', found.kind);
    switch (found.kind) {
      case 'hit':
        job.place?.release();
        return found;
      case 'follow': {
        job.place?.release();
        const { jobId } = found;
        return {
          kind: 'follow',
          jobId,
          ticket: this.follow(jobId),
          leave: () => cache.store.leave(model, inflight!, jobId),
          drop: async () => {
            await cache.store.release(model, inflight!, jobId, true);
          },
        };
      }
      case 'miss':
        return { kind: 'created', job: await this.create(withFacts) };
      case 'lead': {
        let created: CreatedJob;
        try {
          created = await this.create({ ...job, cache: { ...plan.facts!, inflight } });
        } catch (error) {
          await cache.store.release(model, inflight!, job.jobId, true).catch(() => 0);
          throw error;
        }
        return { kind: 'created', job: created, lead: { release: () => cache.store.release(model, inflight!, job.jobId) } };
      }
    }
  }

  async create(job: NewJob): Promise<CreatedJob> {
    const { jobId, client, callbackUrl } = job;
    const queue = this.parts.queues.get(job.model);
    // OpenTelemetry's messaging conventions: a PRODUCER span per message sent; the worker's span is its child.
    const enqueue =
      job.span?.isRecording() === true
        ? this.tracer.startSpan(
            `send ${queue.name}`,
            {
              kind: SpanKind.PRODUCER,
              attributes: {
                'messaging.system': 'bullmq',
                'messaging.operation.type': 'send',
                'messaging.destination.name': queue.name,
                'messaging.message.id': jobId,
                'conveyor.job.id': jobId,
                'conveyor.model': job.model,
                'conveyor.input.bytes': job.bytes.length,
              },
            },
            childOf(job.span),
          )
        : NO_SPAN;
    const trace = carrierOf(enqueue);
    // Registered before the job exists, so the reply cannot arrive before anyone listens.
    const ticket = job.waits ? this.parts.waiter.register(jobId) : undefined;
    let callback: CallbackState | undefined;
    let reserved = false;
    try {
      if (callbackUrl) {
        await this.parts.callbacks.reserve(client, jobId);
        reserved = true;
        // Scheduled first: the delivery waits for the job, so it cannot miss its end.
        callback = await this.parts.callbacks.schedule(jobId, callbackUrl, job.requestId, client, trace);
      }
      await this.parts.submitter.submit({
        queue,
        model: job.model,
        jobId,
        requestId: job.requestId,
        acceptedAt: job.acceptedAt,
        input: job.input,
        bytes: job.bytes,
        facts: job.facts,
        // A callback is promoted on the reply too, so its delivery follows the result at once.
        replyTo: ticket || callbackUrl ? this.parts.waiter.gatewayId : undefined,
        owner: job.owner,
        priority: job.fair?.priority,
        deadline: job.deadline,
        trace,
        cache: job.cache,
      });
      // A large image costs its tenant more of the workers' time: its next jobs go later.
      job.fair?.charge(job.facts.width * job.facts.height);
      // Queued: it counts as waiting now, and its image as queued bytes.
      job.place?.queued(job.bytes.length);
    } catch (error) {
      failSpan(enqueue, error);
      ticket?.cancel();
      if (reserved) await this.parts.callbacks.cancel(jobId, client);
      throw error;
    } finally {
      // The place reserved at admission is given back (what `queued` kept stays counted).
      job.place?.release();
      enqueue.end();
    }
    return { jobId, ticket, callback };
  }
}
