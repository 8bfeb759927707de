import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import type { CallbackState } from '@conveyor/shared/contract/api.contract';
import { ROOT } from '../../harness/service-process.js';
import { startCallbackReceiver, type CallbackReceiver } from '../support/callback-receiver.js';
import { pool, request, uploadForm, type Reply } from '../support/http.js';
import { randomPrefix, testRedis } from '../support/redis.js';
import { dumpLogsOnFailure, spawnGateway, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * Callbacks against hostile and dead receivers: a receiver's answer costs the gateway a few KB
 * whatever it sends, one dead receiver does not hold another's deliveries, one client cannot
 * queue callbacks without bound, a delivery waiting for its job costs Redis nothing, and the
 * Callback-Url's literal address is judged at the request.
 */
const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
const MB = 1024 * 1024;

type Accepted = { id: string; callback: CallbackState };

async function submit(gateway: Gateway, callbackUrl: string, headers: Record<string, string> = {}): Promise<Reply<Accepted>> {
  return request<Accepted>(`${gateway.url}/v1/predict`, {
    method: 'POST',
    headers: { prefer: 'respond-async', 'callback-url': callbackUrl, ...headers },
    body: uploadForm(seven, 'seven.png'),
  });
}

async function accepted(gateway: Gateway, callbackUrl: string): Promise<string> {
  const reply = await submit(gateway, callbackUrl);
  expect(reply.status, JSON.stringify(reply.body)).to.equal(202);
  return reply.body.id;
}

const callbackOf = async (gateway: Gateway, id: string) =>
  (await request<{ callback?: CallbackState }>(`${gateway.url}/v1/jobs/${id}`)).body.callback;

const settled = (gateway: Gateway, id: string) =>
  until(
    `the callback of ${id} settled`,
    async () => {
      const s = await callbackOf(gateway, id);
      return s && s.state !== 'pending' ? s : undefined;
    },
    90_000,
  );

/** The resident set of a process, from /proc (bytes). */
function rss(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number(/(\d+)/.exec(line ?? '')?.[1] ?? NaN) * 1024;
}

/** The largest RSS of `pid` seen while `work` runs (sampled every 20 ms). */
async function peakRssDuring<T>(pid: number, work: () => Promise<T>): Promise<{ peak: number; value: T }> {
  let peak = rss(pid);
  const sampler = setInterval(() => (peak = Math.max(peak, rss(pid))), 20);
  try {
    const value = await work();
    return { peak: Math.max(peak, rss(pid)), value };
  } finally {
    clearInterval(sampler);
  }
}

describe('callback receivers cannot cost the gateway their answer', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('cb-hostile');
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const HUGE = 256 * MB;
  let gateway: Awaited<ReturnType<typeof spawnGateway>> | undefined;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let receiver: CallbackReceiver;

  before(async () => {
    [receiver, worker] = await Promise.all([startCallbackReceiver({ hugeBytes: HUGE }), startWorker(prefix)]);
  });
  // A gateway process per answer (its RSS is the measure): memory a process's allocator kept from an
  // earlier answer would hide the next.
  beforeEach(async () => {
    gateway = await spawnGateway(prefix, {
      CALLBACK_SECRET: secret,
      URL_ALLOW_CIDRS: '127.0.0.1/32',
      CALLBACK_BACKOFF_MS: '200',
    });
    // Warm up the delivery path so the baseline includes it.
    await settled(gateway, await accepted(gateway, receiver.url('/ok')));
  });
  afterEach(async function () {
    dumpLogsOnFailure(this, gateway, worker);
    await stopAll(gateway);
  });
  after(async () => {
    await stopAll(worker);
    await receiver.close();
  });

  for (const [route, what] of [
    ['/huge', `a ${HUGE / MB} MB answer`],
    ['/bomb', `a gzip answer decoding to ${HUGE / MB} MB`],
  ] as const) {
    it(`delivers on the status of ${what}, once, without holding it in memory`, async () => {
      const gw = gateway!;
      const pid = gw.child.pid!;
      const before = rss(pid);
      const { peak, value: state } = await peakRssDuring(pid, async () => settled(gw, await accepted(gw, receiver.url(route))));
      expect(state).to.include({ state: 'delivered', attempts: 1, lastStatus: 200 });
      // No retry for a 2xx, whatever came after its status line.
      expect(receiver.deliveries.filter((d) => d.path === route)).to.have.length(1);
      // The answer's size is not the gateway's: its RSS grew by far less than the body (socket
      // buffers and the delivery itself, not the body).
      expect(peak - before, `RSS ${before / MB} → ${peak / MB} MB`).to.be.below(HUGE / 4);
    });
  }
});

