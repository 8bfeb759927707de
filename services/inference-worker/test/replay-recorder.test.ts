import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import { Registry } from 'prom-client';
import { ConfigError, loadConfig } from '@conveyor/shared/config';
import type { CompletedResult } from '@conveyor/shared/contract/jobs.contract';
import { RecordedExample } from '@conveyor/shared/contract/replay.contract';
import { openReplayStore } from '@conveyor/shared/replay/open-replay-store';
import { purgeRecordedDays, readRecordedExamples, sha256Hex, type ReplayStore } from '@conveyor/shared/replay/replay-store';
import { WorkerConfig } from '../src/config.js';
import { ReplayRecorder, RetentionSweeper, type DailyQuota } from '../src/replay/replay-recorder.js';
import { until } from '../../../test/support/wait.js';

const log = pino({ level: 'silent' });

describe('worker config: the live replay recorder', () => {
  const replay = (env: Record<string, string>) => loadConfig(WorkerConfig, { MODELS: 'digits,moderation', ...env }).replay;
  const refusal = (env: Record<string, string>): string => {
    try {
      loadConfig(WorkerConfig, { MODELS: 'digits,moderation', ...env });
    } catch (error) {
      expect(error).to.be.instanceOf(ConfigError);
      return (error as Error).message;
    }
    throw new Error('the configuration was accepted');
  };

  it('is off by default, and with a rate of 0', () => {
    expect(replay({})).to.equal(undefined);
    expect(replay({ REPLAY_SAMPLE_RATE: '0', REPLAY_STORE: '/tmp/x' })).to.equal(undefined);
    expect(replay({ REPLAY_SAMPLE_RATE: 'digits=0' })).to.equal(undefined);
  });

  it('takes one rate for every served model, or rates by name (the others off)', () => {
    const all = replay({ REPLAY_SAMPLE_RATE: '0.25', REPLAY_STORE: 's3://bucket-a/replay/live' })!;
    expect(Object.fromEntries(all.rates)).to.deep.equal({ digits: 0.25, moderation: 0.25 });
    expect(all.store).to.deep.equal({ kind: 's3', bucket: 'bucket-a', prefix: 'replay/live' });
    expect(all.dailyLimit).to.equal(1000);
    expect(all.retentionDays).to.equal(30);
    const some = replay({ REPLAY_SAMPLE_RATE: 'digits=1, other=0.5', REPLAY_STORE: 'data/replay-store' })!;
    expect(Object.fromEntries(some.rates)).to.deep.equal({ digits: 1 });
    expect(some.unserved).to.deep.equal(['other']);
    expect(some.store).to.deep.equal({ kind: 'folder', dir: path.resolve('data/replay-store') });
  });

  it('finds the S3 endpoint in REPLAY_S3_ENDPOINT_URL, else the standard variables, else MLflow’s', () => {
    const s3 = { REPLAY_SAMPLE_RATE: '1', REPLAY_STORE: 's3://bucket-a/p' };
    const saved = { ...process.env };
    try {
      delete process.env.AWS_ENDPOINT_URL_S3;
      delete process.env.AWS_ENDPOINT_URL;
      process.env.MLFLOW_S3_ENDPOINT_URL = 'http://mlflow-s3:9000';
      expect(replay(s3)!.endpoint).to.equal('http://mlflow-s3:9000');
      process.env.AWS_ENDPOINT_URL = 'http://aws-any:9000';
      expect(replay(s3)!.endpoint).to.equal('http://aws-any:9000');
      expect(replay({ ...s3, REPLAY_S3_ENDPOINT_URL: 'http://replay:9000' })!.endpoint).to.equal('http://replay:9000');
    } finally {
      process.env = saved;
    }
  });

  it('refuses bad rates, bad lists and a rate without a store, saying which', () => {
    expect(refusal({ REPLAY_SAMPLE_RATE: '1.5', REPLAY_STORE: '/tmp/x' })).to.contain('"1.5" is not a rate between 0 and 1');
    expect(refusal({ REPLAY_SAMPLE_RATE: 'half', REPLAY_STORE: '/tmp/x' })).to.contain('"half" is not a rate');
    expect(refusal({ REPLAY_SAMPLE_RATE: 'digits=-0.1', REPLAY_STORE: '/tmp/x' })).to.contain(
      'REPLAY_SAMPLE_RATE for digits: "-0.1" is not a rate',
    );
    expect(refusal({ REPLAY_SAMPLE_RATE: 'digits=0.1,Bad Name=1', REPLAY_STORE: '/tmp/x' })).to.contain(
      '"Bad Name=1" is not <model>=<rate>',
    );
    expect(refusal({ REPLAY_SAMPLE_RATE: 'digits=0.1,digits=0.2', REPLAY_STORE: '/tmp/x' })).to.contain('names digits twice');
    expect(refusal({ REPLAY_SAMPLE_RATE: '0.1' })).to.contain('REPLAY_STORE must say where');
    expect(refusal({ REPLAY_SAMPLE_RATE: '0.1', REPLAY_STORE: 'gs://bucket/x' })).to.contain(
      's3://<bucket>/<prefix> or a local folder',
    );
    expect(refusal({ REPLAY_SAMPLE_RATE: '0.1', REPLAY_STORE: 's3://B/x' })).to.contain('is not s3://<bucket>');
  });
});

