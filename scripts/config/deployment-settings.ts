/**
 * Settings read by `make run`, by the compose files and by the `conveyor` CLI rather than by a
 * service's zod config. They are listed here once; `npm run docs:config` renders them into
 * docs/configuration.md and writes `.env.example` from the compose ones, and test/docs.test.ts checks
 * both files and that every `${VAR}` of the compose files and every variable `make run` and the CLI
 * read is in this list (and nothing else).
 */
export type Where =
  'make run' | 'compose' | 'compose (public profile)' | 'compose (orchestration)' | 'compose (observability)' | 'CLI';

export interface Setting {
  readonly key: string;
  readonly where: readonly Where[];
  /** The default as the reader sees it ('—' for none). */
  readonly default: string;
  readonly description: string;
  /** What `.env.example` holds for a compose setting: its default, commented out, unless given. */
  readonly example?: string;
  /** Required by the public profile: `.env.example` shows it uncommented, with a placeholder. */
  readonly requiredPublic?: boolean;
}

export const SETTINGS: readonly Setting[] = [
  // make run (scripts/run.ts); the services' own variables (MODELS, LOG_LEVEL, …) pass through to them.
  { key: 'WORKERS', where: ['make run'], default: '1', description: 'Inference worker processes `make run` starts' },
  {
    key: 'PORT',
    where: ['make run'],
    default: '8080',
    description: "The gateway's port (the gateway's own setting; `make run` prints the example URL with it)",
  },
  {
    key: 'MONITOR_PORT',
    where: ['make run', 'compose'],
    default: '9100',
    description: "The drift monitor's port: `make run` passes it to the monitor; compose publishes it on the host's loopback",
  },
  {
    key: 'REDIS_URL',
    where: ['make run', 'compose', 'compose (public profile)'],
    default: '`make run`: its own redis-server; compose: `redis://:conveyor-local-only@redis:6379`',
    description:
      '`make run`: use this Redis instead of starting one. Compose: the Redis every service uses; the public profile requires it, with the password',
    example: 'redis://:change-me-to-a-long-secret@redis:6379',
    requiredPublic: true,
  },
  {
    key: 'REDIS_PORT',
    where: ['make run'],
    default: '6379',
    description: 'Port of the redis-server `make run` starts on 127.0.0.1 (data in ./data/redis)',
  },
  {
    key: 'REDIS_MAXMEMORY',
    where: ['make run', 'compose'],
    default: '1gb',
    description:
      '`maxmemory` of the Redis `make run` or compose starts (policy noeviction: a full Redis refuses writes, the gateway answers 503)',
  },
  {
    key: 'METRICS_PORT',
    where: ['make run'],
    default: '9101',
    description: "First port of the workers' Prometheus endpoints under `make run` (worker n gets METRICS_PORT + n − 1)",
  },
  {
    key: 'MODELS_DIR',
    where: ['make run'],
    default: 'models',
    description: 'Folder holding one sub-folder per model (`model.onnx`, `manifest.json`)',
  },
  {
    key: 'MODEL_DIR',
    where: ['make run'],
    default: '—',
    description: "The default model's folder, instead of `MODELS_DIR/<DEFAULT_MODEL>`",
  },
  {
    key: 'MLFLOW_TRACKING_URI',
    where: ['make run'],
    default: '—',
    description: 'Set: the workers follow the registry (models:/NAME@production) instead of the folders',
  },
  {
    key: 'MONITOR_URL',
    where: ['make run'],
    default: '`http://127.0.0.1:$MONITOR_PORT`',
    description: 'Where the gateway asks for the drift state it shows on the page',
  },
  {
    key: 'CALLBACK_SECRET',
    where: ['make run', 'compose'],
    default: '`make run`: one kept in data/callback-secret; compose: none',
    description: 'Signs result callbacks (`make callback-secret` makes one); compose refuses `Callback-Url` without it',
  },
  // compose (docker-compose.yml)
  {
    key: 'DIGITS_WORKERS',
    where: ['compose'],
    default: '4',
    description: 'Replicas of `inference-worker` (the digits model); each model is scaled by its own count',
  },
  {
    key: 'MODERATION_WORKERS',
    where: ['compose'],
    default: '1',
    description: 'Replicas of `inference-worker-moderation` (the moderation model)',
  },
  { key: 'GATEWAY_PORT', where: ['compose'], default: '8080', description: 'Host port of the gateway' },
  {
    key: 'MLFLOW_PORT',
    where: ['compose'],
    default: '5000',
    description: "Host port of MLflow (on the host's loopback only)",
  },
  { key: 'LOG_LEVEL', where: ['compose'], default: 'info', description: 'Log level of every Node service' },
  {
    key: 'WORKER_CONCURRENCY',
    where: ['compose'],
    default: '4',
    description: 'Jobs one digits worker runs at once',
  },
  {
    key: 'MODERATION_WORKER_CONCURRENCY',
    where: ['compose'],
    default: '2',
    description: 'Jobs one moderation worker runs at once',
  },
  { key: 'MAX_UPLOAD_BYTES', where: ['compose'], default: '3145728', description: "The gateway's upload limit, in bytes" },
  {
    key: 'SYNC_WAIT_DEFAULT_SECONDS',
    where: ['compose'],
    default: '10',
    description: 'How long a synchronous request waits before answering 202',
  },
  { key: 'MAX_QUEUE_DEPTH', where: ['compose'], default: '10000', description: 'Waiting jobs per model before 503' },
  {
    key: 'NO_WORKER_POLICY',
    where: ['compose'],
    default: 'queue',
    description: 'Asynchronous requests for a model without a live worker: `queue` or `refuse`',
  },
  {
    key: 'DASHBOARD_USER',
    where: ['compose'],
    default: '—',
    description: 'With DASHBOARD_PASSWORD (≥ 12 characters): the queue dashboard at /admin/queues',
  },
  { key: 'DASHBOARD_PASSWORD', where: ['compose'], default: '—', description: "The queue dashboard's password" },
  {
    key: 'URL_ALLOW_CIDRS',
    where: ['compose'],
    default: '—',
    description: 'Private addresses image URLs may resolve to (comma-separated CIDRs)',
  },
  { key: 'CORS_ORIGINS', where: ['compose'], default: '—', description: 'Browser origins allowed to call the API' },
  {
    key: 'API_KEYS_REQUIRED',
    where: ['compose'],
    default: 'false',
    description: 'Require API keys on /v1 routes (the public profile sets true)',
  },
  {
    key: 'RATE_LIMIT_REQUESTS',
    where: ['compose', 'compose (public profile)'],
    default: '0 (public profile: 600)',
    description: 'Requests per key (or client address) per window; 0: no limit',
  },
  {
    key: 'RATE_LIMIT_WINDOW_SECONDS',
    where: ['compose', 'compose (public profile)'],
    default: '60',
    description: "The rate limit's window, in seconds",
  },
  { key: 'TRUST_PROXY', where: ['compose'], default: 'false', description: 'Trust X-Forwarded-* (behind a reverse proxy)' },
  {
    key: 'REDIS_PASSWORD',
    where: ['compose', 'compose (public profile)'],
    default: 'conveyor-local-only',
    description: "The compose Redis's password; the public profile requires one of its own (and REDIS_URL with it)",
    example: 'change-me-to-a-long-secret',
    requiredPublic: true,
  },
  {
    key: 'WORKER_MLFLOW_TRACKING_URI',
    where: ['compose'],
    default: '—',
    description: "`http://mlflow:5000`: the digits workers and the monitor follow the registry's `production` model",
  },
  {
    key: 'MLFLOW_ADMIN_PASSWORD',
    where: ['compose', 'compose (public profile)', 'compose (orchestration)'],
    default: 'conveyor-local-only-admin',
    description: "MLflow's `admin` account (the trainer's); required by the public profile",
    example: 'change-me-admin-password',
    requiredPublic: true,
  },
  {
    key: 'MLFLOW_READER_PASSWORD',
    where: ['compose', 'compose (public profile)'],
    default: 'conveyor-local-only-reader',
    description: "MLflow's READ-only `reader` account (the workers' and the monitor's); required by the public profile",
    example: 'change-me-reader-password',
    requiredPublic: true,
  },
  {
    key: 'MLFLOW_ARTIFACTS_DESTINATION',
    where: ['compose'],
    default: 's3://conveyor-mlflow/artifacts',
    description: "Where MLflow stores artifacts (the compose `s3` service's bucket by default)",
  },
  {
    key: 'MLFLOW_S3_ENDPOINT_URL',
    where: ['compose'],
    default: 'http://s3:9000',
    description: 'S3 endpoint for the artifacts; empty for AWS',
  },
  {
    key: 'AWS_ACCESS_KEY_ID',
    where: ['compose'],
    default: '(a placeholder moto accepts)',
    description: "MLflow's S3 key; empty: boto3's chain",
  },
  {
    key: 'AWS_SECRET_ACCESS_KEY',
    where: ['compose'],
    default: '(a placeholder moto accepts)',
    description: "MLflow's S3 secret; empty: boto3's chain",
  },
  {
    key: 'AWS_DEFAULT_REGION',
    where: ['compose'],
    default: 'us-east-1',
    description: "MLflow's S3 region, and the digits workers' for the replay store",
  },
  {
    key: 'REPLAY_SAMPLE_RATE',
    where: ['compose'],
    default: '— (off)',
    description: "The digits workers' live replay recording rate (docs/replay.md); needs REPLAY_STORE",
  },
  {
    key: 'REPLAY_STORE',
    where: ['compose'],
    default: '—',
    description: 'Where the digits workers record: `s3://conveyor-mlflow/replay` (the `s3` service) or a bucket of yours',
  },
  {
    key: 'REPLAY_S3_ENDPOINT_URL',
    where: ['compose'],
    default: '— (AWS)',
    description: "The replay store's S3 endpoint: `http://s3:9000` for the `s3` service",
  },
  {
    key: 'REPLAY_AWS_ACCESS_KEY_ID',
    where: ['compose'],
    default: '—',
    description: "The digits workers' S3 key for the replay store (their AWS_ACCESS_KEY_ID); empty: AWS's default chain",
  },
  {
    key: 'REPLAY_AWS_SECRET_ACCESS_KEY',
    where: ['compose'],
    default: '—',
    description: 'Its secret (AWS_SECRET_ACCESS_KEY)',
  },
  {
    key: 'SHADOW_VERSION',
    where: ['compose'],
    default: '— (off)',
    description: 'Shadow mode for the digits workers (docs/shadow.md), e.g. `digits=7` with the registry',
  },
  {
    key: 'SHADOW_SAMPLE_RATE',
    where: ['compose'],
    default: '0.1',
    description: "Share of the digits workers' jobs their shadow runs on",
  },
  {
    key: 'ALERT_WEBHOOK_URL',
    where: ['compose'],
    default: '—',
    description: 'The monitor POSTs every alert here',
  },
  { key: 'ALERT_WEBHOOK_SECRET', where: ['compose'], default: '—', description: 'Signs the alert webhook calls' },
  {
    key: 'MONITOR_TOKEN',
    where: ['compose'],
    default: '—',
    description: "Bearer token for the monitor's writes (POST /reports); unset: refused",
  },
  {
    key: 'MODEL_SIGNING_PUBLIC_KEY',
    where: ['compose (public profile)'],
    default: '—',
    description:
      "Host path of `make signing-key`'s public key, mounted into the workers and the monitor; required by the public profile",
    example: './data/keys/model-signing.pub.pem',
    requiredPublic: true,
  },
  {
    key: 'PREFECT_PORT',
    where: ['compose (orchestration)'],
    default: '4200',
    description: "Host port of the Prefect UI (docker-compose.orchestration.yml; the host's loopback only)",
  },
  // docker-compose.observability.yml (docs/tracing.md)
  {
    key: 'OTEL_TRACES_SAMPLER_ARG',
    where: ['compose (observability)'],
    default: '0.1',
    description:
      "Share of requests the gateways trace (`parentbased_traceidratio`; a caller's sampled `traceparent` is always followed)",
  },
  {
    key: 'JAEGER_PORT',
    where: ['compose (observability)'],
    default: '16686',
    description: "Host port of Jaeger's query API (loopback only)",
  },
  {
    key: 'PROMETHEUS_PORT',
    where: ['compose (observability)'],
    default: '9090',
    description: 'Host port of Prometheus (loopback only)',
  },
  {
    key: 'GRAFANA_PORT',
    where: ['compose (observability)'],
    default: '3000',
    description: 'Host port of Grafana (loopback only)',
  },
  {
    key: 'GRAFANA_ADMIN_PASSWORD',
    where: ['compose (observability)'],
    default: 'conveyor-local-only',
    description: "Grafana's `admin` password: set your own for anything but a trial on your own machine",
  },
  // the conveyor CLI (shared/src/client/cli.ts)
  {
    key: 'CONVEYOR_URL',
    where: ['CLI'],
    default: 'http://localhost:8080',
    description: 'The gateway the `conveyor` CLI talks to',
  },
  {
    key: 'CONVEYOR_API_KEY',
    where: ['CLI'],
    default: '—',
    description: 'API key the CLI sends (Authorization: Bearer)',
  },
];
