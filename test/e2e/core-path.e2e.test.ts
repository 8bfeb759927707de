import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { INFERENCE_JOB_OPTIONS } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { digitInEveryFormat, digitPng, heldOutDigits } from '../support/images.js';
import { pollUntilDone, predict, request } from '../support/http.js';
import { keysUnder, randomPrefix, testRedis } from '../support/redis.js';
import { dumpLogsOnFailure, recordsWith, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * The spine, end to end: real gateway and worker processes, real Redis, sharp and onnxruntime,
 * the committed digit model.
 */
describe('core path: upload → gateway → Redis/BullMQ → ONNX worker → result', function () {
  this.timeout(60_000);
  const prefix = randomPrefix('core');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let redis: Redis;
  let seven: Buffer;
  let everyFormat: Awaited<ReturnType<typeof digitInEveryFormat>>;
  let everyFormatLabel: string;

  before(async () => {
    redis = testRedis();
    [gateway, worker] = await Promise.all([
      startGateway(prefix, { RESULT_TTL_SECONDS: '3' }),
      startWorker(prefix, { RESULT_TTL_SECONDS: '3' }),
    ]);
    const { dataset, split } = await heldOutDigits();
    const index = split.test.find((i) => dataset.samples[i]!.label === 7)!;
    seven = await digitPng(dataset.samples[index]!.pixels);
    const four = dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 4)!]!;
    everyFormat = await digitInEveryFormat(four.pixels);
    everyFormatLabel = String(four.label);
  });

  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });

  after(async () => {
    await stopAll(gateway, worker);
    await redis.quit();
  });

  it('answers a synchronous prediction with the result, the model and timings', async () => {
    const reply = await predict(gateway.url, seven);
    expect(reply.status).to.equal(200);
    expect(reply.headers.get('content-type')).to.match(/^application\/json/);
    const body = reply.body;
    expect(body).to.include({ status: 'completed' });
    expect(body.id).to.match(/^[0-9a-f-]{36}$/);
    expect(body.model).to.have.keys('name', 'version');
    expect(body.model).to.include({ name: 'digits' });
    const prediction = body.prediction as { label: string; confidence: number; top: { label: string; confidence: number }[] };
    expect(prediction.label).to.equal('7');
    expect(prediction.confidence).to.be.greaterThan(0.9);
    // TOP_K unset: every class of a model with up to 10.
    expect(prediction.top).to.have.length(10);
    expect(prediction.top[0]!.label).to.equal('7');
    expect(body.timings).to.have.all.keys('queueMs', 'preprocessMs', 'inferenceMs', 'totalMs');
    expect(body.worker).to.equal(worker.id);
  });

  for (const format of ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif'] as const) {
    it(`reads a ${format.toUpperCase()} made by sharp${format === 'gif' ? ' (first frame of two)' : format === 'tiff' ? ' (first page of two)' : ''} and gives its label`, async () => {
      const reply = await predict(gateway.url, everyFormat[format]);
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
      expect(reply.body.input).to.include({ format, width: 84, height: 84 });
      expect((reply.body.prediction as { label: string }).label).to.equal(everyFormatLabel);
    });
  }

  it('answers 202 with a job id and Location at once for Prefer: respond-async, and the job can be polled', async () => {
    const reply = await predict(gateway.url, seven, { Prefer: 'respond-async' });
    expect(reply.status).to.equal(202);
    expect(reply.headers.get('preference-applied')).to.equal('respond-async');
    const id = reply.body.id as string;
    expect(reply.headers.get('location')).to.equal(`/v1/jobs/${id}`);
    expect(reply.body.status).to.equal('queued');
    const done = await pollUntilDone(gateway.url, id);
    expect(done.status).to.equal(200);
    expect(done.body).to.include({ id, status: 'completed' });
    expect((done.body.prediction as { label: string }).label).to.equal('7');
  });

  it('also serves the /predict alias and a raw image body', async () => {
    const alias = await request(`${gateway.url}/predict`, {
      method: 'POST',
      body: seven,
      headers: { 'content-type': 'image/png' },
    });
    expect(alias.status).to.equal(200);
    expect((alias.body.prediction as { label: string }).label).to.equal('7');
  });

  it('answers 202 when the synchronous wait runs out, and the job still completes', async () => {
    // With the only worker frozen no wait can be met, however short or fast the machine (a wait of
    // 1 ms alone was met 7 times in 20); the job must not be dropped, and completes once it thaws.
    worker.child.kill('SIGSTOP');
    let reply;
    try {
      reply = await predict(gateway.url, seven, { Prefer: 'wait=0.2' });
    } finally {
      worker.child.kill('SIGCONT');
    }
    expect(reply.status).to.equal(202);
    expect(reply.headers.get('preference-applied')).to.equal('wait=0.2');
    const done = await pollUntilDone(gateway.url, reply.body.id as string);
    expect(done.body.status).to.equal('completed');
  });

  it('carries the request id from X-Request-Id into the job and the worker logs', async () => {
    const requestId = `test-${Date.now()}`;
    const reply = await predict(gateway.url, seven, { 'X-Request-Id': requestId });
    expect(reply.headers.get('x-request-id')).to.equal(requestId);
    expect(reply.body.requestId).to.equal(requestId);
    const access = await gateway.waitFor((r) => r.requestId === requestId && r.msg === 'request');
    expect(access).to.include({ method: 'POST', route: '/v1/predict', status: 200 });
    expect(access.durationMs).to.be.a('number');
    const line = await worker.waitFor((r) => r.requestId === requestId && r.msg === 'prediction');
    expect(line.jobId).to.equal(reply.body.id);
  });

  it('replaces a malformed X-Request-Id with a generated one', async () => {
    const reply = await predict(gateway.url, seven, { 'X-Request-Id': 'bad id with spaces' });
    expect(reply.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
  });

  it('publishes each completed prediction to the event stream with input descriptors and the embedding', async () => {
    const reply = await predict(gateway.url, seven);
    const id = reply.body.id as string;
    const entries = await redis.xrange(redisKeys(prefix).predictions, '-', '+');
    const event = entries.map(([, fields]) => PredictionEvent.parse(JSON.parse(fields[1]!))).find((e) => e.jobId === id);
    expect(event, 'event for the job').to.not.equal(undefined);
    expect(event!.model.name).to.equal('digits');
    expect(event!.prediction.label).to.equal('7');
    expect(event!.input).to.include({ format: 'png', width: 28, height: 28 });
    expect(event!.input.brightness).to.be.within(0, 1);
    expect(event!.embedding).to.have.length(64);
  });

  it('reports a job as 404 once its result has expired, leaving nothing behind in Redis', async () => {
    const reply = await predict(gateway.url, seven);
    const id = reply.body.id as string;
    const k = redisKeys(prefix);
    expect(await redis.exists(k.input(id)), 'input deleted on completion').to.equal(0);
    expect(await redis.exists(k.result(id))).to.equal(1);
    // RESULT_TTL_SECONDS=3: the result expires on its own, and the job is then unknown.
    await until('the result to expire', async () => (await request(`${gateway.url}/v1/jobs/${id}`)).status === 404);
    expect(await redis.exists(k.result(id))).to.equal(0);
    // BullMQ keeps the last completed jobs of a queue for the dashboard, bounded in number and age
    // (INFERENCE_JOB_OPTIONS.removeOnComplete): its record, without the image, is all that may stay.
    const bullRecord = `${prefix}:inference:${id}`;
    const left = (await keysUnder(redis, prefix)).filter((key) => key.includes(id) && key !== bullRecord);
    expect(left).to.deep.equal([]);
    expect(INFERENCE_JOB_OPTIONS.removeOnComplete.count).to.be.at.most(100);
  });

  it('takes feedback only with a label the model has, once per job', async () => {
    const done = await predict(gateway.url, seven);
    const send = (label: string) =>
      request(`${gateway.url}/v1/feedback`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ jobId: done.body.id, label }),
      });
    const forged = await send('banana');
    expect(forged.status, JSON.stringify(forged.body)).to.equal(422);
    expect(forged.body).to.include({ type: '/problems/unknown-label' });
    expect(forged.body.detail).to.match(/has no label "banana"/);
    expect(forged.body.labels).to.deep.equal(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    expect((await send('7')).status).to.equal(202);
    expect((await send('7')).status).to.equal(409);
  });

  it('answers 404 problem details for unknown jobs', async () => {
    const reply = await request(`${gateway.url}/v1/jobs/00000000-0000-4000-8000-000000000000`);
    expect(reply.status).to.equal(404);
    expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
    expect(reply.body).to.include({ status: 404, type: '/problems/not-found' });
    expect(reply.body.requestId).to.be.a('string');
  });

  it('reports health, readiness with the live worker, and metrics', async () => {
    expect((await request(`${gateway.url}/health`)).status).to.equal(200);
    const ready = await request<{ status: string; workers: { id: string; model: { name: string } }[] }>(`${gateway.url}/ready`);
    expect(ready.status).to.equal(200);
    expect(ready.body.workers.map((w) => w.id)).to.include(worker.id);
    const metrics = await fetch(`${gateway.url}/metrics`).then((r) => r.text());
    expect(metrics).to.match(/conveyor_http_request_duration_seconds_bucket\{.*route="\/v1\/predict"/);
    expect(metrics).to.match(/conveyor_predict_outcomes_total\{outcome="completed"\} [1-9]/);
  });

  it('logs the worker line for each job once', async () => {
    // Its own jobs, so that it is not vacuous when run alone (it used to count whatever the tests
    // before it had left in the log, possibly nothing).
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await predict(gateway.url, seven)).body.id as string);
    // Lines are read in the order the worker wrote them: once a later job's line is in, every line
    // about the three is too, a duplicate included.
    const marker = (await predict(gateway.url, seven)).body.id as string;
    await worker.waitFor((r) => r.jobId === marker && r.msg === 'prediction');
    for (const id of ids)
      expect(
        recordsWith(worker, 'jobId', id).filter((r) => r.msg === 'prediction'),
        id,
      ).to.have.length(1);
    // And over the whole suite, when run with the tests before it.
    const all = worker.records.filter((r) => r.msg === 'prediction').map((r) => r.jobId);
    expect(new Set(all).size).to.equal(all.length);
    expect(recordsWith(worker, 'level', 'error')).to.deep.equal([]);
  });
});