/** A completed result as the processor commits it, for an image of `bytes`. */
function completed(id: string, bytes: Buffer, finishedAt = '2026-12-06T12:00:00.000Z'): CompletedResult {
  return {
    id,
    requestId: `req-${id}`,
    acceptedAt: finishedAt,
    attempt: 1,
    worker: 'w1',
    status: 'completed',
    finishedAt,
    model: { name: 'digits', version: 'sha-1' },
    prediction: { label: '7', index: 7, confidence: 0.9, top: [{ label: '7', confidence: 0.9 }] },
    timings: { queueMs: 1, preprocessMs: 2, inferenceMs: 0.5, totalMs: 4 },
    input: {
      format: 'png',
      bytes: bytes.length,
      width: 28,
      height: 28,
      brightness: 0.1,
      contrast: 0.2,
      inkRatio: 0.1,
      inverted: false,
    },
  };
}

/** A store that holds every write until released, or fails them. */
class FakeStore implements ReplayStore {
  readonly where = 'fake://';
  readonly objects = new Map<string, Buffer>();
  private held: (() => void)[] = [];
  hold = false;
  fail = false;

  async put(key: string, body: Uint8Array, _contentType?: string): Promise<void> {
    if (this.hold) await new Promise<void>((resolve) => this.held.push(resolve));
    if (this.fail) throw new Error('the store is down');
    this.objects.set(key, Buffer.from(body));
  }
  release(): void {
    this.hold = false;
    for (const r of this.held.splice(0)) r();
  }
  get(key: string): Promise<Buffer> {
    const found = this.objects.get(key);
    return found ? Promise.resolve(found) : Promise.reject(new Error(`no ${key}`));
  }
  list(prefix: string): Promise<string[]> {
    return Promise.resolve([...this.objects.keys()].filter((k) => k.startsWith(prefix)));
  }
  folders(prefix: string): Promise<string[]> {
    const names = [...this.objects.keys()].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length).split('/'));
    return Promise.resolve([...new Set(names.filter((n) => n.length > 1).map((n) => n[0]!))].sort());
  }
  remove(prefix: string): Promise<number> {
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix));
    for (const k of keys) this.objects.delete(k);
    return Promise.resolve(keys.length);
  }
}

const memoryQuota = (limit: number): DailyQuota => {
  const counts = new Map<string, number>();
  return {
    take: (model, day) => {
      const n = (counts.get(`${model}:${day}`) ?? 0) + 1;
      counts.set(`${model}:${day}`, n);
      return Promise.resolve(n <= limit);
    },
  };
};

