import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { digitPng, heldOutDigits, solidImage } from '../support/images.js';
import { pollUntilDone, pool, predict, request } from '../support/http.js';
import { writeRgbModel, writeSlowModel } from '../support/models.js';
import { randomPrefix, testRedis } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/** Worker processes: sharing a queue, dying mid-job, draining on SIGTERM, serving other models. */
describe('inference workers', function () {
  this.timeout(120_000);
  let tmp: string;
  let digits: Buffer[];

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-workers-'));
    const { dataset, split } = await heldOutDigits();
    digits = await Promise.all(split.test.slice(0, 60).map((i) => digitPng(dataset.samples[i]!.pixels)));
  });

  after(() => rmSync(tmp, { recursive: true, force: true }));

  describe('two worker processes on one queue', () => {
    const prefix = randomPrefix('share');
    let gateway: Gateway;
    let a: Awaited<ReturnType<typeof startWorker>>;
    let b: Awaited<ReturnType<typeof startWorker>>;
    before(async () => {
      [gateway, a, b] = await Promise.all([
        startGateway(prefix),
        startWorker(prefix, { WORKER_CONCURRENCY: '2' }, 'worker-a'),
        startWorker(prefix, { WORKER_CONCURRENCY: '2' }, 'worker-b'),
      ]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, a, b);
    });
    after(() => stopAll(gateway, a, b));

    it('spreads the jobs over both, and every request gets its own result', async () => {
      const served: string[] = [];
      await pool(digits, 12, async (png) => {
        const reply = await predict(gateway.url, png);
        expect(reply.status).to.equal(200);
        served.push(reply.body.worker as string);
      });
      expect(served).to.have.length(digits.length);
      const counts = { a: served.filter((w) => w === a.id).length, b: served.filter((w) => w === b.id).length };
      expect(counts.a + counts.b).to.equal(digits.length);
      expect(counts.a, JSON.stringify(counts)).to.be.greaterThan(0);
      expect(counts.b, JSON.stringify(counts)).to.be.greaterThan(0);
    });

    it('lists both in /ready', async () => {
      const ready = await request<{ workers: { id: string }[] }>(`${gateway.url}/ready`);
      expect(ready.body.workers.map((w) => w.id)).to.include.members([a.id, b.id]);
    });
  });

  describe('a worker killed with SIGKILL in the middle of a job', () => {
    const prefix = randomPrefix('kill');
    const env = { LOCK_DURATION_MS: '3000', STALLED_INTERVAL_MS: '1000', WORKER_CONCURRENCY: '1' };
    let gateway: Gateway;
    let victim: Awaited<ReturnType<typeof startWorker>>;
    let rescuer: Awaited<ReturnType<typeof startWorker>> | undefined;
    before(async () => {
      const slow = writeSlowModel(path.join(tmp, 'slow'), 250);
      [gateway, victim] = await Promise.all([startGateway(prefix), startWorker(prefix, { ...env, MODEL_DIR: slow }, 'victim')]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, victim, rescuer);
    });
    after(() => stopAll(gateway, victim, rescuer));

    it('loses nothing: the job completes on another worker', async () => {
      const accepted = await predict(gateway.url, digits[0]!, { Prefer: 'respond-async' });
      const id = accepted.body.id as string;
      for (let status = ''; status !== 'active';) {
        status = (await request(`${gateway.url}/v1/jobs/${id}`)).body.status as string;
        expect(status).to.be.oneOf(['queued', 'active']);
        await new Promise((r) => setTimeout(r, 20));
      }
      victim.child.kill('SIGKILL');
      await victim.exited;
      rescuer = await startWorker(prefix, { ...env, MODEL_DIR: path.join(tmp, 'slow') }, 'rescuer');
      const done = await pollUntilDone(gateway.url, id, 30_000);
      expect(done.body.status).to.equal('completed');
      expect(done.body.worker).to.equal(rescuer.id);
      await rescuer.waitFor((r) => r.msg === 'took over a stalled job' && r.jobId === id);
    });
  });

  describe('a worker frozen past its lock (SIGSTOP, as a GC pause or a VM freeze would)', () => {
    const prefix = randomPrefix('frozen');
    // The frozen worker's lock lapses soon after the freeze; the rescuer (the fast default model,
    // the default lock) checks for stalled jobs every second.
    const env = { LOCK_DURATION_MS: '2000', STALLED_INTERVAL_MS: '1000', WORKER_CONCURRENCY: '1' };
    let gateway: Gateway;
    let frozen: Awaited<ReturnType<typeof startWorker>>;
    let rescuer: Awaited<ReturnType<typeof startWorker>> | undefined;
    before(async () => {
      const slow = writeSlowModel(path.join(tmp, 'slow-frozen'), 250);
      [gateway, frozen] = await Promise.all([startGateway(prefix), startWorker(prefix, { ...env, MODEL_DIR: slow }, 'frozen')]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, frozen, rescuer);
    });
    after(() => stopAll(gateway, frozen, rescuer));

    it('does not publish again after another worker finished the job: one result, one event', async () => {
      const redis = testRedis();
      const keys = redisKeys(prefix);
      try {
        const accepted = await predict(gateway.url, digits[2]!, { Prefer: 'respond-async' });
        const id = accepted.body.id as string;
        while ((await request(`${gateway.url}/v1/jobs/${id}`)).body.status !== 'active')
          await new Promise((r) => setTimeout(r, 10));
        frozen.child.kill('SIGSTOP');
        // The lock the result commit checks is BullMQ's own, under the name the contract gives it.
        expect(await redis.exists(keys.jobLock(QUEUES.inference, id)), 'BullMQ lock key').to.equal(1);
        rescuer = await startWorker(prefix, { STALLED_INTERVAL_MS: '1000' }, 'rescuer');
        const done = await pollUntilDone(gateway.url, id, 30_000);
        expect(done.body).to.include({ status: 'completed', worker: rescuer.id });
        frozen.child.kill('SIGCONT');
        // Frozen before its commit ('not publishing: …'), or before it even took the input ('already
        // finished by an earlier attempt': a CI run froze it there); either way it publishes nothing.
        await frozen.waitFor(
          (r) =>
            r.jobId === id &&
            (r.msg?.startsWith('not publishing') === true || r.msg === 'already finished by an earlier attempt'),
          30_000,
        );
        const events = (await redis.xrange(keys.predictions, '-', '+')).filter(([, fields]) => fields[1]!.includes(id));
        expect(events, 'prediction events for the job').to.have.length(1);
        const stored = JSON.parse((await redis.get(keys.result(id)))!) as { worker: string };
        expect(stored.worker, 'the stored result').to.equal(rescuer.id);
      } finally {
        frozen.child.kill('SIGCONT');
        redis.disconnect();
      }
    });
  });

  describe('SIGTERM', () => {
    const prefix = randomPrefix('term');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>>;
    before(async () => {
      const slow = writeSlowModel(path.join(tmp, 'slow-term'), 250);
      [gateway, worker] = await Promise.all([
        startGateway(prefix),
        startWorker(prefix, { MODEL_DIR: slow, WORKER_CONCURRENCY: '1' }),
      ]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(() => stopAll(gateway, worker));

    it('finishes the job in flight, deregisters and exits cleanly', async () => {
      expect((await request(`${gateway.url}/ready`)).status).to.equal(200);
      const accepted = await predict(gateway.url, digits[1]!, { Prefer: 'respond-async' });
      const id = accepted.body.id as string;
      while ((await request(`${gateway.url}/v1/jobs/${id}`)).body.status !== 'active')
        await new Promise((r) => setTimeout(r, 20));
      const code = await worker.stop('SIGTERM');
      expect(code).to.equal(0);
      const done = await request(`${gateway.url}/v1/jobs/${id}`);
      expect(done.body).to.include({ status: 'completed', worker: worker.id });
      expect(worker.records.some((r) => r.msg === 'shutdown complete')).to.equal(true);
      const ready = await request(`${gateway.url}/ready`);
      expect(ready.status, 'no live worker left').to.equal(503);
      expect(ready.body.status).to.equal('not-ready');
    });
  });

  describe('another model: 3-channel 224×224 NCHW with mean/std normalisation', () => {
    const prefix = randomPrefix('rgb');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>>;
    before(async () => {
      const dir = writeRgbModel(path.join(tmp, 'rgb'));
      [gateway, worker] = await Promise.all([startGateway(prefix), startWorker(prefix, { MODEL_DIR: dir })]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(() => stopAll(gateway, worker));

    it('is served by the same worker code, from its manifest alone', async () => {
      const cases: [[number, number, number], string][] = [
        [[230, 20, 20], 'red'],
        [[20, 200, 30], 'green'],
        [[10, 30, 220], 'blue'],
        // Equal channels: only ImageNet's per-channel mean/std make blue the largest.
        [[128, 128, 128], 'blue'],
      ];
      for (const [rgb, label] of cases) {
        const reply = await predict(gateway.url, await solidImage(640, 360, rgb, 'jpeg'));
        expect(reply.status).to.equal(200);
        expect(reply.body.model).to.deep.equal({ name: 'rgb-means', version: 'test-1' });
        expect((reply.body.prediction as { label: string }).label, `rgb(${rgb.join(',')})`).to.equal(label);
        expect(reply.body.input).to.include({ width: 640, height: 360 });
      }
    });
  });
});
