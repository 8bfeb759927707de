import { z } from 'zod';
import {
  checkRedisConfig,
  env,
  imageLimitsShape,
  logConfigShape,
  modelsConfigShape,
  redisConfigShape,
  resultConfigShape,
  tracingConfigShape,
  resultCacheConfigShape,
} from '@conveyor/shared/config';
import { PRIORITIES } from './http/priority.js';

export const GatewayConfig = z
  .object({
    ...redisConfigShape,
    ...logConfigShape,
    ...resultConfigShape,
    ...tracingConfigShape,
    ...resultCacheConfigShape,
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
    MAX_INFLIGHT_UPLOAD_BYTES_PER_CLIENT: env.int(
      16 * 1024 * 1024,
      1024,
      16 * 1024 * 1024 * 1024,
      'Share of MAX_INFLIGHT_UPLOAD_BYTES one client (API key, or client address when keys are off) may hold at once, in bytes; beyond → 429 + Retry-After. At least MAX_UPLOAD_BYTES + 16 KiB, so one upload of the largest size always fits',
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
    AUTH_FAILURE_LIMIT: env.int(
      30,
      1,
      1_000_000,
      'Requests with an invalid API key one client address may make per AUTH_FAILURE_WINDOW_SECONDS, shared by every gateway; beyond, its requests carrying a key are answered 429 + Retry-After before any key is checked',
    ),
    AUTH_FAILURE_WINDOW_SECONDS: env.int(60, 1, 86_400, 'Window of AUTH_FAILURE_LIMIT, in seconds'),
    MAX_CONNECTIONS: env.int(
      1024,
      1,
      1_000_000,
      'Open connections one gateway holds; at the limit an idle connection (no request in progress) of the client holding the most is closed to make room, and a newcomer is closed at once only when none is idle',
    ),
    MAX_CONNECTIONS_PER_CLIENT: z.coerce
      .number()
      .int()
      .min(1)
      .max(1_000_000)
      .optional()
      .describe(
        'Open connections one client address may hold on one gateway; beyond, its new connections are closed at once. Default 64, or MAX_CONNECTIONS with TRUST_PROXY (every connection then comes from the proxy)',
      ),
    HEADERS_TIMEOUT_MS: env.int(
      5000,
      1000,
      120_000,
      'Time a client has to send the complete request head (from the connection, or from the first byte of a later request); beyond, 408 and the connection is closed. Checked every second',
    ),
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
    DEADLINE_ADMISSION: env.bool(
      true,
      "Refuse at once (503 deadline-unmeetable + Retry-After) a request whose `Prefer: deadline=` the model's queue cannot meet, estimated from the jobs waiting, the live workers' concurrency and their measured service time (see docs/deadlines.md); false: queue it (a worker drops it unrun once its deadline has passed)",
    ),
    DEADLINE_ADMISSION_SHARE: env.number(
      0.8,
      0.1,
      1,
      'The share of a deadline deadline admission plans a job to finish within (the rest absorbs the estimate being off, and the time before admission): at 1, a queue held at its limit finishes admitted jobs at the very edge of their deadlines (see docs/deadlines.md)',
    ),
    FAIR_QUEUING: env.bool(
      true,
      "Share each model's workers between tenants (the API key, or the client address when keys are off) in proportion to their weights (a key's WEIGHT); false: first come, first served (see docs/fairness.md)",
    ),
    FAIR_TENANT_SHARE: env.number(
      0.5,
      0.001,
      1,
      "Share (0–1] of MAX_QUEUE_DEPTH one tenant may hold in a model's queue at once; beyond → 429 + Retry-After (with FAIR_QUEUING)",
    ),
    FAIR_PIXELS_PER_COST: env.int(
      1_000_000,
      1,
      1_000_000_000,
      "Decoded pixels of an image that cost its tenant one more job's worth of worker time in fair queuing (a job costs at least one)",
    ),
    ADDRESS_MAX_PRIORITY: z
      .enum(PRIORITIES)
      .default('normal')
      .describe(
        'Highest `Prefer: priority=` (low, normal, high) a request is served at when API keys are off (every client address is a tenant then); higher asks are capped to it. `normal` keeps anonymous clients from jumping the queue; an API key carries its own maximum (`make api-key MAX_PRIORITY=high`; see docs/priorities.md)',
      ),
    ...modelsConfigShape,
    NO_WORKER_POLICY: z
      .enum(['queue', 'refuse'])
      .default('queue')
      .describe(
        'Asynchronous requests for a known model that no live worker serves: `queue` (202; served once a worker starts, within INPUT_TTL_SECONDS) or `refuse` (503 no-worker + Retry-After, as synchronous ones always are)',
      ),
    MODEL_RETIRE_AFTER_SECONDS: env.int(
      86_400,
      0,
      365 * 86_400,
      'Seconds after its last live worker was seen that a model stops being listed (`/v1/models`, `/ready`) and predicting with it is 404; one named in MODELS or DEFAULT_MODEL is always listed; 0 = never retire. A worker serving it again brings it back',
    ),
    IDEMPOTENCY_TTL_SECONDS: env.int(
      86_400,
      60,
      30 * 86_400,
      "How long a predict request's Idempotency-Key is remembered once its job exists, in seconds: a retry with the same key and request gets that job, never a second (within the client's share, IDEMPOTENCY_KEYS_PER_CLIENT)",
    ),
    IDEMPOTENCY_KEYS_PER_CLIENT: env.int(
      100_000,
      1,
      100_000_000,
      "Idempotency-Keys remembered per client (API key, or address when keys are off): beyond, the client's oldest key is forgotten before its TTL, so one client's keys hold at most ~35 MB of Redis (~350 bytes each) and cannot crowd out anyone else's (docs/idempotency.md)",
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
    CALLBACK_RECEIVER_CONCURRENCY: env.int(
      2,
      1,
      256,
      'Callback deliveries one gateway makes at once to one receiver (scheme, host and port); the others wait parked, holding no slot',
    ),
    CALLBACK_MAX_PENDING_PER_CLIENT: env.int(
      1000,
      1,
      10_000_000,
      'Callbacks one client (API key, or address when keys are off) may have pending, across gateways; beyond → 429',
    ),
    CALLBACK_SWEEP_SECONDS: env.int(
      120,
      1,
      3600,
      "First look for the result of a callback's unfinished job in case its notification was lost (it normally wakes the delivery), in seconds; later looks grow with the wait, up to ten times this",
    ),
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
    TRUST_PROXY_HOPS: env.int(
      1,
      1,
      32,
      'With TRUST_PROXY: how many proxies in front of the gateway append to X-Forwarded-For. The client address is the entry the farthest of them wrote (that many from the end); entries before it are written by the client and ignored',
    ),
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
  .refine((c) => c.MAX_INFLIGHT_UPLOAD_BYTES_PER_CLIENT >= c.MAX_UPLOAD_BYTES + 16 * 1024, {
    error:
      'MAX_INFLIGHT_UPLOAD_BYTES_PER_CLIENT must be at least MAX_UPLOAD_BYTES + 16384 (one upload of the largest size with its multipart framing)',
    path: ['MAX_INFLIGHT_UPLOAD_BYTES_PER_CLIENT'],
  })
  .refine((c) => c.SYNC_WAIT_DEFAULT_SECONDS <= c.SYNC_WAIT_MAX_SECONDS, {
    error: 'SYNC_WAIT_DEFAULT_SECONDS must not exceed SYNC_WAIT_MAX_SECONDS',
    path: ['SYNC_WAIT_DEFAULT_SECONDS'],
  })
  .superRefine(checkRedisConfig);
export type GatewayConfig = z.infer<typeof GatewayConfig>;
