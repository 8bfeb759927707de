import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import { startJaeger, type JaegerSpan, type LocalJaeger } from '../../harness/jaeger.js';
import { ROOT } from '../../harness/service-process.js';
import { startCallbackReceiver, type CallbackReceiver } from '../support/callback-receiver.js';
import { request, uploadForm } from '../support/http.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, recordsWith, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * One trace per request across the queue, received by a real OTLP receiver (Jaeger v2, built from
 * the Go module proxy by scripts/jaeger.sh): the gateway (in this process) exports OTLP/HTTP JSON,
 * the worker (a process) OTLP/HTTP protobuf, and the spans are read back from Jaeger's query API.
 */
describe('tracing: one trace per request, across the queue (OpenTelemetry, a real Jaeger)', function () {
  // The first run on a machine builds Jaeger (minutes); later runs start it in a second.
  this.timeout(900_000);
  const prefix = randomPrefix('tracing');
  const untracedPrefix = randomPrefix('untraced');
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
  let jaeger: LocalJaeger;
  let receiver: CallbackReceiver;
  let gateway: Gateway;
  let untraced: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;

  before(async () => {
    jaeger = await startJaeger();
    receiver = await startCallbackReceiver();
    const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: jaeger.otlpEndpoint, OTEL_BSP_SCHEDULE_DELAY: '100' };
    [gateway, untraced, worker] = await Promise.all([
      startGateway(prefix, {
        ...otel,
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        CALLBACK_SECRET: secret,
        URL_ALLOW_CIDRS: '127.0.0.1/32',
        CALLBACK_BACKOFF_MS: '200',
      }),
      // Tracing off, as by default, on a deployment of its own (no worker: its jobs wait, readable).
      startGateway(untracedPrefix, {}, 'untraced-gateway'),
      startWorker(prefix, { ...otel, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' }),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, untraced, worker);
  });
  after(async () => {
    await stopAll(gateway, untraced, worker);
    await receiver.close();
    await jaeger.stop();
  });

  const traceId = () => randomBytes(16).toString('hex');
  const spanId = () => randomBytes(8).toString('hex');
  const named = (spans: readonly JaegerSpan[], name: string) => {
    const found = spans.filter((s) => s.operationName === name);
    expect(found, `spans named ${name}: ${spans.map((s) => s.operationName).join(', ')}`).to.have.length.greaterThan(0);
    return found;
  };
  const one = (spans: readonly JaegerSpan[], name: string) => {
    const found = named(spans, name);
    expect(found, name).to.have.length(1);
    return found[0]!;
  };
  const parentOf = (span: JaegerSpan) => span.references.find((r) => r.refType === 'CHILD_OF')?.spanID;
  const tag = (span: JaegerSpan, key: string) => span.tags.find((t) => t.key === key)?.value;
  /** Waits until Jaeger holds spans named `names` for the trace (exports are batched, every 100 ms here). */
  const traceWith = (id: string, names: readonly string[]) =>
    until(`trace ${id} with ${names.join(', ')}`, async () => {
      const spans = await jaeger.trace(id);
      return names.every((n) => spans.some((s) => s.operationName === n)) ? spans : undefined;
    });

  it("nests a synchronous request's spans, from the caller's traceparent through the worker, in one trace", async () => {
    const trace = traceId();
    const callerSpan = spanId();
    const reply = await request<{ id: string; model: { version: string } }>(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { traceparent: `00-${trace}-${callerSpan}-01` },
      body: uploadForm(seven, 'seven.png'),
    });
    expect(reply.status).to.equal(200);
    const jobId = reply.body.id;
    const spans = await traceWith(trace, [
      'POST /v1/predict',
      'admission',
      'send inference',
      'queue wait',
      'process inference',
      'take input',
      'preprocess',
      'inference',
      'commit and reply',
    ]);
    expect(new Set(spans.map((s) => s.traceID))).to.deep.equal(new Set([trace]));

    const server = one(spans, 'POST /v1/predict');
    const admission = one(spans, 'admission');
    const send = one(spans, 'send inference');
    const wait = one(spans, 'queue wait');
    const processed = one(spans, 'process inference');
    expect(parentOf(server), "the server span is the caller's child").to.equal(callerSpan);
    expect(parentOf(admission)).to.equal(server.spanID);
    expect(parentOf(send)).to.equal(server.spanID);
    expect(parentOf(wait)).to.equal(send.spanID);
    expect(parentOf(processed), "the worker's span is the enqueue span's child").to.equal(send.spanID);
    for (const step of ['take input', 'preprocess', 'inference', 'commit and reply']) {
      const span = one(spans, step);
      expect(parentOf(span), step).to.equal(processed.spanID);
      // Within the attempt (microseconds; the steps share the attempt's clock: only Jaeger's
      // rounding of start and duration to whole microseconds is allowed for).
      const slack = 2;
      expect(span.startTime, `${step} starts within its attempt`).to.be.at.least(processed.startTime - slack);
      expect(span.startTime + span.duration, `${step} ends within its attempt`).to.be.at.most(
        processed.startTime + processed.duration + slack,
      );
    }
    expect(wait.startTime + wait.duration, 'the wait ends before the attempt starts').to.be.at.most(processed.startTime + 1000);

    expect(server.service).to.equal('conveyor-gateway');
    expect(send.service).to.equal('conveyor-gateway');
    expect(processed.service).to.equal('conveyor-inference-worker');
    expect(tag(server, 'http.response.status_code')).to.equal(200);
    expect(tag(server, 'conveyor.job.id')).to.equal(jobId);
    expect(tag(send, 'messaging.message.id')).to.equal(jobId);
    expect(tag(processed, 'conveyor.job.id')).to.equal(jobId);
    expect(tag(processed, 'conveyor.model')).to.equal('digits');
    expect(tag(processed, 'conveyor.model.version')).to.equal(reply.body.model.version);
    expect(tag(processed, 'conveyor.attempt')).to.equal(1);
    expect(tag(processed, 'conveyor.outcome')).to.equal('completed');
    expect(tag(processed, 'conveyor.input.bytes')).to.equal(seven.length);
    expect(tag(one(spans, 'inference'), 'conveyor.model.version')).to.equal(reply.body.model.version);

    // Log lines name the trace, on both sides of the queue.
    const gatewayLines = recordsWith(gateway, 'jobId', jobId);
    expect(gatewayLines.length).to.be.greaterThan(0);
    expect(gatewayLines.every((r) => r.trace_id === trace)).to.equal(true);
    const prediction = await until('the worker logs the prediction', () =>
      Promise.resolve(recordsWith(worker, 'jobId', jobId).find((r) => r.msg === 'prediction')),
    );
    expect(prediction.trace_id).to.equal(trace);
    expect(prediction.span_id).to.equal(processed.spanID);

    // The request histogram points at the trace (an OpenMetrics exemplar on its bucket).
    const metrics = await fetch(`${gateway.url}/metrics`);
    expect(metrics.headers.get('content-type')).to.match(/^application\/openmetrics-text/);
    const buckets = (await metrics.text())
      .split('\n')
      .filter((l) => l.startsWith('conveyor_http_request_duration_seconds_bucket{'));
    const exemplar = buckets.find((l) => l.includes('route="/v1/predict"') && l.includes(`# {trace_id="${trace}"}`));
    expect(exemplar, 'a /v1/predict bucket with this trace as its exemplar').to.be.a('string');
  });

  it('makes each callback try a span of the same trace, and tells the receiver the trace', async () => {
    // No traceparent: the gateway starts the trace. /flaky refuses the first try, takes the second.
    const reply = await request<{ id: string }>(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { prefer: 'respond-async', 'callback-url': receiver.url('/flaky') },
      body: uploadForm(seven, 'seven.png'),
    });
    expect(reply.status).to.equal(202);
    const deliveries = await until('two tries of the callback', () => {
      const mine = receiver.deliveries.filter((d) => d.body.includes(reply.body.id));
      return Promise.resolve(mine.length >= 2 ? mine : undefined);
    });
    const headers = deliveries.map((d) => String(d.headers.traceparent));
    const [, trace] = /^00-([0-9a-f]{32})-[0-9a-f]{16}-01$/.exec(headers[0]!) ?? [];
    expect(trace, `traceparent ${headers[0]}`).to.be.a('string');
    const spans = await traceWith(trace!, ['POST /v1/predict', 'send inference', 'process inference', 'callback POST']);
    const tries = await until('both tries exported', async () => {
      const all = (await jaeger.trace(trace!)).filter((s) => s.operationName === 'callback POST');
      return all.length === 2 ? all : undefined;
    });
    const send = one(spans, 'send inference');
    expect(tries.map((t) => tag(t, 'conveyor.callback.attempt')).sort()).to.deep.equal([1, 2]);
    for (const t of tries) expect(parentOf(t), 'each try is a child of the enqueue span').to.equal(send.spanID);
    const first = tries.find((t) => tag(t, 'conveyor.callback.attempt') === 1)!;
    const second = tries.find((t) => tag(t, 'conveyor.callback.attempt') === 2)!;
    expect(tag(first, 'http.response.status_code')).to.equal(500);
    expect(tag(first, 'otel.status_code')).to.equal('ERROR');
    expect(tag(second, 'http.response.status_code')).to.equal(204);
    // Each try's traceparent names its own span, so the receiver's spans nest under it.
    expect(headers.map((h) => h.split('-')[2]).sort()).to.deep.equal([first.spanID, second.spanID].sort());
  });

  it("honours a caller's decision not to sample: nothing is recorded on either side", async () => {
    const unsampled = traceId();
    const notSampled = await request(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { traceparent: `00-${unsampled}-${spanId()}-00` },
      body: uploadForm(seven, 'seven.png'),
    });
    expect(notSampled.status).to.equal(200);
    // A sampled request after it: once its spans from both services are in, the first's would be too.
    const sampled = traceId();
    await request(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { traceparent: `00-${sampled}-${spanId()}-01` },
      body: uploadForm(seven, 'seven.png'),
    });
    await traceWith(sampled, ['POST /v1/predict', 'commit and reply']);
    expect(await jaeger.trace(unsampled)).to.deep.equal([]);
  });

  it('is off without an endpoint: jobs carry no trace and log lines no trace ids', async () => {
    const reply = await request<{ id: string }>(`${untraced.url}/v1/predict`, {
      method: 'POST',
      headers: { prefer: 'respond-async', traceparent: `00-${traceId()}-${spanId()}-01` },
      body: uploadForm(seven, 'seven.png'),
    });
    expect(reply.status).to.equal(202);
    const queue = new Queue('inference', { connection: { url: testRedisUrl() }, prefix: untracedPrefix });
    try {
      const job = await queue.getJob(reply.body.id);
      expect(job, 'the job').to.not.equal(undefined);
      expect(job!.data).to.not.have.property('trace');
    } finally {
      await queue.close();
    }
    const lines = recordsWith(untraced, 'jobId', reply.body.id);
    expect(lines.length).to.be.greaterThan(0);
    expect(lines.some((r) => 'trace_id' in r)).to.equal(false);
    // Metrics stay in Prometheus' text format, without exemplars.
    const metrics = await fetch(`${untraced.url}/metrics`);
    expect(metrics.headers.get('content-type')).to.match(/^text\/plain; version=0\.0\.4/);
    expect(await metrics.text()).to.not.include('trace_id');
  });
});