describe('replay recorder: sampling, bounds and limits (fake store)', () => {
  const image = (i: number) => Buffer.from(`image-${i}-${'x'.repeat(100)}`);
  const recorder = (store: ReplayStore, options: Partial<ConstructorParameters<typeof ReplayRecorder>[0]> = {}) =>
    new ReplayRecorder({
      store,
      rates: new Map([['digits', 1]]),
      quota: memoryQuota(1000),
      maxInFlight: 100,
      maxInFlightBytes: 1 << 20,
      log,
      ...options,
    });

  it('records a sampled job as a RecordedExample keyed by the image’s sha256, with nothing of the caller', async () => {
    const store = new FakeStore();
    const r = recorder(store);
    const bytes = image(1);
    r.offer('digits', completed('job-1', bytes), bytes);
    await until('recorded', () => Promise.resolve(r.outcomes()['digits:recorded'] === 1));
    const sha = sha256Hex(bytes);
    expect([...store.objects.keys()].sort()).to.deep.equal([`digits/2026-12-06/${sha}.json`, `digits/2026-12-06/${sha}.png`]);
    const text = store.objects.get(`digits/2026-12-06/${sha}.json`)!.toString();
    const example = RecordedExample.parse(JSON.parse(text));
    expect(example).to.deep.include({ id: sha, model: 'digits', recordedAt: '2026-12-06T12:00:00.000Z' });
    expect(example.input).to.deep.equal({ file: `${sha}.png`, format: 'png', bytes: bytes.length, sha256: sha });
    expect(example.production).to.deep.equal({
      model: { name: 'digits', version: 'sha-1' },
      prediction: { label: '7', index: 7, confidence: 0.9, top: [{ label: '7', confidence: 0.9 }] },
      inferenceMs: 0.5,
    });
    expect(text).to.not.contain('req-job-1').and.not.contain('job-1').and.not.contain('w1');
    expect(store.objects.get(`digits/2026-12-06/${sha}.png`)).to.deep.equal(bytes);
  });

  it('samples at the model’s rate, decided by the draw, and never models without one', async () => {
    const store = new FakeStore();
    const draws = [0.1, 0.3, 0.29, 0.9];
    const r = recorder(store, { rates: new Map([['digits', 0.3]]), random: () => draws.shift()! });
    for (let i = 0; i < 4; i++) r.offer('digits', completed(`j${i}`, image(i)), image(i));
    r.offer('moderation', completed('m', image(9)), image(9));
    await r.close(30_000);
    expect(r.outcomes()).to.deep.equal({ 'digits:recorded': 2 });
    expect(store.objects.size).to.equal(4);
  });

  it('drops samples past the writes or bytes in flight, counted, and records again once they finish', async () => {
    const store = new FakeStore();
    store.hold = true;
    const r = recorder(store, { maxInFlight: 2, maxInFlightBytes: 1 << 20 });
    for (let i = 0; i < 5; i++) r.offer('digits', completed(`j${i}`, image(i)), image(i));
    expect(r.outcomes()).to.deep.equal({ 'digits:dropped_busy': 3 });
    store.release();
    await until('the two written', () => Promise.resolve(r.outcomes()['digits:recorded'] === 2));
    r.offer('digits', completed('j9', image(9)), image(9));
    await r.close(30_000);
    expect(r.outcomes()).to.deep.equal({ 'digits:dropped_busy': 3, 'digits:recorded': 3 });

    const small = new FakeStore();
    small.hold = true;
    const bytesBound = recorder(small, { maxInFlightBytes: image(1).length * 2 + 1 });
    for (let i = 0; i < 3; i++) bytesBound.offer('digits', completed(`j${i}`, image(i)), image(i));
    expect(bytesBound.outcomes()).to.deep.equal({ 'digits:dropped_busy': 1 });
    small.release();
    await bytesBound.close(30_000);
  });

  it('stops at the daily limit, counted over_daily_limit', async () => {
    const store = new FakeStore();
    const r = recorder(store, { quota: memoryQuota(3) });
    for (let i = 0; i < 5; i++) r.offer('digits', completed(`j${i}`, image(i)), image(i));
    await r.close(30_000);
    expect(r.outcomes()).to.deep.equal({ 'digits:recorded': 3, 'digits:over_daily_limit': 2 });
  });

  it('counts a failing store or quota as failed and never throws into the caller', async () => {
    const store = new FakeStore();
    store.fail = true;
    const registry = new Registry();
    const r = recorder(store, {
      registry,
      quota: { take: (_m, day) => (day === '2026-12-07' ? Promise.reject(new Error('Redis down')) : Promise.resolve(true)) },
    });
    expect(() => r.offer('digits', completed('j1', image(1)), image(1))).to.not.throw();
    r.offer('digits', completed('j2', image(2), '2026-12-07T00:00:01.000Z'), image(2));
    await r.close(30_000);
    expect(r.outcomes()).to.deep.equal({ 'digits:failed': 2 });
    const metrics = await registry.getSingleMetricAsString('conveyor_replay_records_total');
    expect(metrics).to.contain('conveyor_replay_records_total{model="digits",outcome="failed"} 2');
    expect(metrics).to.contain('conveyor_replay_records_total{model="digits",outcome="recorded"} 0');
  });

  it('waits at shutdown for writes in flight only up to its budget, and samples nothing after', async () => {
    const store = new FakeStore();
    store.hold = true;
    const r = recorder(store);
    r.offer('digits', completed('j1', image(1)), image(1));
    await r.close(50);
    r.offer('digits', completed('j2', image(2)), image(2));
    store.release();
    await until('the held write finished', () => Promise.resolve(r.outcomes()['digits:recorded'] === 1));
    expect(store.objects.size).to.equal(2);
  });
});

