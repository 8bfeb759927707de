import type { ApiKeyIdentity } from '../access/api-keys.js';
import type { Reservation } from '../jobs/admission.js';
import type { UploadReservation } from '../intake/upload-guard.js';
import type { PredictMode } from './metrics.js';
import type { ParameterizedContext } from 'koa';
import type { ModelName } from '@conveyor/shared/contract/common.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { InferenceQueue } from '../jobs/model-queues.js';
import type { FairPlace, Tenant } from '../jobs/fair-queue.js';

export interface GatewayState {
  /** From a well-formed X-Request-Id header, or generated; echoed back and carried into the job. */
  requestId: string;
  /** A logger bound to the request id (and the job id once there is one). */
  log: Logger;
  jobId?: string;
  /** A raw image body (Content-Type image/* or application/octet-stream), read within the size limit. */
  rawUpload?: Buffer;
  /** The place in the queue reserved at admission, given back once the job is queued. */
  reservation?: Reservation;
  /** The share of the gateway's upload budget this request holds while its bytes are in memory. */
  upload?: UploadReservation;
  /** On predict requests, from the Prefer header: whether the caller waits for the result (for the metrics). */
  predictMode?: PredictMode;
  /** On predict requests, the model they are for, once it is known to exist (the metrics' `model` label). */
  model?: ModelName;
  /** That model's queue, where the job goes. */
  queue?: InferenceQueue;
  /** The API key the request was made with, when keys are required. */
  apiKey?: ApiKeyIdentity;
  /** Whose share of the queue and of worker time the request draws on: its API key, or its address. */
  tenant?: Tenant;
  /** On predict requests, the job's place as fair queuing gave it (its priority). */
  fairPlace?: FairPlace;
}

export type GatewayContext = ParameterizedContext<GatewayState>;
