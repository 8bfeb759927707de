import {
  collectDefaultMetrics,
  Counter,
  Gauge,
  Histogram,
  Registry,
  type LabelValues,
  type RegistryContentType,
} from 'prom-client';

/** Whether a predict caller waits for the result (the latency SLO is about those) or polls for it. */
export type PredictMode = 'sync' | 'async';

/**
 * Prometheus metrics of the gateway, served on GET /metrics.
 *
 * The request histogram is what the SLOs are computed from (ops/prometheus/rules.yml): its buckets
 * include 0.2 and 0.5 exactly, the latency objective's thresholds, so "slower than 200 ms" is a
 * bucket boundary and not an interpolation, with 0.1–0.25 dense enough to read a p95 near them.
 */
export const HTTP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5, 10, 30] as const;

type DurationLabel = 'method' | 'route' | 'status' | 'mode' | 'model';

export class HttpMetrics {
  readonly registry = new Registry<RegistryContentType>();
  private readonly duration: Histogram<DurationLabel>;
  private readonly exemplars: boolean;
  readonly outcomes = new Counter({
    name: 'conveyor_predict_outcomes_total',
    help: 'POST /v1/predict outcomes: completed (200), failed (4xx/5xx from the job), accepted (202), rejected (before queueing), cancelled (a synchronous caller hung up and its job was cancelled unrun)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  /** Predict requests by what the result cache did (docs/result-cache.md); none with RESULT_CACHE off. */
  readonly resultCache = new Counter({
    name: 'conveyor_result_cache_requests_total',
    help: "Predict requests with RESULT_CACHE on, by model and by what the cache did: hit (a stored answer, no job), collapsed (waited for an identical request's job), miss (its own job), request (Cache-Control: no-cache/no-store), bypass (a Callback-Url, an Idempotency-Key, or two versions live)",
    labelNames: ['model', 'status'] as const,
    registers: [this.registry],
  });

  /** Connections refused or closed by the connection guard, by why (http/connection-guard.ts). */
  readonly connectionsRefused = new Counter({
    name: 'conveyor_http_connections_refused_total',
    help: 'Connections closed at once because their address held its share (client), because every slot was busy (full), or idle ones closed to make room for a newcomer (evicted)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  /**
   * `liveWorkers` counts the workers whose heartbeat is current, as /ready does: the "no live
   * worker" alerts read it from here, where it is true whether or not Prometheus scrapes the workers.
   * Both per-model gauges list every known model (configured or ever announced), zero included.
   */
  constructor(sources: {
    queueDepths: () => Promise<readonly { model: string; waiting: number }[]>;
    liveWorkers: () => Promise<number>;
    modelWorkers: () => Promise<readonly { model: string; workers: number }[]>;
    /** Bytes of request bodies reserved from the upload budget now. */
    uploadBytes?: () => number;
    /** Connections open now. */
    connections?: () => number;
    /**
     * With tracing on: the request histogram carries the trace id of a recent request per bucket
     * (an exemplar), which prom-client writes only in the OpenMetrics format; /metrics is then served
     * as OpenMetrics (Prometheus reads both; it keeps exemplars with --enable-feature=exemplar-storage).
     */
    exemplars?: boolean;
  }) {
    this.exemplars = sources.exemplars ?? false;
    if (this.exemplars) this.registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    this.duration = new Histogram({
      name: 'conveyor_http_request_duration_seconds',
      help: 'HTTP request duration by route and status; predict requests also by mode (sync: the caller waits for the result; async: 202 at once) and by model (when the model is known)',
      labelNames: ['method', 'route', 'status', 'mode', 'model'] as const,
      buckets: [...HTTP_BUCKETS],
      registers: [this.registry],
      enableExemplars: this.exemplars,
    });
    // The event-loop lag histogram samples on a timer: prom-client's default 10 ms wakes the process
    // 100 times a second whatever the traffic (~3.5 ms of CPU per second, measured on the monitor).
    // 100 ms still shows a stalled loop; nothing here reads a finer lag.
    collectDefaultMetrics({ register: this.registry, prefix: 'conveyor_gateway_', eventLoopMonitoringPrecision: 100 });
    new Gauge({
      name: 'conveyor_queue_waiting_jobs',
      help: "Jobs waiting in each model's inference queue",
      labelNames: ['model'] as const,
      registers: [this.registry],
      async collect() {
        for (const { model, waiting } of await sources.queueDepths()) this.set({ model }, waiting);
      },
    });
    new Gauge({
      name: 'conveyor_workers_live',
      help: 'Inference workers with a current heartbeat and a warm model (what /ready lists)',
      registers: [this.registry],
      async collect() {
        this.set(await sources.liveWorkers());
      },
    });
    const { uploadBytes, connections } = sources;
    if (uploadBytes) {
      new Gauge({
        name: 'conveyor_upload_bytes_in_flight',
        help: 'Bytes of request bodies this gateway has reserved from MAX_INFLIGHT_UPLOAD_BYTES now',
        registers: [this.registry],
        collect() {
          this.set(uploadBytes());
        },
      });
    }
    if (connections) {
      new Gauge({
        name: 'conveyor_http_connections_open',
        help: 'HTTP connections open on this gateway (bounded by MAX_CONNECTIONS)',
        registers: [this.registry],
        collect() {
          this.set(connections());
        },
      });
    }
    new Gauge({
      name: 'conveyor_model_workers_live',
      help: 'Live inference workers serving each model (warm), from their heartbeats',
      labelNames: ['model'] as const,
      registers: [this.registry],
      async collect() {
        for (const { model, workers } of await sources.modelWorkers()) this.set({ model }, workers);
      },
    });
  }

  /** `model`: only a known model's name (bounded by the deployment's models), never one a request merely named. */
  observe(
    method: string,
    route: string,
    status: number,
    seconds: number,
    mode?: PredictMode,
    model?: string,
    traceId?: string,
  ): void {
    // No mode or model label at all outside predict: an empty label would only add a series per route.
    const labels = { method, route, status: String(status), ...(mode ? { mode } : {}), ...(model ? { model } : {}) };
    if (!this.exemplars) return this.duration.observe(labels, seconds);
    // prom-client types exemplar labels as the metric's own; OpenMetrics names the trace's `trace_id`.
    const exemplarLabels = (traceId ? { trace_id: traceId } : {}) as LabelValues<DurationLabel>;
    this.duration.observe({ labels, value: seconds, exemplarLabels });
  }
}
