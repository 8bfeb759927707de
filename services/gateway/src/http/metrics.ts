import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

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

export class HttpMetrics {
  readonly registry = new Registry();
  private readonly duration = new Histogram({
    name: 'conveyor_http_request_duration_seconds',
    help: 'HTTP request duration by route and status; predict requests also by mode (sync: the caller waits for the result; async: 202 at once)',
    labelNames: ['method', 'route', 'status', 'mode'] as const,
    buckets: [...HTTP_BUCKETS],
    registers: [this.registry],
  });
  readonly outcomes = new Counter({
    name: 'conveyor_predict_outcomes_total',
    help: 'POST /v1/predict outcomes: completed (200), failed (4xx/5xx from the job), accepted (202), rejected (before queueing)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  /**
   * `liveWorkers` counts the workers whose heartbeat is current, as /ready does: the "no live
   * worker" alert reads it from here, where it is true whether or not Prometheus scrapes the workers.
   */
  constructor(queueDepth: () => Promise<number>, liveWorkers: () => Promise<number>) {
    collectDefaultMetrics({ register: this.registry, prefix: 'conveyor_gateway_' });
    new Gauge({
      name: 'conveyor_queue_waiting_jobs',
      help: 'Jobs waiting in the inference queue',
      registers: [this.registry],
      async collect() {
        this.set(await queueDepth());
      },
    });
    new Gauge({
      name: 'conveyor_workers_live',
      help: 'Inference workers with a current heartbeat and a loaded model (what /ready lists)',
      registers: [this.registry],
      async collect() {
        this.set(await liveWorkers());
      },
    });
  }

  observe(method: string, route: string, status: number, seconds: number, mode?: PredictMode): void {
    // No mode label at all outside predict: an empty label would only add a series per route.
    const labels = { method, route, status: String(status) };
    this.duration.observe(mode ? { ...labels, mode } : labels, seconds);
  }
}
