import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Prometheus metrics of the gateway, served on GET /metrics. */
export class HttpMetrics {
  readonly registry = new Registry();
  private readonly duration = new Histogram({
    name: 'conveyor_http_request_duration_seconds',
    help: 'HTTP request duration by route and status',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly outcomes = new Counter({
    name: 'conveyor_predict_outcomes_total',
    help: 'POST /v1/predict outcomes: completed (200), failed (4xx/5xx from the job), accepted (202), rejected (before queueing)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  constructor(queueDepth: () => Promise<number>) {
    collectDefaultMetrics({ register: this.registry, prefix: 'conveyor_gateway_' });
    new Gauge({
      name: 'conveyor_queue_waiting_jobs',
      help: 'Jobs waiting in the inference queue',
      registers: [this.registry],
      async collect() {
        this.set(await queueDepth());
      },
    });
  }

  observe(method: string, route: string, status: number, seconds: number): void {
    this.duration.observe({ method, route, status: String(status) }, seconds);
  }
}
