import type { CompletedResult } from '@conveyor/shared/contract/jobs.contract';

/** A minimal completed result for job `id`, as a worker stores it (for tests of the result's readers). */
export function completedResult(id: string): CompletedResult {
  return {
    id,
    requestId: 'r',
    acceptedAt: new Date().toISOString(),
    finishedAt: new Date().toISOString(),
    attempt: 1,
    worker: 'w',
    status: 'completed',
    model: { name: 'm', version: '1' },
    prediction: { label: '7', index: 7, confidence: 0.9, top: [{ label: '7', confidence: 0.9 }] },
    timings: { queueMs: 1, preprocessMs: 1, inferenceMs: 1, totalMs: 3 },
    input: { format: 'png', bytes: 10, width: 28, height: 28, brightness: 0.1, contrast: 0.2, inkRatio: 0.1, inverted: false },
  };
}
