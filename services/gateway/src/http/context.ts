import type { ParameterizedContext } from 'koa';
import type { ModelName } from '@conveyor/shared/contract/common.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { Span } from '@conveyor/shared/tracing';
import type { PredictMode } from './metrics.js';
import type { Priority } from './priority.js';

/*
 * The request state is the bottom floor of the gateway: it declares the small things a request
 * holds, and the modules that make them (admission, fair queuing, the upload guard, the API keys)
 * implement these shapes. So nothing here imports from the floors above.
 */

/** Something held for the request until it is given back; giving back twice is harmless. */
export interface Held {
  release(): void;
}

/** A place in a model's queue reserved at admission (jobs/admission.ts), held until the job is queued. */
export interface QueuePlace extends Held {
  /** The id the request's job is to have: the place is reserved under it. */
  readonly jobId: string;
  /** The job is queued with an image of `bytes` (it now counts as waiting, its bytes as queued). */
  queued(bytes: number): void;
}

/** A job's place among its tenant's, as fair queuing gave it (jobs/fair-queue.ts). */
export interface FairPlace {
  /** The BullMQ priority the job must be added with. */
  readonly priority: number;
  /** Charges the tenant for the job's size, once its image is known. */
  charge(pixels: number): void;
}

/** Whose share of the queue and of worker time a request draws on. */
export interface Tenant {
  /** `key:<api key id>`, or `ip:<address>` when keys are off. */
  readonly id: string;
  /** 1 for an address; the key's weight otherwise. */
  readonly weight: number;
  /** The highest priority its requests may have: the key's, or ADDRESS_MAX_PRIORITY for an address. */
  readonly maxPriority: Priority;
}

/** The API key a request was made with (access/api-keys.ts), as far as the request needs it. */
export interface KeyIdentity {
  readonly id: string;
  readonly name: string;
  readonly scopes: readonly string[];
  /** Its weight in fair queuing (1 unless set at creation). */
  readonly weight: number;
  /** The highest `Prefer: priority=` its requests are served at (`normal` unless set at creation). */
  readonly maxPriority: Priority;
}

export interface GatewayState {
  /** From a well-formed X-Request-Id header, or generated; echoed back and carried into the job. */
  requestId: string;
  /**
   * A logger bound to the request id (and the API key and the job id once there are): the request's
   * own child of the service logger, made once per request; add ids with `bindLog`, not `child`.
   */
  log: Logger;
  /** The request's SERVER span (a span that records nothing when tracing is off or the path untraced). */
  span: Span;
  jobId?: string;
  /** A raw image body (Content-Type image/* or application/octet-stream), read within the size limit. */
  rawUpload?: Buffer;
  /** The file of a multipart form of the common shape (intake/simple-form.ts), read within the size limit. */
  formUpload?: { readonly bytes: Buffer; readonly filename: string };
  /** The place in the queue reserved at admission, given back once the job is queued. */
  reservation?: QueuePlace;
  /** The share of the gateway's upload budget this request holds while its bytes are in memory. */
  upload?: Held;
  /** On predict requests, from the Prefer header: whether the caller waits for the result (for the metrics). */
  predictMode?: PredictMode;
  /** On predict requests, the model they are for, once it is known to exist (the metrics' `model` label). */
  model?: ModelName;
  /** The API key the request was made with, when keys are required. */
  apiKey?: KeyIdentity;
  /** Whose share of the queue and of worker time the request draws on: its API key, or its address. */
  tenant?: Tenant;
  /** On predict requests, the Idempotency-Key the caller sent (http/idempotency-key.ts), unquoted. */
  idempotencyKey?: string;
  /** On predict requests, the priority the job is queued at (asked for, capped by the tenant's maximum). */
  priority?: Priority;
  /** On predict requests, the job's place as fair queuing gave it (its priority). */
  fairPlace?: FairPlace;
  /** On predict requests with `Prefer: deadline=`: the processing deadline (epoch ms) and the seconds it was given as. */
  deadline?: { readonly at: number; readonly seconds: number };
}

export type GatewayContext = ParameterizedContext<GatewayState>;

/**
 * Adds `bindings` to every later line of the request's logger (and so to its access-log line).
 * The request's logger is its own (a child made by `requestContext`), so its bindings are extended in
 * place: pino's `setBindings` appends the serialized ids to the ones it has, where a grandchild
 * logger per id would cost an object and a longer prototype chain per request for the same line.
 */
export function bindLog(state: Pick<GatewayState, 'log'>, bindings: Record<string, string>): void {
  state.log.setBindings(bindings);
}
