import { Counter, Histogram, type Registry } from 'prom-client';
import { STAGE_BUCKETS } from '../metrics/worker-metrics.js';

/**
 * What shadow lanes count, on the worker's registry. `model` is a served model's name (bounded by
 * MODELS); the shadow's version is not a label here: the shadow stream and the monitor name it.
 */
export const SHADOW_OUTCOMES = ['ran', 'dropped_busy', 'over_cpu_share', 'failed'] as const;
export type ShadowOutcome = (typeof SHADOW_OUTCOMES)[number];

export interface ShadowCounts {
  outcome(outcome: ShadowOutcome): void;
  /** One shadow run's preprocessing (when its spec differs from production's) and inference. */
  seconds(seconds: number): void;
}

export class ShadowMetrics {
  private readonly runs: Counter<'model' | 'outcome'>;
  private readonly duration: Histogram<'model'>;

  constructor(registry: Registry) {
    this.runs = new Counter({
      name: 'conveyor_shadow_runs_total',
      help: 'Jobs offered to a shadow model after production answered, by outcome: ran (its pair published); dropped_busy (the lane was running one and its backlog was full); over_cpu_share (SHADOW_CPU_SHARE used up); failed (preprocessing, inference or publishing failed; production was not affected)',
      labelNames: ['model', 'outcome'] as const,
      registers: [registry],
    });
    this.duration = new Histogram({
      name: 'conveyor_shadow_inference_seconds',
      help: 'One shadow run: preprocessing again when the shadow’s spec differs from production’s, and its onnxruntime run',
      labelNames: ['model'] as const,
      buckets: [...STAGE_BUCKETS],
      registers: [registry],
    });
  }

  forModel(model: string): ShadowCounts {
    for (const outcome of SHADOW_OUTCOMES) this.runs.inc({ model, outcome }, 0);
    this.duration.zero({ model });
    return {
      outcome: (outcome) => this.runs.inc({ model, outcome }),
      seconds: (seconds) => this.duration.observe({ model }, seconds),
    };
  }
}
