import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import sharp from 'sharp';
import { loadConfig } from '@conveyor/shared/config';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { GatewayConfig } from '../../services/gateway/src/config.js';
import { startGateway, type GatewayService } from '../../services/gateway/src/gateway.service.js';
import { WorkerConfig } from '../../services/inference-worker/src/config.js';
import { startWorker, type WorkerService } from '../../services/inference-worker/src/worker.service.js';
import { startCallbackReceiver, type CallbackReceiver } from '../support/callback-receiver.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { pollUntilDone, predict, request, uploadForm } from '../support/http.js';
import { writeSlowModel } from '../support/models.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { until } from '../support/wait.js';

type Log = Record<string, unknown>;

/** A pino logger whose records are kept, to read what a service did (and which port it chose). */
function recordingLog(records: Log[], level = 'info') {
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) records.push(JSON.parse(line) as Log);
      done();
    },
  });
  return pino({ level }, sink);
}

/**
 * Deadlines and cancellation (issue 22 §4) with a real gateway, a real worker and real Redis, in
 * this process. The worker runs a model that takes seconds per image, one job at a time, so a job
 * can be held running (the first) and another held waiting behind it; before the worker starts,
 * async jobs simply wait. Jobs run are counted by the worker's own metrics (`outcome` label).
 */
