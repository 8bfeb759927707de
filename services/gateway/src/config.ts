import { z } from 'zod';
import {
  checkRedisConfig,
  env,
  imageLimitsShape,
  logConfigShape,
  modelsConfigShape,
  redisConfigShape,
  resultConfigShape,
} from '@conveyor/shared/config';

export const GatewayConfig = z
  .object({
    ...redisConfigShape,
    ...logConfigShape,
    ...resultConfigShape,
    PORT: env.int(8080, 0, 65535, 'HTTP port of the gateway'),
    HOST: env.string('0.0.0.0', 'Interface the gateway listens on'),
    MAX_UPLOAD_BYTES: env.int(
      3 * 1024 * 1024,
      1024,
      100 * 1024 * 1024,
      'Largest accepted image, in bytes (uploads and URL downloads); larger → 413',
    ),
    ...imageLimitsShape,
    MAX_QUEUED_BYTES: env.int(
      512 * 1024 * 1024,
      1024,
      1024 * 1024 * 1024 * 1024,
      'Bytes of images waiting in Redis for a worker, across all gateways; beyond → 503 + Retry-After',
    ),
    ADMISSION_MEMORY_FRACTION: env.number(
      0.9,
      0.1,
      1,
      "Fraction of Redis's maxmemory (from INFO memory, read at most every 500 ms) above which new jobs are refused with 503 + Retry-After, keeping the rest for accepted jobs to finish; 1 = only Redis's own refusal; no effect when maxmemory is 0",
    ),
    RECONCILE_INTERVAL_MS: env.int(
      10_000,
      1000,
      3_600_000,
      'How often (ms) a gateway gives back the queued bytes of jobs that left the queue without a result (removed from the dashboard, failed without a commit) and deletes their images',
    ),
    MAX_INFLIGHT_UPLOAD_BYTES: env.int(
      64 * 1024 * 1024,
      1024,
      16 * 1024 * 1024 * 1024,
      'Bytes of request bodies one gateway holds at once (declared lengths reserved before reading); beyond → 503 + Retry-After',
    ),
    MIN_UPLOAD_BYTES_PER_SECOND: env.int(
      16 * 1024,
      0,
      1024 * 1024 * 1024,
      'A body arriving slower than this (after UPLOAD_GRACE_MS) is answered 408 and its connection closed; 0 = off',
    ),
    UPLOAD_GRACE_MS: env.int(3000, 100, 600_000, 'Time a body may take before MIN_UPLOAD_BYTES_PER_SECOND applies'),
    API_KEYS_REQUIRED: env.bool(
      false,
      "Require an API key (Authorization: Bearer <key>) with the route's scope on /v1 routes; create keys with `make api-key`",
    ),
    RATE_LIMIT_REQUESTS: env.int(
      0,
      0,
      100_000_000,
      'Requests per RATE_LIMIT_WINDOW_SECONDS per API key (per client IP when keys are off), shared by every gateway; 0 = no limit',
    ),
    RATE_LIMIT_WINDOW_SECONDS: env.int(60, 1, 86_400, 'Window of RATE_LIMIT_REQUESTS'),
    MAX_CONNECTIONS: env.int(1024, 1, 1_000_000, 'Open connections one gateway accepts; beyond, new ones are closed at once'),
    KEEP_ALIVE_TIMEOUT_MS: env.int(
      65_000,
      1000,
      600_000,
      'How long an idle keep-alive connection stays open; keep it above the idle timeout of the load balancer or client pool in front (60 s on AWS ALB, 4 s in Node fetch) so they, not the gateway, close idle connections',
    ),
    SYNC_WAIT_DEFAULT_SECONDS: env.number(10, 0, 300, 'How long a synchronous request waits for its result before answering 202'),
    SYNC_WAIT_MAX_SECONDS: env.number(30, 0, 300, 'Cap on `Prefer: wait=<seconds>`'),
    MAX_QUEUE_DEPTH: env.int(
      10_000,
      1,
      10_000_000,
      "Waiting jobs of one model beyond which new requests for that model get 503 + Retry-After instead of queueing (each model's queue is counted on its own)",
    ),
    ...modelsConfigShape,
    NO_WORKER_POLICY: z
      .enum(['queue', 'refuse'])
      .default('queue')
      .describe(
        'Asynchronous requests for a known model that no live worker serves: `queue` (202; served once a worker starts, within INPUT_TTL_SECONDS) or `refuse` (503 no-worker + Retry-After, as synchronous ones always are)',
      ),
    URL_CONNECT_TIMEOUT_MS: env.int(2000, 50, 60_000, 'Connect timeout when fetching an image URL'),
    URL_TOTAL_TIMEOUT_MS: env.int(5000, 100, 120_000, 'Total time allowed to fetch an image URL, redirects included'),
    URL_MAX_REDIRECTS: env.int(3, 0, 10, 'Redirects followed when fetching an image URL (each hop is checked)'),
    URL_ALLOW_CIDRS: env.list(
      '',
      'Comma-separated IPs/CIDRs that image URLs may resolve to even though they are private, loopback or link-local (default: none)',
    ),
    CALLBACK_SECRET: z
      .string()
      .regex(/^whsec_[A-Za-z0-9+/]{32,}={0,2}$/, 'whsec_ followed by at least 24 random bytes in base64 (`make callback-secret`)')
      .optional()
      .describe(
        'Secret signing callback deliveries (Standard Webhooks: whsec_<base64>); unset: requests with a Callback-Url are refused',
      ),
    CALLBACK_MAX_ATTEMPTS: env.int(
      6,
      1,
      50,
      'Deliveries of one callback tried before it is marked failed (the result can still be polled)',
    ),
    CALLBACK_BACKOFF_MS: env.int(
      1000,
      10,
      3_600_000,
      'First retry delay of a failed callback delivery, doubled for each further attempt',
    ),
    CALLBACK_TIMEOUT_MS: env.int(5000, 100, 60_000, 'Time a callback receiver has to answer one delivery'),
    CALLBACK_CONCURRENCY: env.int(8, 1, 256, 'Callback deliveries one gateway makes at once'),
    SSE_MAX_CONNECTIONS: env.int(
      256,
      1,
      100_000,
      'Open /v1/jobs/{id}/events streams one gateway holds; beyond → 503 + Retry-After',
    ),
    SSE_MAX_PER_CLIENT: env.int(
      8,
      1,
      10_000,
      'Open event streams per API key (per client IP when keys are off) on one gateway; beyond → 429',
    ),
    SSE_MAX_SECONDS: env.int(
      300,
      1,
      86_400,
      'An event stream is closed after this long, finished or not (the client may reconnect)',
    ),
    MONITOR_URL: z
      .url()
      .optional()
      .describe('The drift monitor (e.g. http://127.0.0.1:9100), whose state per model GET /v1/drift and the page at / show'),
    CORS_ORIGINS: env.list(
      '',
      'Comma-separated origins (e.g. https://app.example.org) whose pages may call the API from a browser; * for any; empty: none (the page at / is same-origin)',
    ),
    TRUST_PROXY: env.bool(false, 'Trust X-Forwarded-* headers (behind a reverse proxy)'),
    SHUTDOWN_BUDGET_MS: env.int(10_000, 100, 300_000, 'On SIGTERM, time allowed for in-flight requests before the process exits'),
    DASHBOARD_USER: env.optionalString(
      'User for the queue dashboard at /admin/queues; the dashboard is off unless user and password are set',
    ),
    DASHBOARD_PASSWORD: z
      .string()
      .min(12, 'at least 12 characters')
      .optional()
      .describe('Password for the queue dashboard (at least 12 characters)'),
  })
  .refine((c) => (c.DASHBOARD_USER === undefined) === (c.DASHBOARD_PASSWORD === undefined), {
    error: 'set both DASHBOARD_USER and DASHBOARD_PASSWORD, or neither',
    path: ['DASHBOARD_PASSWORD'],
  })
  .refine((c) => c.SYNC_WAIT_DEFAULT_SECONDS <= c.SYNC_WAIT_MAX_SECONDS, {
    error: 'SYNC_WAIT_DEFAULT_SECONDS must not exceed SYNC_WAIT_MAX_SECONDS',
    path: ['SYNC_WAIT_DEFAULT_SECONDS'],
  })
  .superRefine(checkRedisConfig);
export type GatewayConfig = z.infer<typeof GatewayConfig>;