describe('one callback receiver cannot delay another', function () {
  this.timeout(240_000);
  const prefix = randomPrefix('cb-hol');
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const PER_RECEIVER = 2;
  const PER_CLIENT = 12;
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let dead: CallbackReceiver;
  let good: CallbackReceiver;

  before(async () => {
    [dead, good] = await Promise.all([startCallbackReceiver(), startCallbackReceiver()]);
    [gateway, worker] = await Promise.all([
      startGateway(prefix, {
        CALLBACK_SECRET: secret,
        URL_ALLOW_CIDRS: '127.0.0.1/32',
        CALLBACK_CONCURRENCY: '4',
        CALLBACK_RECEIVER_CONCURRENCY: String(PER_RECEIVER),
        CALLBACK_MAX_PENDING_PER_CLIENT: String(PER_CLIENT),
        // Long enough that no try at the dead receiver ends during the test on a loaded machine.
        CALLBACK_TIMEOUT_MS: '60000',
      }),
      startWorker(prefix),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    await Promise.all([dead.close(), good.close()]);
  });

  it('delivers to a good receiver while a dead one holds its deliveries, and caps the dead one', async () => {
    const stuck: string[] = [];
    for (let i = 0; i < 10; i++) stuck.push(await accepted(gateway, dead.url('/never')));
    // The dead receiver holds deliveries open now (as many as it is allowed).
    await until('deliveries stuck at the dead receiver', () => Promise.resolve(dead.open() >= PER_RECEIVER), 60_000);
    const id = await accepted(gateway, good.url('/ok'));
    await until('the good callback', () => Promise.resolve(good.deliveries.some((d) => d.body.includes(id))), 90_000);
    // It did not wait for a slot the dead receiver held: none of those tries has ended yet.
    expect(dead.closed(), 'tries at the dead receiver ended before the good callback arrived').to.equal(0);
    expect(dead.peakOpen()).to.be.at.most(PER_RECEIVER);
    for (const stuckId of stuck) expect((await callbackOf(gateway, stuckId))?.state).to.equal('pending');
  });

  it('refuses a client more pending callbacks than its share with a 429 problem', async () => {
    // Ten deliveries to the dead receiver are pending; the good one was delivered.
    const replies: Reply<Accepted>[] = [];
    for (let i = 0; i < PER_CLIENT - 10 + 1; i++) replies.push(await submit(gateway, dead.url('/never')));
    expect(replies.slice(0, -1).map((r) => r.status)).to.deep.equal(Array(PER_CLIENT - 10).fill(202));
    const refused = replies.at(-1)!;
    expect(refused.status, JSON.stringify(refused.body)).to.equal(429);
    expect(refused.headers.get('content-type')).to.match(/application\/problem\+json/);
    expect(refused.body).to.include({ type: '/problems/rate-limited' });
    expect(refused.body).to.have.property('requestId');
    // Without a callback the same client is served.
    const plain = await request(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { prefer: 'respond-async' },
      body: uploadForm(seven, 'seven.png'),
    });
    expect(plain.status).to.equal(202);
  });
});

describe('a delivery waiting for its job costs Redis nothing', function () {
  this.timeout(240_000);
  const prefix = randomPrefix('cb-wait');
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const N = 100;
  const WINDOW_MS = 3_000;
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
  let receiver: CallbackReceiver;
  let redis: Redis;

  before(async () => {
    redis = testRedis();
    receiver = await startCallbackReceiver();
    // Only 127.0.0.2 is allowed: `localhost` (127.0.0.1) is a name refused at delivery.
    gateway = await startGateway(prefix, { CALLBACK_SECRET: secret, URL_ALLOW_CIDRS: '127.0.0.2/32' });
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    await receiver.close();
    redis.disconnect();
  });

  async function commandsPerSecond(): Promise<number> {
    const count = async () => Number(/total_commands_processed:(\d+)/.exec(await redis.info('stats'))?.[1]);
    const start = await count();
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, WINDOW_MS)); // a measuring window, not a wait for a condition
    return ((await count()) - start) / ((Date.now() - t0) / 1000);
  }

  it(`holds ${N} waiting deliveries at the idle command rate, then delivers each exactly once`, async () => {
    const idle = await commandsPerSecond();
    const ids: string[] = [];
    await pool(Array.from({ length: N }), 8, async () => {
      ids.push(await accepted(gateway, receiver.url('/ok', '127.0.0.2')));
    });
    const waiting = await commandsPerSecond();
    // Each waiting delivery may cost a command every ten seconds at most (the old poll: ~20/s each).
    expect(waiting - idle, `idle ${idle.toFixed(0)}/s, with ${N} waiting ${waiting.toFixed(0)}/s`).to.be.below(N / 10);

    worker = await startWorker(prefix);
    for (const id of ids) {
      const state = await settled(gateway, id);
      expect(state).to.include({ state: 'delivered', attempts: 1 });
    }
    for (const id of ids)
      expect(
        receiver.deliveries.filter((d) => d.body.includes(id)),
        id,
      ).to.have.length(1);
  });

  it('accepts a name and refuses it at delivery when it resolves to a refused address; the result stays', async () => {
    const id = await accepted(gateway, `http://localhost:${receiver.port}/ok`);
    const state = await settled(gateway, id);
    expect(state.state).to.equal('failed');
    expect(state.lastError).to.match(/private, loopback or link-local/);
    expect(receiver.deliveries.filter((d) => d.body.includes(id))).to.have.length(0);
    const job = await request(`${gateway.url}/v1/jobs/${id}`);
    expect(job.body).to.include({ status: 'completed' });
  });

  it('refuses two Callback-Url headers with a 400 problem', async () => {
    const form = new Request('http://form.invalid/', { method: 'POST', body: uploadForm(seven, 'seven.png') });
    const body = Buffer.from(await form.arrayBuffer());
    const url = new URL(`${gateway.url}/v1/predict`);
    const reply = await new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
      const req = httpRequest(
        url,
        {
          method: 'POST',
          headers: {
            prefer: 'respond-async',
            'content-type': form.headers.get('content-type')!,
            'content-length': String(body.length),
            // Two header lines: Node would otherwise join them into one "a, b" value.
            'callback-url': [receiver.url('/ok', '127.0.0.2'), receiver.url('/other', '127.0.0.2')],
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown> }),
          );
        },
      );
      req.on('error', reject);
      req.end(body);
    });
    expect(reply.status, JSON.stringify(reply.body)).to.equal(400);
    expect(reply.body).to.include({ type: '/problems/invalid-request' });
    expect(reply.body.detail).to.match(/Callback-Url/);
  });

  for (const literal of [
    'http://127.0.0.1:9/hook',
    'http://[::1]:9/hook',
    'http://169.254.169.254/latest/meta-data',
    'http://10.1.2.3/hook',
    'http://[::ffff:127.0.0.1]/hook',
    'http://0.0.0.0:9/hook',
    'http://[fd00::1]/hook',
  ]) {
    it(`refuses the literal ${literal} at the request with a 422 problem`, async () => {
      const reply = await submit(gateway, literal);
      expect(reply.status, JSON.stringify(reply.body)).to.equal(422);
      expect(reply.body).to.include({ type: '/problems/url-not-allowed' });
      expect(reply.body).to.have.property('requestId');
    });
  }
});

describe('a lost result notification is made up by the sweep', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('cb-sweep');
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const env = { CALLBACK_SECRET: secret, URL_ALLOW_CIDRS: '127.0.0.1/32', CALLBACK_SWEEP_SECONDS: '1' };
  let first: Gateway;
  let second: Gateway | undefined;
  let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
  let receiver: CallbackReceiver;

  before(async () => {
    receiver = await startCallbackReceiver();
    first = await startGateway(prefix, env);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, first, second, worker);
  });
  after(async () => {
    await stopAll(second, worker);
    await receiver.close();
  });

  it('delivers a callback whose accepting gateway died before the result, once', async () => {
    // Accepted with no worker up; the gateway whose channel the reply will go to is killed.
    const id = await accepted(first, receiver.url('/ok'));
    await first.stop('SIGKILL');
    second = await startGateway(prefix, env);
    worker = await startWorker(prefix);
    const state = await settled(second, id);
    expect(state).to.include({ state: 'delivered', attempts: 1 });
    expect(receiver.deliveries.filter((d) => d.body.includes(id))).to.have.length(1);
  });
});
