import type { ParameterizedContext } from 'koa';
import type { Logger } from '@conveyor/shared/logger';

export interface GatewayState {
  /** From a well-formed X-Request-Id header, or generated; echoed back and carried into the job. */
  requestId: string;
  /** A logger bound to the request id (and the job id once there is one). */
  log: Logger;
  jobId?: string;
  /** A raw image body (Content-Type image/* or application/octet-stream), read within the size limit. */
  rawUpload?: Buffer;
}

export type GatewayContext = ParameterizedContext<GatewayState>;
