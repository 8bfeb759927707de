import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { Cluster } from 'ioredis';
import sharp from 'sharp';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { spawnService } from '../../harness/service-process.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { pollUntilDone, pool, predict, type Reply } from '../support/http.js';
import { startCluster, type LocalCluster } from '../support/redis-topology.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * The core path on a real Redis Cluster of three masters, started here on free ports
 * (`redis-server --cluster-enabled yes` × 3, `redis-cli --cluster create`): the services reach it
 * through `redis+cluster://` and a hash-tag prefix, so BullMQ's keys and Conveyor's own share one
 * slot and no script meets CROSSSLOT. Sync, async, bad input, two workers sharing the queue.
 */
describe('Redis Cluster (3 masters): the core path', function () {
  this.timeout(120_000);
  const tag = `t-cluster-${randomBytes(4).toString('hex')}`;
  const prefix = `{${tag}}`;
  let dir: string;
  let gateway: Gateway;
  let workers: Awaited<ReturnType<typeof startWorker>>[] = [];
  let client: Cluster;
  let cluster: LocalCluster;
  /** What the after hook has to stop, whichever step of before failed. */
  const started: { cluster?: LocalCluster; client?: Cluster } = {};
  let seven: Buffer;

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-cluster-'));
    cluster = started.cluster = await startCluster(dir);
    client = started.client = new Cluster(cluster.masters.map((m) => ({ host: '127.0.0.1', port: m.port })));
    const env = { REDIS_URL: cluster.url };
    [gateway, ...workers] = await Promise.all([
      startGateway(prefix, env),
      startWorker(prefix, { ...env, WORKER_CONCURRENCY: '2' }, 'worker-a'),
      startWorker(prefix, { ...env, WORKER_CONCURRENCY: '2' }, 'worker-b'),
    ]);
    const { dataset, split } = await heldOutDigits();
    seven = await digitPng(dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels);
  });

  afterEach(function () {
    dumpLogsOnFailure(this, gateway, ...workers);
  });

  after(async () => {
    await stopAll(gateway, ...workers);
    started.client?.disconnect();
    await started.cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('really is a cluster of three masters sharing the slots', async () => {
    const nodes = String(await client.cluster('NODES'))
      .trim()
      .split('\n')
      .filter((line) => line.includes('master'));
    expect(nodes).to.have.length(3);
    const slotRanges = nodes.map((line) => line.split(' ').slice(8));
    expect(
      slotRanges.every((ranges) => ranges.length > 0),
      'every master serves slots',
    ).to.equal(true);
  });

  it('answers a synchronous prediction', async () => {
    const reply = await predict(gateway.url, seven);
    expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
    expect(reply.body).to.include({ status: 'completed' });
    expect((reply.body.prediction as { label: string }).label).to.equal('7');
  });

  it('accepts an asynchronous job and serves its result when polled', async () => {
    const reply = await predict(gateway.url, seven, { Prefer: 'respond-async' });
    expect(reply.status).to.equal(202);
    const done = await pollUntilDone(gateway.url, reply.body.id as string);
    expect(done.body).to.include({ status: 'completed' });
    expect((done.body.prediction as { label: string }).label).to.equal('7');
  });

  it('answers bad input with a 4xx problem and the request id: refused at the gateway, and failed by a worker', async () => {
    const expectProblem = (reply: Reply, status: number, slug: string) => {
      expect(reply.status, JSON.stringify(reply.body)).to.equal(status);
      expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
      expect(reply.body).to.include({ type: `/problems/${slug}` });
      expect(reply.body.requestId).to.equal(reply.headers.get('x-request-id'));
    };
    expectProblem(await predict(gateway.url, Buffer.from('not an image at all')), 415, 'unsupported-media-type');
    // Half a noisy JPEG: plausible by its header, so the worker is the one to find the cut (a failed job).
    const jpeg = await sharp({
      create: { width: 400, height: 300, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 40 } },
    })
      .jpeg()
      .toBuffer();
    expectProblem(await predict(gateway.url, jpeg.subarray(0, Math.floor(jpeg.length / 2))), 422, 'undecodable-image');
  });

  it('shares the queue between two workers', async () => {
    const servedBy: string[] = [];
    await pool(Array.from({ length: 40 }), 8, async () => {
      const reply = await predict(gateway.url, seven);
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
      servedBy.push(reply.body.worker as string);
    });
    const served = workers.map((w) => servedBy.filter((id) => id === w.id).length);
    expect(served[0]! + served[1]!, `served ${JSON.stringify(served)}`).to.equal(40);
    expect(Math.min(...served), `each worker took jobs ${JSON.stringify(served)}`).to.be.greaterThan(0);
  });

  it('keeps every key of the deployment in the one slot of its hash tag', async () => {
    const slot = await client.cluster('KEYSLOT', prefix);
    const ranges = await client.cluster('SLOTS');
    const ownerPort = ranges.find(([from, to]) => slot >= from && slot <= to)?.[2]?.[1];
    const node = client.nodes('master').find((n) => n.options.port === ownerPort);
    expect(node, `the master serving slot ${slot}`).to.not.equal(undefined);
    // Every key of the deployment lives on that master, in that slot; the other two hold none.
    const found = await node!.keys(`${prefix}:*`);
    const k = redisKeys(prefix);
    for (const key of [k.workers, k.models, k.predictions, `${prefix}:inference:meta`]) expect(found, key).to.include(key);
    // Each in the slot (key by key: keys expire and appear between a KEYS and a COUNTKEYSINSLOT,
    // which CI once read 105 and 103).
    for (const key of found) expect(await client.cluster('KEYSLOT', key), key).to.equal(slot);
    for (const other of client.nodes('master').filter((n) => n !== node))
      expect(await other.keys(`${prefix}:*`), `keys on ${String(other.options.port)}`).to.deep.equal([]);
  });

  it('refuses to start against a cluster with a prefix that has no hash tag (exit 78, EX_CONFIG)', async () => {
    const proc = spawnService('gateway', { REDIS_URL: cluster.url, REDIS_PREFIX: tag, PORT: '0', HOST: '127.0.0.1' });
    expect(await proc.exited).to.equal(78);
    expect(proc.records.map((r) => r.msg).join('\n')).to.match(/REDIS_PREFIX.*hash-tag prefix, e\.g\. \{t-cluster-/);
  });
});