describe('replay store in a folder: read newest first, checked; retention', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'replay-store-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads each input once, newest first, up to a limit, and refuses an altered image', async () => {
    const store = await openReplayStore({ kind: 'folder', dir });
    const r = new ReplayRecorder({
      store,
      rates: new Map([['digits', 1]]),
      quota: memoryQuota(100),
      maxInFlight: 10,
      maxInFlightBytes: 1 << 20,
      log,
    });
    const a = Buffer.from('image a');
    const b = Buffer.from('image b');
    r.offer('digits', completed('1', a, '2026-12-01T10:00:00.000Z'), a);
    r.offer('digits', completed('2', b, '2026-12-02T10:00:00.000Z'), b);
    r.offer('digits', completed('3', a, '2026-12-03T10:00:00.000Z'), a);
    await r.close(30_000);
    const all = await readRecordedExamples(store, 'digits');
    expect(all.map((e) => [e.example.recordedAt.slice(0, 10), e.bytes.toString()])).to.deep.equal([
      ['2026-12-03', 'image a'],
      ['2026-12-02', 'image b'],
    ]);
    expect(await readRecordedExamples(store, 'digits', { limit: 1 })).to.have.length(1);
    await store.put(`digits/2026-12-02/${sha256Hex(b)}.png`, Buffer.from('image B'), 'image/png');
    let refused: Error | undefined;
    await readRecordedExamples(store, 'digits').catch((error: unknown) => (refused = error as Error));
    expect(refused?.message).to.contain('is not the image recorded for example');

    expect(await purgeRecordedDays(store, { before: '2026-12-03' })).to.deep.equal([
      { model: 'digits', day: '2026-12-01', objects: 2 },
      { model: 'digits', day: '2026-12-02', objects: 2 },
    ]);
    expect(await store.folders('digits/')).to.deep.equal(['2026-12-03']);
  });

  it('applies the retention in one worker per round (a Redis lease), deleting days past it', async () => {
    const store = new FakeStore();
    for (const day of ['2026-11-05', '2026-11-06', '2026-12-06'])
      await store.put(`digits/${day}/x.json`, Buffer.from('{}'), 'application/json');
    const leases = new Set<string>();
    const redis = {
      set: (key: string) => {
        if (leases.has(key)) return Promise.resolve(null);
        leases.add(key);
        return Promise.resolve('OK' as const);
      },
    };
    const sweeper = (name: string) =>
      new RetentionSweeper({
        store,
        models: ['digits'],
        retentionDays: 30,
        redis: redis as never,
        key: 'lease',
        intervalMs: 3_600_000,
        log: log.child({ name }),
      });
    const now = new Date('2026-12-06T09:00:00.000Z');
    expect(await sweeper('a').sweep(now)).to.equal(1);
    expect(await sweeper('b').sweep(now)).to.equal(undefined);
    expect(await store.folders('digits/')).to.deep.equal(['2026-11-06', '2026-12-06']);
  });
});
