import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { preprocess } from '@conveyor/shared/model/preprocess';
import { classify, type LoadedModel } from '@conveyor/shared/model/runtime';

/**
 * Prediction events as the workers publish them, made offline with the real preprocessing and
 * model (fast: no HTTP, no queue), for tests and demos of the monitor.
 */
export async function predictionEvents(model: LoadedModel, images: readonly Uint8Array[], side = 28): Promise<PredictionEvent[]> {
  const events: PredictionEvent[] = [];
  for (let start = 0; start < images.length; start += 64) {
    const batch = images.slice(start, start + 64);
    const prepared = await Promise.all(
      batch.map((data) =>
        preprocess({ kind: 'raw', data, width: side, height: side, channels: 1 }, model.manifest, { maxPixels: side * side }),
      ),
    );
    const outputs = await model.run(prepared.map((p) => p.tensor));
    outputs.forEach((out, i) => {
      const at = new Date().toISOString();
      events.push({
        kind: 'prediction',
        version: 1,
        jobId: randomUUID(),
        requestId: `gen-${start + i}`,
        at,
        model: { name: model.manifest.name, version: model.manifest.version },
        prediction: classify(out.probabilities, model.manifest.labels),
        timings: { queueMs: 1, preprocessMs: 1, inferenceMs: 0.1, totalMs: 2 },
        input: { format: 'png', bytes: 400, ...prepared[i]!.descriptors },
        ...(out.embedding ? { embedding: Array.from(out.embedding, (v) => Math.round(v * 1e4) / 1e4) } : {}),
      });
    });
  }
  return events;
}

/** A digit with Gaussian noise of `sigma` gray levels (seeded), like a bad scan. */
export function noisy(pixels: Uint8Array, sigma: number, seed: number): Uint8Array {
  let s = seed >>> 0;
  const uniform = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s + 0.5) / 4294967296;
  };
  return Uint8Array.from(pixels, (v) => {
    const n = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
    return Math.max(0, Math.min(255, Math.round(v + sigma * n)));
  });
}

export async function publish(redis: Redis, stream: string, events: readonly PredictionEvent[]): Promise<void> {
  for (let i = 0; i < events.length; i += 200) {
    const pipeline = redis.pipeline();
    for (const e of events.slice(i, i + 200)) pipeline.xadd(stream, '*', 'event', JSON.stringify(e));
    await pipeline.exec();
  }
}