describe('deadlines and cancellation (in-process gateway and worker, real Redis)', function () {
  this.timeout(240_000);
  const prefix = randomPrefix('deadlines');
  const keys = redisKeys(prefix);
  const secret = 'whsec_' + Buffer.from('deadlines-test-secret-0123456789').toString('base64');
  let tmp: string;
  let slowDir: string;
  let redis: Redis;
  let queue: Queue;
  let receiver: CallbackReceiver;
  let gateway: GatewayService;
  /** A second gateway on the same Redis with deadline admission on (the first queues whatever it is given). */
  let strict: GatewayService;
  let worker: WorkerService | undefined;
  const workerLog: Log[] = [];
  let base: string;
  let strictBase: string;
  let digit: Buffer;

  const env = () => ({ REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix });
  /** The share of a deadline admission plans within (DEADLINE_ADMISSION_SHARE, as configured here). */
  const SHARE = 0.8;
  const gatewayEnv = (admission: boolean) => ({
    ...env(),
    PORT: '0',
    HOST: '127.0.0.1',
    SHUTDOWN_BUDGET_MS: '2000',
    CALLBACK_SECRET: secret,
    URL_ALLOW_CIDRS: '127.0.0.1/32',
    CALLBACK_SWEEP_SECONDS: '1',
    DEADLINE_ADMISSION: String(admission),
    DEADLINE_ADMISSION_SHARE: String(SHARE),
    SYNC_WAIT_MAX_SECONDS: '300',
  });

  /** The worker's job outcomes so far, from its Prometheus endpoint. */
  async function outcomes(): Promise<Record<string, number>> {
    const listening = workerLog.find((r) => r.msg === 'metrics listening');
    if (!listening) return {};
    const text = await (await fetch(String(listening.url))).text();
    const counts: Record<string, number> = {};
    for (const match of text.matchAll(/^conveyor_worker_jobs_total\{model="digits",outcome="(\w+)"\} (\d+)/gm)) {
      counts[match[1]!] = Number(match[2]);
    }
    return counts;
  }

  const recordsOf = (jobId: string, msg: string) => workerLog.filter((r) => r.jobId === jobId && r.msg === msg);
  const queued = async () => {
    const counts = await queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed');
    return counts;
  };

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-deadlines-'));
    // Seconds per image on one core (more under load): long enough to hold a job running while
    // the test acts on another; the test waits for states, never for time.
    slowDir = writeSlowModel(path.join(tmp, 'slow'), 60);
    const { dataset, split } = await heldOutDigits();
    digit = await digitPng(dataset.samples[split.test[0]!]!.pixels);
    redis = testRedis();
    queue = new Queue('inference', { connection: { url: testRedisUrl() }, prefix });
    receiver = await startCallbackReceiver();
    const silent = pino({ level: 'silent' });
    gateway = await startGateway(loadConfig(GatewayConfig, gatewayEnv(false)), silent);
    strict = await startGateway(loadConfig(GatewayConfig, gatewayEnv(true)), silent);
    base = `http://127.0.0.1:${gateway.port}`;
    strictBase = `http://127.0.0.1:${strict.port}`;
  });

  after(async () => {
    // Whatever `before` got to start (it may have failed half-way).
    const services = [gateway, strict, worker] as ({ stop(): Promise<unknown> } | undefined)[];
    await Promise.allSettled(services.filter((s) => s !== undefined).map((s) => s.stop()));
    const closing = [queue, receiver] as ({ close(): Promise<unknown> } | undefined)[];
    await Promise.allSettled(closing.filter((c) => c !== undefined).map((c) => c.close()));
    await (redis as Redis | undefined)?.quit();
    rmSync(tmp, { recursive: true, force: true });
    sharp.unblock({ operation: ['VipsForeignLoad'] });
  });

  async function startSlowWorker(): Promise<void> {
    worker = await startWorker(
      loadConfig(WorkerConfig, {
        ...env(),
        MODEL_DIR: slowDir,
        WORKER_CONCURRENCY: '1',
        HEARTBEAT_INTERVAL_MS: '300',
        SHUTDOWN_BUDGET_MS: '2000',
        METRICS_PORT: '0',
        METRICS_HOST: '127.0.0.1',
      }),
      recordingLog(workerLog),
    );
    await worker.ready;
    await until('the gateways see the warm worker', async () => {
      const [a, b] = await Promise.all([base, strictBase].map((u) => fetch(`${u}/v2/models/digits/ready`)));
      return (a!.status === 200 && b!.status === 200) || undefined;
    });
  }

  const deleteJob = (id: string, base_ = base) => request(`${base_}/v1/jobs/${id}`, { method: 'DELETE' });

  it('cancels a waiting job: final state cancelled, its bytes and queue place given back once, its callback told once', async () => {
    const a = await predict(base, digit, { Prefer: 'respond-async', 'Callback-Url': receiver.url('/ok') });
    const b = await predict(base, digit, { Prefer: 'respond-async' });
    expect([a.status, b.status]).to.deep.equal([202, 202]);
    const [idA, idB] = [a.body.id as string, b.body.id as string];
    const bytesOfB = Number(String(await redis.hget(keys.queuedImages, idB)).split(' ')[0]);
    expect(bytesOfB).to.be.greaterThan(0);
    const before = await queued();
    expect((before.waiting ?? 0) + (before.prioritized ?? 0)).to.equal(2);

    const cancelled = await deleteJob(idA);
    expect(cancelled.status, JSON.stringify(cancelled.body)).to.equal(200);
    expect(cancelled.body).to.include({ id: idA, status: 'cancelled', attempt: 0 });
    expect((cancelled.body.error as { slug: string }).slug).to.equal('cancelled');
    // Idempotent: the same answer again, and nothing given back twice.
    const again = await deleteJob(idA);
    expect(again.status).to.equal(200);
    expect(again.body).to.deep.include({ id: idA, status: 'cancelled', finishedAt: cancelled.body.finishedAt });

    const polled = await request(`${base}/v1/jobs/${idA}`);
    expect(polled.body).to.include({ status: 'cancelled' });
    // Only B's bytes are still counted, exactly: A's were given back once.
    expect(await redis.hexists(keys.queuedImages, idA)).to.equal(0);
    expect(Number(await redis.get(keys.queuedBytes))).to.equal(bytesOfB);
    expect(await redis.exists(keys.input(idA)), "A's image").to.equal(0);
    const after = await queued();
    expect((after.waiting ?? 0) + (after.prioritized ?? 0), 'jobs waiting').to.equal(1);
    expect(await queue.getJobState(idA)).to.equal('unknown');

    // The callback is delivered once, with the cancelled outcome.
    await until('the callback of the cancelled job', async () => {
      const state = (await request(`${base}/v1/jobs/${idA}`)).body.callback as { state: string } | undefined;
      return state?.state === 'delivered' || undefined;
    });
    const deliveries = receiver.deliveries.filter((d) => (JSON.parse(d.body) as { data: { id: string } }).data.id === idA);
    expect(deliveries).to.have.length(1);
    expect(JSON.parse(deliveries[0]!.body)).to.nested.include({ type: 'job.cancelled', 'data.status': 'cancelled' });

    // B is cancelled too, and nothing stays counted.
    expect((await deleteJob(idB)).body).to.include({ status: 'cancelled' });
    expect(Number(await redis.get(keys.queuedBytes))).to.equal(0);
    expect(await redis.hlen(keys.queuedImages)).to.equal(0);
  });

  it('answers 404 for an unknown job, and for a malformed id', async () => {
    expect((await deleteJob('6f1c1c1e-0000-4000-8000-000000000000')).status).to.equal(404);
    expect((await deleteJob('not-a-job')).status).to.equal(404);
  });

  it('drops a job whose deadline passed before a worker took it: expired, never decoded or run, the caller told', async () => {
    const sent = Date.now();
    const e = await predict(base, digit, { Prefer: 'respond-async, deadline=0.2', 'Callback-Url': receiver.url('/ok') });
    expect(e.status, JSON.stringify(e.body)).to.equal(202);
    expect(e.headers.get('preference-applied')).to.equal('respond-async, deadline=0.2');
    const id = e.body.id as string;
    // The worker starts once the deadline is behind us (a condition on the clock, not a sleep for a result).
    await until('the deadline to pass', () => Promise.resolve(Date.now() > sent + 400 || undefined));
    await startSlowWorker();

    const done = await pollUntilDone(base, id, 120_000);
    expect(done.body).to.include({ id, status: 'expired' });
    expect((done.body.error as { slug: string }).slug).to.equal('deadline-exceeded');
    expect(Date.parse(done.body.deadline as string)).to.be.at.most(Date.parse(done.body.finishedAt as string));
    expect(await outcomes()).to.include({ expired: 1, completed: 0 });
    expect(recordsOf(id, 'prediction'), 'inferences of the expired job').to.have.length(0);
    expect(await redis.exists(keys.input(id))).to.equal(0);
    expect(Number(await redis.get(keys.queuedBytes))).to.equal(0);
    await until('the expired callback', () =>
      Promise.resolve(
        receiver.deliveries.find((d) => (JSON.parse(d.body) as { data: { id: string } }).data.id === id) || undefined,
      ),
    );
    const delivery = receiver.deliveries.find((d) => (JSON.parse(d.body) as { data: { id: string } }).data.id === id)!;
    expect(JSON.parse(delivery.body)).to.include({ type: 'job.expired' });
  });

  it('lets a running job finish but discards its result, and refuses to cancel a finished one (409)', async () => {
    const r = await predict(base, digit, { Prefer: 'respond-async' });
    const id = r.body.id as string;
    await until(
      'the job to run',
      async () => (await request(`${base}/v1/jobs/${id}`)).body.status === 'active' || undefined,
      120_000,
    );
    const first = await deleteJob(id);
    expect(first.status, JSON.stringify(first.body)).to.equal(202);
    expect(first.body).to.deep.include({ id, status: 'active', cancelling: true });
    expect((await deleteJob(id)).status, 'a second DELETE').to.equal(202);
    const predictionsBefore = await redis.xlen(keys.predictions);

    const done = await pollUntilDone(base, id, 120_000);
    expect(done.body).to.include({ id, status: 'cancelled', attempt: 1 });
    expect(recordsOf(id, 'result discarded: the job was cancelled while it ran')).to.have.length(1);
    expect(await redis.xlen(keys.predictions), 'prediction events').to.equal(predictionsBefore);
    expect(await outcomes()).to.include({ cancelled: 1, completed: 0 });
    expect((await deleteJob(id)).body).to.include({ status: 'cancelled' });

    // A job that completed stands.
    const completed = await predict(base, digit, { Prefer: 'wait=120' });
    expect(completed.body).to.include({ status: 'completed' });
    const conflict = await deleteJob(completed.body.id as string);
    expect(conflict.status).to.equal(409);
    expect(conflict.body).to.include({ type: '/problems/conflict' });
    expect(await outcomes()).to.include({ completed: 1 });
  });

  it('answers a synchronous caller whose job expired in the queue with a 504 problem, and does not run it', async () => {
    const holder = await predict(base, digit, { Prefer: 'respond-async' });
    const holderId = holder.body.id as string;
    await until(
      'the first job to run',
      async () => (await request(`${base}/v1/jobs/${holderId}`)).body.status === 'active' || undefined,
      120_000,
    );
    const before = await outcomes();
    // Behind a job of seconds, a deadline of a tenth of one passes in the queue.
    const late = await predict(base, digit, { Prefer: 'wait=120, deadline=0.1' });
    expect(late.status, JSON.stringify(late.body)).to.equal(504);
    expect(late.body).to.include({ type: '/problems/deadline-exceeded' });
    const after = await outcomes();
    expect(after.expired! - before.expired!, 'expired').to.equal(1);
    expect(recordsOf(late.body.jobId as string, 'prediction'), 'inferences of the expired job').to.have.length(0);
    await pollUntilDone(base, holderId, 120_000);
  });

  it('refuses at once a deadline the queue cannot meet (503 + Retry-After), from the measured service time', async () => {
    // The worker has measured its service time by now and beats it to the gateways, which show it.
    await until('the measured service time, as the strict gateway sees it', async () => {
      const model = await request(`${strictBase}/v1/models/digits`);
      return (model.body.serviceMs as number | undefined) || undefined;
    });
    const counts = await queued();
    const refused = await predict(strictBase, digit, { Prefer: 'respond-async, deadline=0.05' });
    expect(refused.status, JSON.stringify(refused.body)).to.equal(503);
    expect(refused.body).to.include({ type: '/problems/deadline-unmeetable' });
    expect(Number(refused.headers.get('retry-after'))).to.be.greaterThan(0);
    expect(await queued(), 'nothing queued').to.deep.equal(counts);
    // A deadline the queue can meet is admitted.
    const admitted = await predict(strictBase, digit, { Prefer: 'respond-async, deadline=600' });
    expect(admitted.status, JSON.stringify(admitted.body)).to.equal(202);
    await pollUntilDone(strictBase, admitted.body.id as string, 120_000);
  });

  it('counts the requests being accepted at the same moment: of 30 at once, exactly the jobs the deadline allows get in', async () => {
    // The figures the gateway estimates from (one job first, so they exist when this test runs
    // alone); with the queue paused none changes during the burst.
    if (!worker) await startSlowWorker(); // the first test starts it; alone, this one does
    expect((await predict(strictBase, digit, { Prefer: 'wait=120' })).status).to.equal(200);
    const model = await until('the measured service time, as the strict gateway sees it', async () => {
      const found = await request(`${strictBase}/v1/models/digits`);
      return found.body.serviceMs
        ? (found.body as { serviceMs: number; concurrency: number; jobsPerSecond?: number })
        : undefined;
    });
    await until(
      'an empty queue',
      async () => ((await queued()).waiting ?? 0) + ((await queued()).prioritized ?? 0) === 0 || undefined,
    );
    await queue.pause();
    try {
      // A deadline for 5 jobs ahead at most: floor((share × D − s) × drain) + 1 = 5, with drain the
      // measured saturated rate when there is one, never above the slots' c / s.
      const allowed = 5;
      const drainPerMs = Math.min(model.concurrency / model.serviceMs, (model.jobsPerSecond ?? Infinity) / 1000);
      const deadline = (model.serviceMs + (allowed - 0.5) / drainPerMs) / SHARE / 1000;
      const replies = await Promise.all(
        Array.from({ length: 30 }, () => predict(strictBase, digit, { Prefer: `respond-async, deadline=${deadline}` })),
      );
      const statuses = replies.map((r) => r.status);
      expect(
        statuses.filter((s) => s === 202),
        JSON.stringify(statuses),
      ).to.have.length(allowed);
      const refused = replies.filter((r) => r.status === 503);
      expect(refused).to.have.length(30 - allowed);
      for (const r of refused) expect(r.body).to.include({ type: '/problems/deadline-unmeetable' });
    } finally {
      await queue.resume();
    }
    // The admitted ones expire unrun or complete; either way the queue empties.
    await until(
      'the queue to drain',
      async () => ((await queued()).waiting ?? 0) + ((await queued()).prioritized ?? 0) === 0 || undefined,
    );
  });

  it('cancels the waiting job of a synchronous caller that hangs up, and never runs it', async () => {
    // The queue paused, so the job waits until its caller has hung up whatever the machine's speed
    // (a slow job holding the worker's one slot ended too soon on a quiet CI machine, twice).
    // The earlier tests' jobs finished first, so that the count below is this test's alone.
    await until('no job left by the earlier tests', async () => {
      const counts = await queued();
      return Object.values(counts).every((n) => n === 0) || undefined;
    });
    const before = await outcomes();
    let id: string;
    await queue.pause();
    try {
      const hangUp = new AbortController();
      const call = fetch(`${base}/v1/predict`, {
        method: 'POST',
        body: uploadForm(digit),
        headers: { Prefer: 'wait=120' },
        signal: hangUp.signal,
      }).catch(() => undefined);
      const [waiting] = await until('the synchronous job to wait in the queue', async () => {
        const jobs = await queue.getJobs(['prioritized', 'waiting']);
        return jobs.length > 0 ? jobs : undefined;
      });
      id = waiting!.id!;
      hangUp.abort();
      await call;
      await until(
        'the abandoned job to be cancelled',
        async () => (await request(`${base}/v1/jobs/${id}`)).body.status === 'cancelled' || undefined,
      );
      expect(await queue.getJobState(id)).to.equal('unknown');
    } finally {
      await queue.resume();
    }
    // A job queued after it: once that one has run, the abandoned one would have run first, had it been left.
    const marker = await predict(base, digit, { Prefer: 'respond-async' });
    await pollUntilDone(base, marker.body.id as string, 120_000);
    const after = await outcomes();
    expect(after.completed! - before.completed!, 'completed').to.equal(1);
    expect(recordsOf(id, 'prediction'), 'inferences of the abandoned job').to.have.length(0);
    expect(Number(await redis.get(keys.queuedBytes))).to.equal(0);
  });
});
