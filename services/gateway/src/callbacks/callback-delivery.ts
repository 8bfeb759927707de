import { UnrecoverableError } from 'bullmq';
import type { CallbackPayload, CallbackState } from '@conveyor/shared/contract/api.contract';
import type { CallbackJob, JobResult } from '@conveyor/shared/contract/jobs.contract';
import type { Logger } from '@conveyor/shared/logger';
import {
  carrierOf,
  contextFrom,
  failSpan,
  logIds,
  NO_SPAN,
  SpanKind,
  tracingOff,
  type Span,
  type Tracer,
} from '@conveyor/shared/tracing';
import { isAddressRefused } from '../http/outbound.js';
import type { CallbackRecords } from './callback-store.js';
import type { postCallback } from './callback-post.js';
import { signWebhook } from './webhook-signature.js';

/** One try of a delivery, as the queue side hands it over. */
export interface DeliveryTry {
  readonly data: CallbackJob;
  /** This try's number, from 1. */
  readonly attempt: number;
  /** No try follows this one if it fails. */
  readonly last: boolean;
}

/** Sends one POST; resolves with the receiver's status (callback-post.ts, bound to the filtering agents). */
export type Post = (url: URL, body: string, headers: Record<string, string>) => ReturnType<typeof postCallback>;

/**
 * The delivery side of callbacks: one try of POSTing a finished job's result, signed as Standard
 * Webhooks do, and the callback's state recorded from the answer. A receiver's answer is judged by
 * its status alone: 2xx delivers; anything else (or no answer) is a failed try, retried by the queue
 * side until the last; an address the filtering agents refuse fails for good at once. Once a
 * delivery settles (delivered, or failed for good) it stops counting against its client.
 */
export class CallbackDelivery {
  constructor(
    private readonly records: CallbackRecords,
    private readonly post: Post,
    private readonly secret: Buffer,
    /** How long the state is kept: as long as the result it belongs to. */
    private readonly resultTtlSeconds: number,
    private readonly log: Logger,
    /** Each try is a CLIENT span in the trace of the request that asked for the callback. */
    private readonly tracer: Tracer = tracingOff().tracer,
  ) {}

  /** Resolves once delivered; throws to be retried, or an UnrecoverableError when no try can succeed. */
  async attempt(run: DeliveryTry, result: JobResult): Promise<void> {
    const { data, attempt: attempts } = run;
    const span = data.trace ? this.trySpan(data, attempts) : NO_SPAN;
    const log = this.log.child({ jobId: data.jobId, requestId: data.requestId, attempt: attempts, ...logIds(span) });
    try {
      await this.tryOnce(run, result, span, log);
    } catch (error) {
      failSpan(span, error);
      throw error;
    } finally {
      span.end();
    }
  }

  private trySpan(data: CallbackJob, attempt: number): Span {
    const url = new URL(data.url);
    return this.tracer.startSpan(
      'callback POST',
      {
        kind: SpanKind.CLIENT,
        attributes: {
          'http.request.method': 'POST',
          'server.address': url.hostname,
          'conveyor.job.id': data.jobId,
          'conveyor.callback.attempt': attempt,
        },
      },
      contextFrom(data.trace),
    );
  }

  private async tryOnce(run: DeliveryTry, result: JobResult, span: Span, log: Logger): Promise<void> {
    const { data, attempt: attempts, last } = run;
    let status: number;
    try {
      status = await this.send(data, result, span);
      span.setAttribute('http.response.status_code', status);
    } catch (error) {
      if (isAddressRefused(error)) {
        const lastError = 'The URL resolves to a private, loopback or link-local address';
        await this.settle(data, { state: 'failed', attempts, lastError });
        log.warn({ url: data.url }, 'callback refused: the address is not allowed');
        throw new UnrecoverableError(lastError);
      }
      const code = (error as NodeJS.ErrnoException).code;
      const lastError = code ? `${code}: ${(error as Error).message}` : (error as Error).message;
      await this.record(data, { state: last ? 'failed' : 'pending', attempts, lastError }, last);
      log.info({ err: error, last }, 'callback delivery failed');
      throw error;
    }
    if (status >= 200 && status < 300) {
      await this.settle(data, { state: 'delivered', attempts, lastStatus: status, deliveredAt: new Date().toISOString() });
      log.debug({ status }, 'callback delivered');
      return;
    }
    const lastError = `the receiver answered HTTP ${status}`;
    await this.record(data, { state: last ? 'failed' : 'pending', attempts, lastStatus: status, lastError }, last);
    log.info({ status, last }, 'callback receiver refused the delivery');
    throw new Error(lastError);
  }

  /** The delivery gives up without a try (its job never finished). */
  async abandon(data: CallbackJob, lastError: string): Promise<void> {
    await this.settle(data, { state: 'failed', lastError });
  }

  private send(data: CallbackJob, result: JobResult, span: Span = NO_SPAN): Promise<number> {
    // The receiver may continue the trace: the W3C headers name this try's span.
    const trace = carrierOf(span);
    const payload: CallbackPayload = {
      type: `job.${result.status}`,
      timestamp: new Date().toISOString(),
      data: result,
    };
    const body = JSON.stringify(payload);
    const timestamp = Math.floor(Date.now() / 1000);
    return this.post(new URL(data.url), body, {
      'content-type': 'application/json',
      'user-agent': 'Conveyor callbacks',
      'webhook-id': data.webhookId,
      'webhook-timestamp': String(timestamp),
      'webhook-signature': signWebhook(this.secret, data.webhookId, timestamp, body),
      ...trace,
    });
  }

  private async record(data: CallbackJob, change: Partial<CallbackState>, settled: boolean): Promise<void> {
    if (settled) return this.settle(data, change);
    await this.records.update(data.jobId, change, this.resultTtlSeconds);
  }

  private async settle(data: CallbackJob, change: Partial<CallbackState>): Promise<void> {
    await this.records.update(data.jobId, change, this.resultTtlSeconds);
    if (data.client) await this.records.release(data.client, data.jobId);
  }
}
