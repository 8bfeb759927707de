import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { JobStore } from '@conveyor/shared/contract/job-store';
import { JobResult, type InferenceJob } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { loadModel, type LoadedModel } from '@conveyor/shared/model/runtime';
import { startRedis, type LocalRedis } from '../../../harness/redis-server.js';
import { digitPng, heldOutDigits } from '../../../test/support/images.js';
import { until } from '../../../test/support/wait.js';
import { JobCounts } from '../src/job-counts.js';
import { createInferenceProcessor, type InferenceBullJob } from '../src/inference.processor.js';
import type { ModelHost } from '../src/model/model-host.js';

/**
 * A worker whose result commit finds Redis at its maxmemory (noeviction) must not fail the job: the
 * system is full, the job is fine. Before, the commit's refusal counted as a failed attempt; three
 * attempts 250 ms apart ran out within a second, and the last one failed the job for good with
 * Redis's own message as its error (the drill: 9 accepted jobs lost that way).
 */
describe('a commit that finds Redis full', function () {
  this.timeout(60_000);
  let dir: string;
  let server: LocalRedis;
  let redis: Redis;
  let model: LoadedModel;

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-commit-full-'));
    server = await startRedis({ dir });
    redis = new Redis(server.url, { maxRetriesPerRequest: null });
    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    model = await loadModel('models/digits');
  });
  after(async () => {
    redis.disconnect();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('waits on its last attempt and commits once there is room: the job completes, its image is deleted then', async () => {
    const keys = redisKeys('t-full');
    const jobs = new JobStore(redis, keys, { resultTtlSeconds: 60, predictionStreamMaxLen: 1000 });
    const { dataset, split } = await heldOutDigits();
    const image = await digitPng(dataset.samples[split.test[0]!]!.pixels);
    const jobId = randomUUID();
    await redis.set(keys.input(jobId), image);

    const lines: Record<string, unknown>[] = [];
    const log = pino(
      { level: 'debug' },
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
          callback();
        },
      }),
    );
    const models = {
      acquire: () => ({ model, ref: { name: 'digits', version: 'test' }, release: () => undefined }),
    } as unknown as ModelHost;
    const processor = createInferenceProcessor({
      jobs,
      model: 'digits',
      queue: 'inference',
      models,
      workerId: 'test-worker',
      limits: { maxPixels: 1e8, maxSide: 20_000, maxAspectRatio: 100 },
      preprocessTimeoutMs: 30_000,
      topK: 3,
      eventEmbeddings: false,
      log,
      counts: new JobCounts(),
      metrics: { queueWait: () => {}, preprocess: () => {}, inference: () => {}, processing: () => {}, outcome: () => {} },
    });
    const data: InferenceJob = {
      kind: 'inference',
      version: 1,
      requestId: 'r-1',
      acceptedAt: Date.now(),
      model: 'digits',
      input: { format: 'png', bytes: image.length, width: 28, height: 28, source: { kind: 'upload' } },
    };
    // The last of three attempts: a failure now would be for good.
    const job = {
      id: jobId,
      data,
      attemptsMade: 2,
      opts: { attempts: 3 },
      processedOn: Date.now(),
    } as unknown as InferenceBullJob;

    await redis.config('SET', 'maxmemory', '1'); // every write that needs memory is refused
    let settledEarly = false;
    const outcome = processor(job).then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    void outcome.then(() => (settledEarly = true));
    // The old code gave up at once (the promise settles): that ends the wait too, and fails below.
    await until('the commit was refused', () =>
      Promise.resolve(lines.some((l) => /Redis is full/.test(String(l.msg))) || settledEarly),
    );
    expect(await redis.exists(keys.input(jobId)), 'the image is kept while the job waits').to.equal(1);
    await redis.config('SET', 'maxmemory', '0');

    const settled = await outcome;
    expect(settled, String((settled as { error?: Error }).error)).to.have.property('value');
    const stored = JobResult.parse(JSON.parse((await redis.get(keys.result(jobId)))!));
    expect(stored.status).to.equal('completed');
    expect(await redis.exists(keys.input(jobId))).to.equal(0);
  });
});
