import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import path from 'node:path';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import sharp from 'sharp';
import { loadConfig } from '@conveyor/shared/config';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ROOT } from '../../harness/service-process.js';
import { ApiKeyStore } from '../../services/gateway/src/access/api-keys.js';
import { GatewayConfig } from '../../services/gateway/src/config.js';
import { startGateway, type GatewayService } from '../../services/gateway/src/gateway.service.js';
import { WorkerConfig } from '../../services/inference-worker/src/config.js';
import { startWorker, type WorkerService } from '../../services/inference-worker/src/worker.service.js';
import { startCallbackReceiver, type CallbackReceiver } from '../support/callback-receiver.js';
import { request, uploadForm, type Reply } from '../support/http.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { until } from '../support/wait.js';

type LogRecord = Record<string, unknown>;

/**
 * Idempotent submits (`Idempotency-Key`) end to end: two gateways and a worker started in this
 * process on the test Redis (a third gateway requires API keys), a real callback receiver, and a
 * local image server that counts its fetches and can hold one open. What is counted is what a
 * duplicate would leave behind: BullMQ's `added` events (jobs made), the predictions stream (one
 * entry per inference) and the receiver's deliveries.
 */
describe('idempotent submits (Idempotency-Key)', function () {
  this.timeout(120_000);
  const prefix = randomPrefix('idem');
  const keys = redisKeys(prefix);
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const records: LogRecord[] = [];
  // Debug records of every service here, to wait for "the replay is waiting" rather than for a time.
  const log = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line) as LogRecord) });
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
  const three = readFileSync(path.join(ROOT, 'docs/examples/three-scan.jpg'));
  let worker: WorkerService;
  let a: GatewayService;
  let b: GatewayService;
  let keyed: GatewayService;
  let redis: Redis;
  let queue: Queue;
  let receiver: CallbackReceiver;
  let images: ImageServer;
  const at = (gateway: GatewayService) => `http://127.0.0.1:${gateway.port}`;

  before(async () => {
    redis = testRedis();
    queue = new Queue('inference', { connection: { url: testRedisUrl() }, prefix });
    receiver = await startCallbackReceiver();
    images = await startImageServer(seven);
    const env = { REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix };
    worker = await startWorker(
      loadConfig(WorkerConfig, { ...env, HEARTBEAT_INTERVAL_MS: '500', SHUTDOWN_BUDGET_MS: '2000' }),
      log,
    );
    const gatewayEnv = {
      ...env,
      PORT: '0',
      HOST: '127.0.0.1',
      SHUTDOWN_BUDGET_MS: '2000',
      CALLBACK_SECRET: secret,
      URL_ALLOW_CIDRS: '127.0.0.1/32',
      // The held fetch below must outlast a loaded machine's slowest request, not a real server's.
      URL_TOTAL_TIMEOUT_MS: '60000',
    };
    [a, b, keyed] = await Promise.all([
      startGateway(loadConfig(GatewayConfig, gatewayEnv), log),
      startGateway(loadConfig(GatewayConfig, gatewayEnv), log),
      startGateway(loadConfig(GatewayConfig, { ...gatewayEnv, API_KEYS_REQUIRED: 'true' }), log),
    ]);
    await worker.ready;
    for (const gateway of [a, b, keyed]) {
      await until('the gateway sees a warm digits worker', async () => {
        const ready = await fetch(`${at(gateway)}/v2/models/digits/ready`);
        return ready.status === 200 || undefined;
      });
    }
  });

  after(async () => {
    // Whatever `before` got to start (it may have failed half-way).
    const services = [a, b, keyed, worker] as ({ stop(): Promise<unknown> } | undefined)[];
    await Promise.allSettled(services.filter((s) => s !== undefined).map((s) => s.stop()));
    await (queue as Queue | undefined)?.resume().catch(() => undefined);
    await (queue as Queue | undefined)?.obliterate({ force: true }).catch(() => undefined);
    const closing = [queue, receiver, images] as ({ close(): Promise<unknown> } | undefined)[];
    await Promise.allSettled(closing.filter((c) => c !== undefined).map((c) => c.close()));
    await (redis as Redis | undefined)?.quit();
    // A worker restricts sharp's decoders process-wide (shared/src/model/decoders.ts); later suites in
    // this process render SVG (see in-process.e2e.test.ts).
    sharp.unblock({ operation: ['VipsForeignLoad'] });
  });

  /** A fresh key, as a client writes it: an RFC 8941 string. */
  const newKey = () => `"${randomUUID()}"`;

  function submit(
    base: string,
    key: string,
    options: { headers?: Record<string, string>; body?: FormData | string; json?: boolean } = {},
  ): Promise<Reply> {
    return request(`${base}/v1/predict`, {
      method: 'POST',
      headers: { 'idempotency-key': key, ...(options.json ? { 'content-type': 'application/json' } : {}), ...options.headers },
      body: options.body ?? uploadForm(seven, 'seven.png'),
    });
  }

  /** What a client does with a 409: asks again after Retry-After. Returns the answer and how many 409s it took. */
  async function submitUntilAccepted(send: () => Promise<Reply>): Promise<{ reply: Reply; conflicts: number }> {
    for (let conflicts = 0; ; conflicts++) {
      const reply = await send();
      if (reply.status !== 409) return { reply, conflicts };
      expect(reply.body).to.include({ type: '/problems/idempotency-key-in-use' });
      const seconds = Number(reply.headers.get('retry-after'));
      expect(seconds).to.be.greaterThan(0);
      await new Promise((r) => setTimeout(r, seconds * 1000));
    }
  }

  /** Jobs made so far: BullMQ's `added` events on the digits queue (the stream is not trimmed this early). */
  async function jobsAdded(): Promise<string[]> {
    const events = await redis.xrange(`${prefix}:inference:events`, '-', '+');
    return events.filter(([, fields]) => fields[1] === 'added').map(([, fields]) => fields[fields.indexOf('jobId') + 1]!);
  }
  const inferences = () => redis.xlen(keys.predictions);

  const finished = (base: string, id: string) =>
    until(`job ${id} to finish`, async () => {
      const reply = await request(`${base}/v1/jobs/${id}`);
      return reply.body.status === 'completed' ? reply : undefined;
    });

  it('makes exactly one job, one inference and one callback of ten concurrent retries', async () => {
    const key = newKey();
    const hook = receiver.url(`/ok?run=${randomUUID()}`);
    const [addedBefore, inferredBefore, deliveredBefore] = [
      (await jobsAdded()).length,
      await inferences(),
      receiver.deliveries.length,
    ];
    const send = () => submit(at(a), key, { headers: { prefer: 'respond-async', 'callback-url': hook } });
    const answers = await Promise.all(Array.from({ length: 10 }, () => submitUntilAccepted(send)));

    const ids = new Set(answers.map(({ reply }) => reply.body.id as string));
    expect(answers.map(({ reply }) => reply.status)).to.deep.equal(Array<number>(10).fill(202));
    expect(ids.size, JSON.stringify([...ids])).to.equal(1);
    const [id] = [...ids] as [string];
    for (const { reply } of answers) {
      expect(reply.headers.get('location')).to.equal(`/v1/jobs/${id}`);
      expect(reply.body).to.deep.include({ id, model: 'digits', status: 'queued' });
    }
    // One answer made the job; the nine others were retries told so.
    expect(answers.filter(({ reply }) => reply.headers.get('idempotent-replayed') === null)).to.have.length(1);
    console.log(`      (${answers.reduce((n, x) => n + x.conflicts, 0)} of the retries were asked to wait with a 409 first)`);

    await finished(at(a), id);
    const delivered = await until('the callback delivered', async () => {
      const job = await request<{ callback?: { state: string; attempts: number } }>(`${at(a)}/v1/jobs/${id}`);
      return job.body.callback?.state === 'delivered' ? job.body.callback : undefined;
    });
    expect(delivered.attempts).to.equal(1);
    expect(await jobsAdded()).to.have.length(addedBefore + 1);
    expect(await inferences()).to.equal(inferredBefore + 1);
    const deliveries = receiver.deliveries.slice(deliveredBefore);
    expect(deliveries).to.have.length(1);
    expect(deliveries[0]!.body).to.include(id);

    // Later retries: async, the same 202; waiting, the stored result; on another gateway too.
    const again = await submit(at(b), key, { headers: { prefer: 'respond-async', 'callback-url': hook } });
    expect(again.status).to.equal(202);
    expect(again.body).to.deep.include({ id });
    expect(again.body.callback).to.include({ state: 'delivered' });
    const waiting = await submit(at(a), key, { headers: { 'callback-url': hook } });
    expect(waiting.status, JSON.stringify(waiting.body)).to.equal(200);
    expect(waiting.body).to.deep.include({ id, status: 'completed' });
    expect((waiting.body.prediction as { label: string }).label).to.equal('7');
    expect(waiting.headers.get('idempotent-replayed')).to.equal('true');
    expect(await jobsAdded()).to.have.length(addedBefore + 1);
    expect(receiver.deliveries.slice(deliveredBefore)).to.have.length(1);
  });

  it('lets replays that wait for the job get its result, on its own gateway and on another', async () => {
    const key = newKey();
    const addedBefore = (await jobsAdded()).length;
    // Held in the queue until the replays are waiting, so that they wait rather than find a result.
    await queue.pause();
    try {
      const firstId = `first-${randomUUID()}`;
      const first = submit(at(a), key, { headers: { prefer: 'wait=30', 'x-request-id': firstId } });
      const queued = await until('the first request to queue its job', () =>
        Promise.resolve(records.find((r) => r.requestId === firstId && r.msg === 'job queued')),
      );
      const replayIds = [`replay-a-${randomUUID()}`, `replay-b-${randomUUID()}`];
      const replays = [
        submit(at(a), key, { headers: { prefer: 'wait=30', 'x-request-id': replayIds[0]! } }),
        submit(at(b), key, { headers: { prefer: 'wait=30', 'x-request-id': replayIds[1]! } }),
      ];
      await until('both replays to wait for the pending job', () =>
        Promise.resolve(
          replayIds.every((rid) =>
            records.some(
              (r) => r.requestId === rid && r.msg === 'replaying the job of an Idempotency-Key' && r.found === 'pending',
            ),
          ),
        ),
      );
      await queue.resume();
      const answers = await Promise.all([first, ...replays]);
      for (const reply of answers) {
        expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
        expect(reply.body).to.deep.include({ id: queued.jobId, status: 'completed' });
      }
      expect(answers.map((r) => r.headers.get('idempotent-replayed'))).to.deep.equal([null, 'true', 'true']);
      expect(await jobsAdded()).to.have.length(addedBefore + 1);
    } finally {
      await queue.resume();
    }
  });

  it('refuses the same key with a different request: 422 problem with the request id', async () => {
    const key = newKey();
    const made = await submit(at(a), key, { headers: { prefer: 'respond-async' } });
    expect(made.status).to.equal(202);
    const addedBefore = (await jobsAdded()).length;
    const differences: [string, () => Promise<Reply>][] = [
      [
        'another image',
        () => submit(at(a), key, { headers: { prefer: 'respond-async', 'x-request-id': 'diff-image' }, body: uploadForm(three) }),
      ],
      [
        'a Callback-Url',
        () =>
          submit(at(a), key, {
            headers: { prefer: 'respond-async', 'x-request-id': 'diff-callback', 'callback-url': receiver.url('/ok') },
          }),
      ],
      [
        'the URL of the same image',
        () =>
          submit(at(a), key, {
            headers: { prefer: 'respond-async', 'x-request-id': 'diff-url' },
            json: true,
            body: JSON.stringify({ url: images.url('/seven.png') }),
          }),
      ],
    ];
    const fetchesBefore = images.fetches();
    for (const [what, send] of differences) {
      const reply = await send();
      expect(reply.status, what).to.equal(422);
      expect(reply.headers.get('content-type'), what).to.match(/^application\/problem\+json/);
      expect(reply.body, what).to.include({ type: '/problems/idempotency-key-reused', status: 422 });
      expect(reply.body.requestId, what).to.equal(reply.headers.get('x-request-id'));
      expect(reply.body.requestId, what).to.match(/^diff-/);
    }
    expect(images.fetches(), 'a refused URL is not fetched').to.equal(fetchesBefore);
    expect(await jobsAdded()).to.have.length(addedBefore);
  });

  it('keeps keys apart per API key: the same key under another makes its own job', async () => {
    const store = new ApiKeyStore(redis, keys.apiKeys);
    const [one, two] = await Promise.all([store.create('idem-one', ['predict']), store.create('idem-two', ['predict'])]);
    const key = newKey();
    const as = (apiKey: string) => ({ headers: { prefer: 'respond-async', authorization: `Bearer ${apiKey}` } });
    const first = await submit(at(keyed), key, as(one.key));
    const other = await submit(at(keyed), key, as(two.key));
    const retry = await submit(at(keyed), key, as(one.key));
    expect([first.status, other.status, retry.status]).to.deep.equal([202, 202, 202]);
    expect(other.body.id).to.not.equal(first.body.id);
    expect(retry.body.id).to.equal(first.body.id);
    expect([first, other, retry].map((r) => r.headers.get('idempotent-replayed'))).to.deep.equal([null, null, 'true']);
    // Each key owns its own job: the other key cannot read it.
    const read = await request(`${at(keyed)}/v1/jobs/${first.body.id as string}`, {
      headers: { authorization: `Bearer ${two.key}` },
    });
    expect(read.status).to.equal(404);
  });

  it('leaves the key free when the first attempt fails before its job exists', async () => {
    const addedBefore = (await jobsAdded()).length;
    // An upload that is no image.
    const key = newKey();
    const garbage = await submit(at(a), key, { headers: { prefer: 'respond-async' }, body: uploadForm(randomBytes(2000)) });
    expect(garbage.status).to.be.within(400, 499);
    const retried = await submit(at(a), key, { headers: { prefer: 'respond-async' } });
    expect(retried.status, JSON.stringify(retried.body)).to.equal(202);
    expect(retried.headers.get('idempotent-replayed')).to.equal(null);

    // A URL that cannot be fetched: the key was claimed before the fetch, and given back after it failed.
    const urlKey = newKey();
    const missing = await submit(at(a), urlKey, {
      headers: { prefer: 'respond-async' },
      json: true,
      body: JSON.stringify({ url: images.url('/missing.png') }),
    });
    expect(missing.status).to.equal(422);
    expect(missing.body).to.include({ type: '/problems/url-fetch-failed' });
    const upload = await submit(at(a), urlKey, { headers: { prefer: 'respond-async' } });
    expect(upload.status, JSON.stringify(upload.body)).to.equal(202);
    expect(await jobsAdded()).to.have.length(addedBefore + 2);
  });

  it('answers a retry that comes while the first is still fetching its URL with 409 and Retry-After, and fetches once', async () => {
    const key = newKey();
    const body = JSON.stringify({ url: images.url('/held.png') });
    const fetchesBefore = images.fetches();
    const first = submit(at(a), key, { headers: { prefer: 'respond-async' }, json: true, body });
    await until('the first request to fetch its URL', () => Promise.resolve(images.held() === 1));
    const early = await submit(at(b), key, { headers: { prefer: 'respond-async' }, json: true, body });
    expect(early.status).to.equal(409);
    expect(early.body).to.include({ type: '/problems/idempotency-key-in-use' });
    expect(early.headers.get('retry-after')).to.equal('1');
    images.release();
    const made = await first;
    expect(made.status, JSON.stringify(made.body)).to.equal(202);
    const later = await submit(at(b), key, { headers: { prefer: 'respond-async' }, json: true, body });
    expect(later.status).to.equal(202);
    expect(later.body.id).to.equal(made.body.id);
    expect(images.fetches()).to.equal(fetchesBefore + 1);
  });

  it('takes a bare key, as most clients send one, for the same key quoted', async () => {
    const id = randomUUID();
    const bare = await submit(at(a), id, { headers: { prefer: 'respond-async' } });
    expect(bare.status, JSON.stringify(bare.body)).to.equal(202);
    const quoted = await submit(at(a), `"${id}"`, { headers: { prefer: 'respond-async' } });
    expect(quoted.status).to.equal(202);
    expect(quoted.body.id).to.equal(bare.body.id);
    expect(quoted.headers.get('idempotent-replayed')).to.equal('true');
  });

  it('refuses a malformed key with a 400 before reading the body', async () => {
    for (const bad of ['two words', 'a,list', '""', `"${'k'.repeat(256)}"`]) {
      const reply = await submit(at(a), bad);
      expect(reply.status, bad).to.equal(400);
      expect(reply.body, bad).to.include({ type: '/problems/invalid-request' });
      expect(reply.body.detail, bad).to.match(/Idempotency-Key/);
    }
  });
});

interface ImageServer {
  url(path: string): string;
  /** GETs of an image so far (`/seven.png` and `/held.png`). */
  fetches(): number;
  /** Requests for `/held.png` waiting for release(). */
  held(): number;
  release(): void;
  close(): Promise<void>;
}

/** Serves the image at `/seven.png`, and at `/held.png` only once release() is called; counts fetches. */
async function startImageServer(image: Buffer): Promise<ImageServer> {
  let fetches = 0;
  let waiting: (() => void)[] = [];
  const server: Server = createServer((req, res) => {
    const send = () => res.writeHead(200, { 'content-type': 'image/png', 'content-length': image.length }).end(image);
    if (req.url === '/seven.png') {
      fetches++;
      send();
    } else if (req.url === '/held.png') {
      fetches++;
      waiting.push(send);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: (p) => `http://127.0.0.1:${port}${p}`,
    fetches: () => fetches,
    held: () => waiting.length,
    release: () => {
      for (const send of waiting) send();
      waiting = [];
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
