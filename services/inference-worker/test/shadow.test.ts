import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import { ConfigError, loadConfig } from '@conveyor/shared/config';
import type { CompletedResult } from '@conveyor/shared/contract/jobs.contract';
import { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import { ModelManifest } from '@conveyor/shared/model/manifest';
import { preprocess } from '@conveyor/shared/model/preprocess';
import type { LoadedModel } from '@conveyor/shared/model/runtime';
import type { CommitOutcome, TakenInput } from '@conveyor/shared/contract/job-store';
import { digitPng } from '../../../test/support/images.js';
import { WorkerConfig } from '../src/config.js';
import { CpuBudget } from '../src/shadow/cpu-budget.js';
import { ShadowLane, type ShadowHook, type ShadowInput, type ShadowModel } from '../src/shadow/shadow-lane.js';
import { createInferenceProcessor, type InferenceBullJob, type ProcessorDeps } from '../src/inference.processor.js';
import type { ShadowOutcome } from '../src/shadow/shadow-metrics.js';

/**
 * Shadow mode's parts without Redis or onnxruntime: the settings, the CPU budget on a fake clock,
 * and the lane with a fake model (real preprocessing where the shadow's spec differs).
 */
const manifest = ModelManifest.parse(
  JSON.parse(readFileSync(new URL('../../../models/digits/manifest.json', import.meta.url), 'utf8')),
);

describe('shadow settings (SHADOW_VERSION, SHADOW_SAMPLE_RATE, SHADOW_CPU_SHARE)', () => {
  const load = (env: Record<string, string>) => loadConfig(WorkerConfig, env);
  const refusal = (env: Record<string, string>): string => {
    try {
      load(env);
    } catch (error) {
      expect(error).to.be.instanceOf(ConfigError);
      return (error as Error).message;
    }
    throw new Error('the configuration was accepted');
  };

  it('is off by default: no shadow, a sample rate of 0.1 and a quarter of a core when one is set', () => {
    const config = load({});
    expect(config.shadows).to.deep.equal([]);
    expect(config.SHADOW_SAMPLE_RATE).to.equal(0.1);
    expect(config.SHADOW_CPU_SHARE).to.equal(0.25);
  });

  it('reads a model folder per served model without a registry', () => {
    const config = load({ MODELS: 'digits,moderation', SHADOW_VERSION: 'digits=/srv/candidate, moderation = rel/dir' });
    expect(config.shadows).to.deep.equal([
      { model: 'digits', source: { kind: 'folder', dir: '/srv/candidate' } },
      { model: 'moderation', source: { kind: 'folder', dir: path.resolve('rel/dir') } },
    ]);
  });

  it('reads a version number or an alias of the model’s registered model with MLFLOW_TRACKING_URI', () => {
    const config = load({
      MLFLOW_TRACKING_URI: 'http://127.0.0.1:5000',
      MODELS: 'digits,moderation',
      MODEL_URI: 'models:/mnist@production',
      SHADOW_VERSION: 'digits=7,moderation=staging',
    });
    expect(config.shadows).to.deep.equal([
      // The default model follows MODEL_URI's registered name, not its serving name.
      { model: 'digits', source: { kind: 'registry', uri: 'models:/mnist/7' } },
      { model: 'moderation', source: { kind: 'registry', uri: 'models:/moderation@staging' } },
    ]);
  });

  it('refuses at start-up a model the worker does not serve, with the models it does', () => {
    expect(refusal({ SHADOW_VERSION: 'digitz=/srv/x' }))
      .to.contain('SHADOW_VERSION')
      .and.to.contain('"digitz" is not a model this worker serves (MODELS: digits)');
  });

  it('refuses malformed entries, a model named twice, a registry ref that is neither version nor alias, its own alias', () => {
    expect(refusal({ SHADOW_VERSION: 'digits' })).to.contain('"digits" is not <model>=<ref>');
    expect(refusal({ SHADOW_VERSION: 'digits=/a,digits=/b' })).to.contain('"digits" is given a shadow twice');
    const registry = { MLFLOW_TRACKING_URI: 'http://127.0.0.1:5000' };
    expect(refusal({ ...registry, SHADOW_VERSION: 'digits=/srv/x' })).to.contain('is not a registry version number or alias');
    expect(refusal({ ...registry, SHADOW_VERSION: 'digits=production' })).to.contain('is what it serves already');
  });

  it('bounds the sample rate to 0–1 and the CPU share to (0, 1]', () => {
    expect(refusal({ SHADOW_SAMPLE_RATE: '1.5' })).to.contain('SHADOW_SAMPLE_RATE');
    expect(refusal({ SHADOW_CPU_SHARE: '0' })).to.contain('SHADOW_CPU_SHARE');
    expect(load({ SHADOW_SAMPLE_RATE: '1', SHADOW_CPU_SHARE: '0.5' })).to.include({
      SHADOW_SAMPLE_RATE: 1,
      SHADOW_CPU_SHARE: 0.5,
    });
  });
});

/** A clock the test moves by hand. */
class FakeClock {
  t = 1000;
  readonly now = () => this.t;
}

describe('shadow CPU budget (fake clock)', () => {
  it('lets a run start while not in debt, charges its time, and refills at the share of wall time', () => {
    const clock = new FakeClock();
    const budget = new CpuBudget(0.25, 50, clock.now);
    expect(budget.mayRun()).to.equal(true);
    budget.charge(80); // a run longer than the burst: 30 ms in debt
    expect(budget.available).to.equal(-30);
    expect(budget.mayRun()).to.equal(false);
    clock.t += 100; // 25 ms back
    expect(budget.mayRun()).to.equal(false);
    clock.t += 40; // 10 more
    expect(budget.available).to.equal(5);
    expect(budget.mayRun()).to.equal(true);
    clock.t += 1_000_000; // a quiet spell refills to the burst, no further
    expect(budget.available).to.equal(50);
  });
});

function completed(id: string, label: string): CompletedResult {
  const probabilities = manifest.labels.map((l) => ({ label: l, confidence: l === label ? 0.91 : 0.01 }));
  return {
    id,
    requestId: `req-${id}`,
    attempt: 1,
    worker: 'worker-1',
    acceptedAt: new Date().toISOString(),
    status: 'completed',
    finishedAt: new Date().toISOString(),
    model: { name: 'digits', version: 'prod-1' },
    prediction: { label, index: manifest.labels.indexOf(label), confidence: 0.91, top: probabilities },
    timings: { queueMs: 1, preprocessMs: 2, inferenceMs: 0.3, totalMs: 4 },
    input: { format: 'png', bytes: 100, width: 28, height: 28 },
  } as unknown as CompletedResult;
}

const SHADOW_MANIFEST: ModelManifest = { ...manifest, version: 'shadow-1' };

/** A fake shadow model: answers `label`, costs `costMs` on the fake clock, or fails / hangs when told. */
class FakeShadow {
  label = '7';
  costMs = 10;
  fail: Error | undefined;
  hang: Promise<void> | undefined;
  readonly inputs: Float32Array[] = [];
  constructor(
    private readonly clock: FakeClock,
    readonly manifest: ModelManifest = SHADOW_MANIFEST,
  ) {}
  shadow(): ShadowModel {
    return {
      ref: { name: 'digits', version: this.manifest.version },
      model: {
        manifest: this.manifest,
        close: () => Promise.resolve(),
        run: async (images) => {
          this.inputs.push(Float32Array.from(images[0]!));
          if (this.hang) await this.hang;
          this.clock.t += this.costMs;
          if (this.fail) throw this.fail;
          const probabilities = new Float32Array(10).fill(0.01);
          probabilities[this.manifest.labels.indexOf(this.label)] = 0.91;
          return [{ probabilities }];
        },
      },
    };
  }
}

function laneOf(
  fake: FakeShadow,
  clock: FakeClock,
  options: { share?: number; burstMs?: number; backlog?: number; rate?: number; publishFails?: boolean } = {},
) {
  const outcomes: ShadowOutcome[] = [];
  const events: ShadowEvent[] = [];
  const lane = new ShadowLane(fake.shadow(), {
    name: 'digits',
    sampleRate: options.rate ?? 1,
    backlog: options.backlog ?? 4,
    budget: new CpuBudget(options.share ?? 1, options.burstMs ?? 1000, clock.now),
    counts: { outcome: (o) => outcomes.push(o), seconds: () => undefined },
    publish: (event) => {
      if (options.publishFails) return Promise.reject(new Error('Redis is away'));
      events.push(ShadowEvent.parse(event));
      return Promise.resolve();
    },
    preprocess: { maxPixels: 1e7 },
    topK: undefined,
    log: pino({ level: process.env.SHADOW_TEST_LOG ?? 'silent' }),
    now: clock.now,
  });
  const count = (o: ShadowOutcome) => outcomes.filter((x) => x === o).length;
  return { lane, outcomes, events, count };
}

/** A job id as BullMQ's are here (UUIDs). */
const jobId = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;

const input = (id: string, label: string, tensor: Float32Array = new Float32Array(28 * 28).fill(0.5)): ShadowInput => ({
  result: completed(id, label),
  manifest,
  tensor,
  bytes: Buffer.alloc(0),
});

describe('shadow lane (fake model, fake clock)', () => {
  it('publishes each pair: production’s answer and the shadow’s, with no request id or image', async () => {
    const clock = new FakeClock();
    const fake = new FakeShadow(clock);
    const { lane, events, outcomes } = laneOf(fake, clock);
    fake.label = '5';
    lane.offer(input(jobId(1), '3'));
    await lane.idle();
    expect(outcomes).to.deep.equal(['ran']);
    expect(events).to.have.length(1);
    const event = events[0]!;
    expect(event).to.deep.include({ kind: 'shadow', jobId: jobId(1), name: 'digits' });
    expect(event.production.prediction.label).to.equal('3');
    expect(event.production.model).to.deep.equal({ name: 'digits', version: 'prod-1' });
    expect(event.shadow.prediction.label).to.equal('5');
    expect(event.shadow.model).to.deep.equal({ name: 'digits', version: 'shadow-1' });
    expect(event.shadow.inferenceMs).to.equal(10);
    expect(JSON.stringify(event)).to.not.contain(`req-${jobId(1)}`);
  });

  it('reuses production’s tensor when the preprocessing is the same (a copy: the workspace is reused)', async () => {
    const clock = new FakeClock();
    const fake = new FakeShadow(clock);
    const { lane } = laneOf(fake, clock);
    const tensor = new Float32Array(28 * 28).fill(0.25);
    lane.offer(input(jobId(1), '7', tensor));
    tensor.fill(0.75); // the next job overwrites the workspace
    await lane.idle();
    expect(fake.inputs[0]!.every((v) => v === 0.25)).to.equal(true);
  });

  it('preprocesses the image again when the shadow’s preprocessing differs', async () => {
    const clock = new FakeClock();
    const inverted = {
      ...manifest,
      version: 'shadow-2',
      preprocess: { ...manifest.preprocess, normalize: { ...manifest.preprocess.normalize, mean: [0.5] } },
    };
    const fake = new FakeShadow(clock, inverted);
    const { lane, outcomes } = laneOf(fake, clock);
    const pixels = new Uint8Array(28 * 28);
    for (let y = 6; y < 22; y++) pixels[y * 28 + 14] = 255;
    const bytes = await digitPng(pixels);
    const production = await preprocess({ kind: 'encoded', bytes }, manifest, { maxPixels: 1e7 });
    lane.offer({ ...input(jobId(1), '1', production.tensor), bytes });
    await lane.idle();
    expect(outcomes).to.deep.equal(['ran']);
    const expected = await preprocess({ kind: 'encoded', bytes }, inverted, { maxPixels: 1e7 });
    expect(Array.from(fake.inputs[0]!)).to.deep.equal(Array.from(expected.tensor));
    expect(Array.from(fake.inputs[0]!)).to.not.deep.equal(Array.from(production.tensor));
  });

  it('runs one at a time, keeps a bounded backlog and counts the offers it drops', async () => {
    const clock = new FakeClock();
    const fake = new FakeShadow(clock);
    let release!: () => void;
    fake.hang = new Promise<void>((r) => (release = r));
    const { lane, count } = laneOf(fake, clock, { backlog: 2 });
    for (let i = 0; i < 6; i++) lane.offer(input(jobId(i), '7'));
    // One running (hung), two waiting, three dropped; offer never waited for any of them.
    expect(count('dropped_busy')).to.equal(3);
    expect(fake.inputs).to.have.length(1);
    release();
    await lane.idle();
    expect(count('ran')).to.equal(3);
    expect(fake.inputs).to.have.length(3);
  });

  it('skips runs over its CPU share and counts them, keeping its run time within share × wall time + burst + one run', async () => {
    const clock = new FakeClock();
    const fake = new FakeShadow(clock);
    fake.costMs = 10;
    const share = 0.1;
    const burstMs = 20;
    const { lane, count } = laneOf(fake, clock, { share, burstMs });
    const start = clock.t;
    for (let i = 0; i < 200; i++) {
      lane.offer(input(jobId(i), '7'));
      await lane.idle();
      clock.t += 5; // a job every 5 ms of production time, besides the shadow's own
    }
    const ran = count('ran');
    expect(ran + count('over_cpu_share')).to.equal(200);
    expect(count('over_cpu_share')).to.be.above(0);
    expect(ran * fake.costMs).to.be.at.most(share * (clock.t - start) + burstMs + fake.costMs);
    // And not starved: it used most of what it was allowed.
    expect(ran * fake.costMs).to.be.at.least(share * (clock.t - start) - fake.costMs);
  });

  it('skips nothing with the whole core and a generous burst', async () => {
    const clock = new FakeClock();
    const { lane, count } = laneOf(new FakeShadow(clock), clock, { share: 1 });
    for (let i = 0; i < 50; i++) {
      lane.offer(input(jobId(i), '7'));
      await lane.idle();
      clock.t += 20;
    }
    expect(count('ran')).to.equal(50);
  });

  it('samples SHADOW_SAMPLE_RATE of the offers (0: none)', async () => {
    const clock = new FakeClock();
    const { lane, outcomes } = laneOf(new FakeShadow(clock), clock, { rate: 0 });
    for (let i = 0; i < 20; i++) lane.offer(input(jobId(i), '7'));
    await lane.idle();
    expect(outcomes).to.deep.equal([]);
  });

  it('counts a failing model or a failing publish, and never throws into the offer', async () => {
    const clock = new FakeClock();
    const fake = new FakeShadow(clock);
    fake.fail = new Error('onnxruntime: bad input');
    const broken = laneOf(fake, clock);
    expect(() => broken.lane.offer(input(jobId(1), '7'))).to.not.throw();
    await broken.lane.idle();
    expect(broken.outcomes).to.deep.equal(['failed']);
    const unpublished = laneOf(new FakeShadow(clock), clock, { publishFails: true });
    unpublished.lane.offer(input(jobId(2), '7'));
    await unpublished.lane.idle();
    expect(unpublished.outcomes).to.deep.equal(['failed']);
  });
});

describe('shadow hook in the processor (fakes, no Redis)', () => {
  function deps(commitOutcome: CommitOutcome, offers: ShadowInput[], shadow?: ShadowHook): ProcessorDeps {
    const model: LoadedModel = {
      manifest,
      dir: '/nowhere',
      outputSize: 10,
      warmUp: { ms: 0, probabilities: new Float32Array(10) },
      run: () => {
        const probabilities = new Float32Array(10).fill(0.01);
        probabilities[7] = 0.91;
        return Promise.resolve([{ probabilities }]);
      },
      close: () => Promise.resolve(),
    };
    return {
      jobs: { takeInput: () => Promise.resolve(taken), commit: () => Promise.resolve(commitOutcome) },
      model: 'digits',
      queue: 'inference',
      models: { acquire: () => ({ model, ref: { name: 'digits', version: 'prod-1' }, release: () => undefined }) },
      workerId: 'worker-1',
      limits: { maxPixels: 1e7, maxSide: 4096, maxAspectRatio: 20 },
      preprocessTimeoutMs: 30_000,
      topK: undefined,
      eventEmbeddings: false,
      log: pino({ level: 'silent' }),
      counts: {
        started: () => undefined,
        ended: () => undefined,
        committedCompleted: () => undefined,
        committedFailed: () => undefined,
      },
      metrics: {
        queueWait: () => undefined,
        preprocess: () => undefined,
        inference: () => undefined,
        processing: () => undefined,
        outcome: () => undefined,
      },
      shadow: shadow ?? { offer: (input) => offers.push({ ...input, tensor: Float32Array.from(input.tensor) }) },
    };
  }
  let image: Buffer;
  let taken: TakenInput;
  const job = () =>
    ({
      id: jobId(9),
      data: {
        kind: 'inference',
        version: 1,
        requestId: 'req-9',
        acceptedAt: Date.now(),
        model: 'digits',
        input: { format: 'png', bytes: 100, width: 28, height: 28, source: { kind: 'upload' } },
      },
      attemptsMade: 0,
      opts: { attempts: 3 },
      processedOn: Date.now(),
    }) as unknown as InferenceBullJob;

  before(async () => {
    const pixels = new Uint8Array(28 * 28);
    for (let y = 6; y < 22; y++) pixels[y * 28 + 14] = 255;
    image = await digitPng(pixels);
    taken = { finished: false, bytes: image };
  });

  it('offers a published answer with its tensor and image, after the commit', async () => {
    const offers: ShadowInput[] = [];
    expect(await createInferenceProcessor(deps('published', offers))(job(), 'token')).to.deep.equal({ label: '7' });
    expect(offers).to.have.length(1);
    expect(offers[0]!.result).to.include({ id: jobId(9), status: 'completed' });
    expect(offers[0]!.tensor).to.have.length(28 * 28);
    expect(offers[0]!.bytes.equals(image)).to.equal(true);
  });

  it('offers nothing for an answer that was not published (cancelled, or another attempt’s)', async () => {
    for (const outcome of ['cancelled', 'already-published', 'lock-lost'] as CommitOutcome[]) {
      const offers: ShadowInput[] = [];
      await createInferenceProcessor(deps(outcome, offers))(job(), 'token');
      expect(offers, outcome).to.deep.equal([]);
    }
  });

  it('returns while the shadow still runs: the job’s slot is never held by the shadow', async () => {
    const clock = new FakeClock();
    const fake = new FakeShadow(clock);
    let release!: () => void;
    fake.hang = new Promise<void>((r) => (release = r));
    const { lane, count } = laneOf(fake, clock);
    expect(await createInferenceProcessor(deps('published', [], lane))(job(), 'token')).to.deep.equal({ label: '7' });
    // The job is done; the shadow run it started has not finished.
    expect(fake.inputs).to.have.length(1);
    expect(count('ran')).to.equal(0);
    release();
    await lane.idle();
    expect(count('ran')).to.equal(1);
  });
});
