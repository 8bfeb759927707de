import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import { INFERENCE_JOB_NAME, INFERENCE_JOB_OPTIONS, inferenceQueue, QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { servedModels, WorkerHeartbeat } from '@conveyor/shared/contract/workers.contract';
import {
  ensureModerationModel,
  readPhoto,
  readReferencePredictions,
  TOLERANCE,
  type ReferencePrediction,
} from '../../scripts/models/moderation.js';
import { ROOT } from '../../harness/service-process.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { pollUntilDone, predict, predictModel, request, type Reply } from '../support/http.js';
import { writeSlowModel } from '../support/models.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * Several models in one deployment, through the real HTTP API, real Redis and real worker
 * processes: the digit CNN and the nsfwjs MobileNetV2 (models/moderation, built on first use),
 * served by one worker process and by one process each; discovery from the workers' heartbeats,
 * per-model readiness, warm-up before announcement, a model with no live worker, and admission
 * counted per model.
 */
type Worker = Awaited<ReturnType<typeof startWorker>>;

interface ModelView {
  name: string;
  default: boolean;
  ready: boolean;
  workers: number;
  versions: string[];
  input?: { layout: string; channels: number; height: number; width: number; color: string };
  labels?: string[];
  links: { predict: string; ready: string };
}

interface Prediction {
  model: { name: string; version: string };
  worker: string;
  prediction: { label: string; top: { label: string; confidence: number }[] };
}

const MODERATION_LABELS = ['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'];

/** The largest |Δp| between a served moderation answer and the original model's probabilities. */
function moderationDiff(body: Prediction, expected: ReferencePrediction, labels: readonly string[]): number {
  const served = labels.map((label) => body.prediction.top.find((t) => t.label === label)?.confidence ?? NaN);
  return Math.max(...served.map((p, i) => Math.abs(p - expected.probabilities[i]!)));
}

/** The models each live worker's heartbeat lists, straight from Redis. */
async function announced(prefix: string): Promise<Map<string, string[]>> {
  const redis = testRedis();
  try {
    const keys = redisKeys(prefix);
    const ids = await redis.zrangebyscore(keys.workers, Date.now(), '+inf');
    const values = ids.length ? await redis.mget(ids.map((id) => keys.worker(id))) : [];
    const byWorker = new Map<string, string[]>();
    for (const value of values) {
      if (value === null) continue;
      const heartbeat = WorkerHeartbeat.parse(JSON.parse(value));
      byWorker.set(
        heartbeat.id,
        servedModels(heartbeat).map((m) => m.name),
      );
    }
    return byWorker;
  } finally {
    redis.disconnect();
  }
}

describe('several models in one deployment', function () {
  this.timeout(600_000);
  let chelsea: Buffer;
  let chelseaReference: ReferencePrediction;
  let seven: Buffer;
  let three: Buffer;

  before(async () => {
    // Builds models/moderation/model.onnx if this clone has not yet (see test/moderation-model.test.ts).
    await ensureModerationModel();
    chelsea = readPhoto('chelsea').bytes;
    chelseaReference = readReferencePredictions().images.find((i) => i.name === 'chelsea')!;
    expect(chelseaReference.label).to.equal('Neutral');
    const { dataset, split } = await heldOutDigits();
    const find = (label: number) => dataset.samples[split.test.find((i) => dataset.samples[i]!.label === label)!]!.pixels;
    [seven, three] = await Promise.all([digitPng(find(7)), digitPng(find(3))]);
  });

  describe('one worker process serving both models', () => {
    const prefix = randomPrefix('models-one');
    let gateway: Gateway;
    let worker: Worker;

    before(async () => {
      [gateway, worker] = await Promise.all([
        startGateway(prefix),
        // TOP_K = every moderation label, so the whole distribution comes back.
        startWorker(prefix, { MODELS: 'digits,moderation:2', TOP_K: '5', METRICS_PORT: '0' }),
      ]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(() => stopAll(gateway, worker));

    it('lists both models, learnt from the heartbeat, ready with their version, input and labels', async () => {
      const list = await request<{ models: ModelView[] }>(`${gateway.url}/v1/models`);
      expect(list.status).to.equal(200);
      const byName = new Map(list.body.models.map((m) => [m.name, m]));
      expect([...byName.keys()]).to.deep.equal(['digits', 'moderation']);
      const digits = byName.get('digits')!;
      expect(digits).to.deep.include({ default: true, ready: true, workers: 1 });
      expect(digits.input).to.deep.include({ layout: 'NCHW', channels: 1, height: 28, width: 28, color: 'gray' });
      expect(digits.labels).to.deep.equal(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
      const moderation = byName.get('moderation')!;
      expect(moderation).to.deep.include({
        default: false,
        ready: true,
        workers: 1,
        versions: [readReferencePredictions().model.version],
      });
      expect(moderation.input).to.deep.include({ channels: 3, height: 224, width: 224, color: 'rgb' });
      expect(moderation.labels).to.deep.equal(MODERATION_LABELS);
      expect(moderation.links).to.deep.equal({
        self: '/v1/models/moderation',
        predict: '/v1/models/moderation/predict',
        ready: '/v2/models/moderation/ready',
      });

      const one = await request<ModelView>(`${gateway.url}/v1/models/moderation`);
      expect(one.body).to.deep.equal(moderation);
      const probe = await request(`${gateway.url}/v2/models/moderation/ready`);
      expect([probe.status, probe.body]).to.deep.equal([200, { name: 'moderation', ready: true }]);
      const ready = await request<{
        models: Record<string, { ready: boolean; workers: number }>;
        workers: { id: string; models: { name: string }[] }[];
      }>(`${gateway.url}/ready`);
      expect(ready.status).to.equal(200);
      expect(ready.body.models.digits).to.deep.include({ ready: true, workers: 1 });
      expect(ready.body.models.moderation).to.deep.include({ ready: true, workers: 1 });
      expect(ready.body.workers.find((w) => w.id === worker.id)!.models.map((m) => m.name)).to.deep.equal([
        'digits',
        'moderation',
      ]);
    });

    it('classifies the chelsea photo on /v1/models/moderation/predict as the original model does', async () => {
      const reply = await predictModel(gateway.url, 'moderation', chelsea);
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
      const body = reply.body as unknown as Prediction;
      expect(body.model).to.deep.equal(readReferencePredictions().model);
      expect(body.worker).to.equal(worker.id);
      expect(body.prediction.label).to.equal('Neutral');
      expect(moderationDiff(body, chelseaReference, readReferencePredictions().labels)).to.be.at.most(TOLERANCE);
    });

    it('reads a digit on /v1/models/digits/predict and on /v1/predict (the default model)', async () => {
      for (const reply of [await predictModel(gateway.url, 'digits', seven), await predict(gateway.url, seven)]) {
        expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
        expect((reply.body as unknown as Prediction).prediction.label).to.equal('7');
        expect((reply.body as unknown as Prediction).model.name).to.equal('digits');
      }
    });

    it('answers an unknown model with 404 problem details naming the known ones, before reading the image', async () => {
      for (const url of [`${gateway.url}/v1/models/no-such-model/predict`, `${gateway.url}/v1/models/UPPER%20case/predict`]) {
        const reply = await request(url, {
          method: 'POST',
          body: chelsea,
          headers: { 'content-type': 'image/png', 'x-request-id': 'unknown-model-1' },
        });
        expect(reply.status).to.equal(404);
        expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
        expect(reply.body).to.deep.include({
          type: '/problems/not-found',
          requestId: 'unknown-model-1',
          models: ['digits', 'moderation'],
        });
      }
      for (const url of [`${gateway.url}/v1/models/no-such-model`, `${gateway.url}/v2/models/no-such-model/ready`]) {
        const reply = await request(url);
        expect(reply.status).to.equal(404);
        expect(reply.body).to.include({ type: '/problems/not-found' });
      }
      // Unknown names create no metric series: the model label only ever holds a known model.
      const metrics = (await request<string>(`${gateway.url}/metrics`)).body;
      expect(metrics).not.to.include('no-such-model');
      expect(metrics).to.match(
        /conveyor_http_request_duration_seconds_count\{[^}]*route="\/v1\/models\/:name\/predict"[^}]*model="moderation"[^}]*\} [1-9]/,
      );
      expect(metrics).to.match(
        /conveyor_http_request_duration_seconds_count\{[^}]*route="\/v1\/models\/:name\/predict"[^}]*status="404"[^}]*\} 2/,
      );
      expect(metrics).to.match(/conveyor_model_workers_live\{model="moderation"\} 1/);
    });

    it("finds jobs of either model by id, and checks feedback against the job's own model", async () => {
      const accepted = await Promise.all([
        predictModel(gateway.url, 'moderation', chelsea, { Prefer: 'respond-async' }),
        predictModel(gateway.url, 'digits', three, { Prefer: 'respond-async' }),
      ]);
      expect(accepted.map((r) => [r.status, r.body.model])).to.deep.equal([
        [202, 'moderation'],
        [202, 'digits'],
      ]);
      const [moderationJob, digitJob] = await Promise.all(accepted.map((r) => pollUntilDone(gateway.url, r.body.id as string)));
      expect((moderationJob!.body as unknown as Prediction).prediction.label).to.equal('Neutral');
      expect((digitJob!.body as unknown as Prediction).prediction.label).to.equal('3');

      const feedback = (jobId: unknown, label: string) =>
        request(`${gateway.url}/v1/feedback`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ jobId, label }),
        });
      // A digit is no ground truth for the moderation model, nor "Neutral" for the digit model.
      const wrongForModeration = await feedback(moderationJob!.body.id, '3');
      expect(wrongForModeration.status).to.equal(422);
      expect(wrongForModeration.body).to.include({ type: '/problems/unknown-label' });
      expect(wrongForModeration.body.labels).to.deep.equal(MODERATION_LABELS);
      expect((await feedback(digitJob!.body.id, 'Neutral')).status).to.equal(422);
      expect((await feedback(moderationJob!.body.id, 'Neutral')).status).to.equal(202);
      expect((await feedback(digitJob!.body.id, '3')).status).to.equal(202);
    });

    it('takes jobs from a gateway of the previous release (no model, on the legacy queue), and refuses one on the wrong queue', async () => {
      const redis = testRedis();
      const keys = redisKeys(prefix);
      const legacy = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
      const moderation = new Queue(inferenceQueue('moderation'), { connection: { url: testRedisUrl() }, prefix });
      try {
        const job = (bytes: Buffer) => ({
          kind: 'inference',
          version: 1,
          requestId: 'previous-release',
          acceptedAt: Date.now(),
          input: { format: 'png', bytes: bytes.length, width: 28, height: 28, source: { kind: 'upload' } },
        });
        const [oldJob, misplaced] = [randomUUID(), randomUUID()];
        await redis.set(keys.input(oldJob), seven, 'EX', 60);
        await legacy.add(INFERENCE_JOB_NAME, job(seven), { ...INFERENCE_JOB_OPTIONS, jobId: oldJob });
        const done = await pollUntilDone(gateway.url, oldJob);
        expect(done.body).to.deep.include({ status: 'completed', worker: worker.id });
        expect((done.body as unknown as Prediction).prediction.label).to.equal('7');

        await redis.set(keys.input(misplaced), seven, 'EX', 60);
        await moderation.add(
          INFERENCE_JOB_NAME,
          { ...job(seven), model: 'digits' },
          { ...INFERENCE_JOB_OPTIONS, jobId: misplaced },
        );
        await until('the misplaced job to fail', async () => (await moderation.getJobState(misplaced)) === 'failed');
        expect((await moderation.getJob(misplaced))?.attemptsStarted).to.equal(1);
      } finally {
        await Promise.all([legacy.close(), moderation.close()]);
        redis.disconnect();
      }
    });

    it("counts each model apart in the worker's metrics, with the model label bounded by MODELS", async () => {
      const url = String((await worker.waitFor((r) => r.msg === 'metrics listening')).url);
      const text = (await request<string>(url)).body;
      const version = readReferencePredictions().model.version;
      expect(text).to.include(`conveyor_worker_model_info{model="moderation",version="${version}"} 1`);
      expect(text).to.match(/conveyor_worker_model_info\{model="digits",version="[^"]+"\} 1/);
      expect(text).to.include('conveyor_worker_concurrency{model="moderation"} 2');
      expect(text).to.include('conveyor_worker_concurrency{model="digits"} 4');
      expect(text).to.match(/conveyor_worker_jobs_total\{model="moderation",outcome="completed"\} [2-9]/);
      expect(text).to.match(/conveyor_worker_inference_seconds_count\{model="digits"\} [3-9]/);
      const models = new Set(Array.from(text.matchAll(/model="([^"]+)"/g), (m) => m[1]));
      expect([...models].sort()).to.deep.equal(['digits', 'moderation']);
    });
  });

  describe('one worker process per model', () => {
    const prefix = randomPrefix('models-two');
    let gateway: Gateway;
    let digitsWorker: Worker;
    let moderationWorker: Worker;
    let lateWorker: Worker | undefined;

    before(async () => {
      [gateway, digitsWorker, moderationWorker] = await Promise.all([
        startGateway(prefix, { MODELS: 'digits,moderation' }),
        startWorker(prefix, {}, 'worker-digits'),
        startWorker(prefix, { MODELS: 'moderation', TOP_K: '5' }, 'worker-moderation'),
      ]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, digitsWorker, moderationWorker, lateWorker);
    });
    after(() => stopAll(gateway, digitsWorker, moderationWorker, lateWorker));

    it("serves each model from its own worker, each on its model's queue", async () => {
      const models = await request<{ models: ModelView[] }>(`${gateway.url}/v1/models`);
      expect(models.body.models.map((m) => [m.name, m.ready, m.workers])).to.deep.equal([
        ['digits', true, 1],
        ['moderation', true, 1],
      ]);
      const cat = await predictModel(gateway.url, 'moderation', chelsea);
      expect(cat.status).to.equal(200);
      expect(cat.body.worker).to.equal(moderationWorker.id);
      expect(
        moderationDiff(cat.body as unknown as Prediction, chelseaReference, readReferencePredictions().labels),
      ).to.be.at.most(TOLERANCE);
      const digit = await predict(gateway.url, seven);
      expect(digit.body).to.deep.include({ worker: digitsWorker.id });
      expect((digit.body as unknown as Prediction).prediction.label).to.equal('7');
      expect(digitsWorker.records.find((r) => r.msg === 'worker ready')!.models).to.deep.equal([
        { name: 'digits', queue: QUEUES.inference, concurrency: 4 },
      ]);
      expect(moderationWorker.records.find((r) => r.msg === 'worker ready')!.models).to.deep.equal([
        { name: 'moderation', queue: inferenceQueue('moderation'), concurrency: 4 },
      ]);
    });

    it('without a live worker: sync 503 no-worker with Retry-After, async 202, served once a worker starts', async () => {
      await moderationWorker.stop();
      const probe = await request(`${gateway.url}/v2/models/moderation/ready`);
      expect([probe.status, probe.body]).to.deep.equal([503, { name: 'moderation', ready: false }]);
      expect((await request(`${gateway.url}/ready`)).status, 'the digits worker keeps the gateway ready').to.equal(200);

      const refused = await predictModel(gateway.url, 'moderation', chelsea, { 'x-request-id': 'no-worker-1' });
      expect(refused.status).to.equal(503);
      expect(refused.headers.get('retry-after')).to.equal('5');
      expect(refused.headers.get('content-type')).to.match(/^application\/problem\+json/);
      expect(refused.body).to.deep.include({ type: '/problems/no-worker', requestId: 'no-worker-1', model: 'moderation' });
      // The other model is unaffected.
      expect((await predict(gateway.url, seven)).status).to.equal(200);

      const accepted = await predictModel(gateway.url, 'moderation', chelsea, { Prefer: 'respond-async' });
      expect(accepted.status).to.equal(202);
      const id = accepted.body.id as string;
      const waiting = await request(`${gateway.url}/v1/jobs/${id}`);
      expect(waiting.body).to.deep.equal({ id, status: 'queued', model: 'moderation' });

      lateWorker = await startWorker(prefix, { MODELS: 'moderation', TOP_K: '5' }, 'worker-moderation-late');
      const done = await pollUntilDone(gateway.url, id, 30_000);
      expect(done.body).to.deep.include({ status: 'completed', worker: lateWorker.id });
      expect((done.body as unknown as Prediction).prediction.label).to.equal('Neutral');
      expect((await request(`${gateway.url}/v2/models/moderation/ready`)).status).to.equal(200);
    });
  });

  describe('warm-up before announcement', () => {
    const prefix = randomPrefix('models-warm');
    let tmp: string;
    let gateway: Gateway;
    let worker: Worker | undefined;

    before(async () => {
      tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-models-'));
      // A model whose load (and so its synthetic run) takes a second or more, beside the quick digits.
      writeSlowModel(path.join(tmp, 'slow-digits'), 150);
      // Known to the gateway before any worker announces it, so its probe answers 503 rather than 404.
      gateway = await startGateway(prefix, { MODELS: 'slow-digits' });
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(async () => {
      await stopAll(gateway, worker);
      rmSync(tmp, { recursive: true, force: true });
    });

    it('lists a model in the heartbeat only once it has answered a synthetic input, and not before', async () => {
      // Observed from outside from before the worker starts until it announces the slow model: what
      // the heartbeats list (first time each model is seen) and what the readiness probe answers.
      // Times are taken so that a correct worker can never fail the checks below: a model counts as
      // listed from after the read that saw it, and a probe as answered from before it was sent.
      const firstListed = new Map<string, number>();
      const probes: { sent: number; answered: number; slow: boolean; digits: boolean }[] = [];
      const watching = until(
        'the slow model to be announced',
        async () => {
          const heartbeats = await announced(prefix);
          const seenAt = Date.now();
          for (const models of heartbeats.values())
            for (const name of models) if (!firstListed.has(name)) firstListed.set(name, seenAt);
          const sent = Date.now();
          const list = await request<{ models: ModelView[] }>(`${gateway.url}/v1/models`);
          const ready = (name: string) => list.body.models.find((m) => m.name === name)?.ready ?? false;
          probes.push({ sent, answered: Date.now(), slow: ready('slow-digits'), digits: ready('digits') });
          return firstListed.has('slow-digits') && ready('slow-digits');
        },
        120_000,
      );
      worker = await startWorker(prefix, {
        MODELS: 'digits,slow-digits:1',
        MODEL_DIR: path.join(ROOT, 'models', 'digits'),
        MODELS_DIR: tmp,
      });
      await watching;

      const line = (msg: string, model: string) => {
        const index = worker!.records.findIndex((r) => r.msg === msg && r.modelName === model);
        expect(index, `${msg} (${model})`).to.be.greaterThan(-1);
        return { index, time: Date.parse(String(worker!.records[index]!.time)) };
      };
      for (const model of ['digits', 'slow-digits']) {
        const warming = line('warming up model', model);
        const warm = line('model warmed up', model);
        const announcedLine = line('model announced', model);
        // In the worker's own order: warm first, then announced.
        expect(warming.index).to.be.lessThan(warm.index);
        expect(warm.index).to.be.lessThan(announcedLine.index);
        // And from outside: no heartbeat listed the model before its warm-up run was over.
        expect(firstListed.get(model)!, model).to.be.at.least(warm.time);
      }
      const slowWarming = line('warming up model', 'slow-digits').time;
      const slowWarm = line('model warmed up', 'slow-digits').time;
      expect(
        Number(worker.records.find((r) => r.msg === 'model warmed up' && r.modelName === 'slow-digits')!.warmUpMs),
      ).to.be.greaterThan(0);
      // While the slow model warmed up, the probe said so (digits ready, slow-digits not), and no
      // answer given before its warm-up ended called it ready.
      const during = probes.filter((p) => p.sent >= slowWarming && p.answered <= slowWarm);
      expect(during.length, 'probes during the warm-up').to.be.greaterThan(0);
      expect(during.filter((p) => p.slow)).to.deep.equal([]);
      expect(
        during.some((p) => p.digits),
        'digits ready while slow-digits warms up',
      ).to.equal(true);
      expect(probes.filter((p) => p.answered < slowWarm && p.slow)).to.deep.equal([]);
      // The quick model did not wait for the slow one.
      expect(firstListed.get('digits')!).to.be.lessThan(firstListed.get('slow-digits')!);
      const probe = await request(`${gateway.url}/v2/models/slow-digits/ready`);
      expect([probe.status, probe.body]).to.deep.equal([200, { name: 'slow-digits', ready: true }]);
    });
  });

  describe('admission per model', () => {
    const prefix = randomPrefix('models-admission');
    const limit = 3;
    let gateway: Gateway;
    let refusing: Gateway;
    const queues: Queue[] = [];

    before(async () => {
      [gateway, refusing] = await Promise.all([
        startGateway(prefix, { MAX_QUEUE_DEPTH: String(limit), MODELS: 'digits,moderation', FAIR_TENANT_SHARE: '1' }),
        startGateway(prefix, {
          MAX_QUEUE_DEPTH: String(limit),
          MODELS: 'digits,moderation',
          NO_WORKER_POLICY: 'refuse',
          FAIR_TENANT_SHARE: '1',
        }),
      ]);
      for (const model of ['digits', 'moderation'])
        queues.push(new Queue(inferenceQueue(model), { connection: { url: testRedisUrl() }, prefix }));
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, refusing);
    });
    after(async () => {
      await stopAll(gateway, refusing);
      for (const queue of queues) {
        await queue.obliterate({ force: true });
        await queue.close();
      }
    });

    it('counts MAX_QUEUE_DEPTH per model: a full moderation queue does not refuse digits', async () => {
      const async = { Prefer: 'respond-async' };
      const moderation: Reply[] = [];
      for (let i = 0; i < limit + 2; i++) moderation.push(await predictModel(gateway.url, 'moderation', chelsea, async));
      expect(moderation.map((r) => r.status)).to.deep.equal([202, 202, 202, 503, 503]);
      expect(moderation[limit]!.body).to.include({ type: '/problems/overloaded' });
      expect(moderation[limit]!.body.detail).to.match(/for this model; the limit is 3/);
      const digits: number[] = [];
      for (let i = 0; i < limit; i++) digits.push((await predict(gateway.url, seven, async)).status);
      expect(digits).to.deep.equal([202, 202, 202]);
      expect(await Promise.all(queues.map((q) => q.getJobCountByTypes('waiting', 'prioritized')))).to.deep.equal([limit, limit]);
      expect(queues.map((q) => q.name)).to.deep.equal(['inference', 'inference.moderation']);
    });

    it('queues async requests for a known model with no worker, unless NO_WORKER_POLICY=refuse; sync ones are refused', async () => {
      // (The queues are full from the test before: drain one place of each.)
      for (const queue of queues) await queue.drain();
      const queued = await predictModel(gateway.url, 'moderation', chelsea, { Prefer: 'respond-async' });
      expect(queued.status).to.equal(202);
      const refused = await predictModel(refusing.url, 'moderation', chelsea, { Prefer: 'respond-async' });
      expect(refused.status).to.equal(503);
      expect(refused.headers.get('retry-after')).to.equal('5');
      expect(refused.body).to.include({ type: '/problems/no-worker' });
      const sync = await predict(gateway.url, seven);
      expect(sync.status).to.equal(503);
      expect(sync.body).to.include({ type: '/problems/no-worker' });
    });
  });
});
