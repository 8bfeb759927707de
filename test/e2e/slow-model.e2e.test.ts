import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { digitPng, heldOutDigits } from '../support/images.js';
import { pollUntilDone, predict } from '../support/http.js';
import { writeSlowModel } from '../support/models.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * A model that takes seconds per image (issue 19): onnxruntime's run() blocks the thread it runs
 * on, so on the event loop it stopped BullMQ's lock renewals, and with a lock shorter than one
 * inference the other worker's stalled-job check took the job over and ran it again. With the
 * session on its own thread (INFERENCE_THREAD, the default) the renewals go on. The lock here (1.5 s,
 * renewed every 0.75 s) is shorter than one inference (250 layers, ~2.5 s or more on this machine);
 * `INFERENCE_THREAD=false` makes the same test fail (every job taken over).
 */
describe('a model slower than the job lock', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('slowlock');
  const env = {
    LOCK_DURATION_MS: '1500',
    STALLED_INTERVAL_MS: '1000',
    WORKER_CONCURRENCY: '1',
    ...(process.env.SLOW_MODEL_INFERENCE_THREAD ? { INFERENCE_THREAD: process.env.SLOW_MODEL_INFERENCE_THREAD } : {}),
  };
  let tmp: string;
  let gateway: Gateway;
  let a: Awaited<ReturnType<typeof startWorker>>;
  let b: Awaited<ReturnType<typeof startWorker>>;
  let digits: Buffer[];

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-slowlock-'));
    const slow = writeSlowModel(path.join(tmp, 'slow'), 250);
    const { dataset, split } = await heldOutDigits();
    digits = await Promise.all(split.test.slice(0, 3).map((i) => digitPng(dataset.samples[i]!.pixels)));
    [gateway, a, b] = await Promise.all([
      startGateway(prefix),
      startWorker(prefix, { ...env, MODEL_DIR: slow }, 'worker-a'),
      startWorker(prefix, { ...env, MODEL_DIR: slow }, 'worker-b'),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, a, b);
  });
  after(async () => {
    await stopAll(gateway, a, b);
    rmSync(tmp, { recursive: true, force: true });
  });

  it('keeps its lock: every job completes on its first attempt and none is taken over', async () => {
    for (const png of digits) {
      // One at a time, so the other worker is idle and its stalled-job check runs every second.
      const accepted = await predict(gateway.url, png, { Prefer: 'respond-async' });
      const done = await pollUntilDone(gateway.url, accepted.body.id as string, 60_000);
      expect(done.body.status).to.equal('completed');
      expect(done.body.attempt, 'attempt').to.equal(1);
    }
    const takenOver = [...a.records, ...b.records].filter((r) => r.msg === 'took over a stalled job');
    expect(takenOver, 'jobs taken over as stalled').to.have.length(0);
  });
});
