import { readFileSync } from 'node:fs';
import { UnrecoverableError } from 'bullmq';
import { expect } from 'chai';
import pino from 'pino';
import type { CommitOptions, CommitOutcome, TakenInput } from '@conveyor/shared/contract/job-store';
import type { InferenceJob, JobResult } from '@conveyor/shared/contract/jobs.contract';
import { ModelManifest } from '@conveyor/shared/model/manifest';
import type { LoadedModel } from '@conveyor/shared/model/runtime';
import { digitPng } from '../../../test/support/images.js';
import { createInferenceProcessor, type InferenceBullJob, type ProcessorDeps } from '../src/inference.processor.js';
import type { JobOutcome } from '../src/metrics/worker-metrics.js';

/**
 * The worker's processor with fakes at its boundary: a JobStore that hands out an image and records
 * commits, a ModelHost whose model answers what the test says, and a BullMQ job object. Real
 * preprocessing (sharp) runs on a real PNG; no Redis, no onnxruntime.
 */
const manifest = ModelManifest.parse(
  JSON.parse(readFileSync(new URL('../../../models/digits/manifest.json', import.meta.url), 'utf8')),
);
const ref = { name: 'digits', version: 'test-1' };

class Fakes {
  taken: TakenInput = { finished: false, bytes: null };
  readonly commits: { result: JobResult; options: CommitOptions }[] = [];
  commitOutcome: CommitOutcome = 'published';
  modelError: Error | undefined;
  readonly outcomes: JobOutcome[] = [];
  readonly counts = { started: 0, ended: 0, completed: 0, failed: 0 };
  leases = 0;
  released = 0;
  inputsTaken = 0;
  readonly served: number[] = [];

  deps(): ProcessorDeps {
    const model: LoadedModel = {
      manifest,
      dir: '/nowhere',
      outputSize: 10,
      warmUp: { ms: 0, probabilities: new Float32Array(10) },
      run: (images) => {
        if (this.modelError) return Promise.reject(this.modelError);
        expect(images[0]).to.have.length(28 * 28);
        const probabilities = new Float32Array(10).fill(0.01);
        probabilities[7] = 0.91;
        return Promise.resolve([{ probabilities }]);
      },
      close: () => Promise.resolve(),
    };
    return {
      jobs: {
        takeInput: () => {
          this.inputsTaken++;
          return Promise.resolve(this.taken);
        },
        commit: (result, options) => {
          this.commits.push({ result, options });
          return Promise.resolve(this.commitOutcome);
        },
      },
      model: 'digits',
      queue: 'inference:digits',
      models: {
        acquire: () => {
          this.leases++;
          return { model, ref, release: () => this.released++ };
        },
      },
      workerId: 'worker-1',
      limits: { maxPixels: 1e7, maxSide: 4096, maxAspectRatio: 20 },
      preprocessTimeoutMs: 30_000,
      topK: 3,
      eventEmbeddings: false,
      log: pino({ level: 'silent' }),
      counts: {
        started: () => this.counts.started++,
        ended: (servedMs?: number) => {
          this.counts.ended++;
          if (servedMs !== undefined) this.served.push(servedMs);
        },
        committedCompleted: () => this.counts.completed++,
        committedFailed: () => this.counts.failed++,
      },
      metrics: {
        queueWait: () => undefined,
        preprocess: () => undefined,
        inference: () => undefined,
        processing: () => undefined,
        outcome: (outcome) => this.outcomes.push(outcome),
      },
    };
  }
}

function payload(overrides: Partial<InferenceJob> = {}): InferenceJob {
  return {
    kind: 'inference',
    version: 1,
    requestId: 'req-1',
    replyTo: 'gw-1',
    acceptedAt: Date.now() - 5,
    model: 'digits',
    input: { format: 'png', bytes: 100, width: 28, height: 28, source: { kind: 'upload' } },
    ...overrides,
  };
}

function bullJob(data: unknown, attemptsMade = 0, attempts = 3): InferenceBullJob {
  return { id: 'job-1', data, attemptsMade, opts: { attempts }, processedOn: Date.now() } as unknown as InferenceBullJob;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (error: unknown) => error,
  );
}

describe('inference processor (fakes, no Redis)', () => {
  let digit: Buffer;
  before(async () => {
    const pixels = new Uint8Array(28 * 28);
    for (let y = 6; y < 22; y++) pixels[y * 28 + 14] = 255;
    digit = await digitPng(pixels);
  });

  it('logs each prediction with the job, request and attempt at info, and makes no per-job logger below it', async () => {
    for (const level of ['info', 'warn'] as const) {
      const lines: Record<string, unknown>[] = [];
      const log = pino({ level }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
      let children = 0;
      const child = log.child.bind(log);
      log.child = ((...args: Parameters<typeof log.child>) => (children++, child(...args))) as typeof log.child;
      const fakes = new Fakes();
      fakes.taken = { finished: false, bytes: digit };
      expect(await createInferenceProcessor({ ...fakes.deps(), log })(bullJob(payload()), 'token-1')).to.deep.equal({
        label: '7',
      });
      if (level === 'info') {
        expect(lines.find((l) => l.msg === 'prediction')).to.include({
          jobId: 'job-1',
          requestId: 'req-1',
          attempt: 1,
          label: '7',
        });
        expect(children).to.equal(1);
      } else {
        expect(lines).to.deep.equal([]);
        expect(children, 'loggers made').to.equal(0);
      }
    }
  });

  it('predicts, commits the completed result with its event and reply, and counts it', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: digit };
    const returned = await createInferenceProcessor(fakes.deps())(bullJob(payload()), 'token-1');
    expect(returned).to.deep.equal({ label: '7' });
    expect(fakes.commits).to.have.length(1);
    const { result, options } = fakes.commits[0]!;
    expect(result).to.include({ id: 'job-1', status: 'completed', requestId: 'req-1', attempt: 1, worker: 'worker-1' });
    expect(result.status === 'completed' && result.prediction).to.include({ label: '7', index: 7 });
    expect(result.status === 'completed' && result.model).to.deep.equal(ref);
    expect(options).to.include({ replyTo: 'gw-1', token: 'token-1', queue: 'inference:digits' });
    expect(options.event).to.not.equal(undefined);
    expect(fakes.outcomes).to.deep.equal(['completed']);
    expect(fakes.counts).to.deep.equal({ started: 1, ended: 1, completed: 1, failed: 0 });
    expect(fakes.released).to.equal(fakes.leases);
  });

  it('drops a job whose deadline has passed before reading or decoding its image, and records it expired', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: digit };
    const deadline = Date.now() - 1000;
    const returned = await createInferenceProcessor(fakes.deps())(bullJob(payload({ deadline })), 'token-1');
    expect(returned).to.deep.equal({ label: 'expired' });
    expect(fakes.inputsTaken, 'images read').to.equal(0);
    expect(fakes.leases, 'models leased').to.equal(0);
    expect(fakes.commits).to.have.length(1);
    const { result, options } = fakes.commits[0]!;
    expect(result).to.include({ id: 'job-1', status: 'expired', deadline: new Date(deadline).toISOString() });
    expect(result.status === 'expired' && result.error.slug).to.equal('deadline-exceeded');
    expect(options).to.include({ replyTo: 'gw-1', token: 'token-1' });
    expect(options.event, 'prediction event').to.equal(undefined);
    expect(fakes.outcomes).to.deep.equal(['expired']);
    expect(fakes.served, 'service times recorded').to.deep.equal([]);
  });

  it('runs a job whose deadline is still ahead, and records its service time', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: digit };
    const returned = await createInferenceProcessor(fakes.deps())(bullJob(payload({ deadline: Date.now() + 60_000 })), 't');
    expect(returned).to.deep.equal({ label: '7' });
    expect(fakes.outcomes).to.deep.equal(['completed']);
    expect(fakes.served).to.have.length(1);
  });

  it('counts a job cancelled while it ran as cancelled when its commit kept the cancellation', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: digit };
    fakes.commitOutcome = 'cancelled';
    const returned = await createInferenceProcessor(fakes.deps())(bullJob(payload()), 'token-1');
    expect(returned).to.deep.equal({ label: 'cancelled' });
    expect(fakes.outcomes).to.deep.equal(['cancelled']);
    expect(fakes.counts.completed, 'completed commits').to.equal(0);
  });

  it('publishes nothing for a job an earlier attempt finished', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: true };
    const returned = await createInferenceProcessor(fakes.deps())(bullJob(payload()));
    expect(returned).to.deep.equal({ label: 'duplicate' });
    expect(fakes.commits).to.deep.equal([]);
    expect(fakes.outcomes).to.deep.equal(['not_published']);
    expect(fakes.leases).to.equal(0);
  });

  it('fails a job whose payload breaks the contract for good, without touching its input', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: digit };
    const error = await rejection(createInferenceProcessor(fakes.deps())(bullJob({ kind: 'inference', version: 2 })));
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(fakes.commits).to.deep.equal([]);
    expect(fakes.outcomes).to.deep.equal(['failed_permanent']);
  });

  it('fails a job on another model’s queue for good', async () => {
    const fakes = new Fakes();
    const error = await rejection(createInferenceProcessor(fakes.deps())(bullJob(payload({ model: 'faces' }))));
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(fakes.outcomes).to.deep.equal(['failed_permanent']);
  });

  it('commits an expired image as a permanent failure the caller is told of', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: null };
    const error = await rejection(createInferenceProcessor(fakes.deps())(bullJob(payload())));
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(fakes.commits).to.have.length(1);
    const { result } = fakes.commits[0]!;
    expect(result.status).to.equal('failed');
    expect(result.status === 'failed' && result.error.slug).to.equal('input-expired');
    expect(fakes.outcomes).to.deep.equal(['failed_permanent']);
    expect(fakes.counts.failed).to.equal(1);
    expect(fakes.released).to.equal(1);
  });

  it('leaves a transient failure to BullMQ’s retry, and commits it only on the last attempt', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: digit };
    fakes.modelError = new Error('the session failed');
    const processor = createInferenceProcessor(fakes.deps());
    const first = await rejection(processor(bullJob(payload(), 0, 3)));
    expect(first).to.equal(fakes.modelError);
    expect(fakes.commits).to.deep.equal([]);
    const last = await rejection(processor(bullJob(payload(), 2, 3)));
    expect(last).to.equal(fakes.modelError).and.not.be.instanceOf(UnrecoverableError);
    expect(fakes.commits).to.have.length(1);
    expect(fakes.commits[0]!.result.status === 'failed' && fakes.commits[0]!.result.error.slug).to.equal('inference-failed');
    expect(fakes.outcomes).to.deep.equal(['failed_transient', 'failed_transient']);
    expect(fakes.released).to.equal(2);
  });

  it('does not publish when another attempt holds the job now (the lock was lost)', async () => {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: digit };
    fakes.commitOutcome = 'lock-lost';
    const returned = await createInferenceProcessor(fakes.deps())(bullJob(payload()));
    expect(returned).to.deep.equal({ label: 'duplicate' });
    expect(fakes.outcomes).to.deep.equal(['not_published']);
    expect(fakes.counts.completed).to.equal(0);
  });
});

describe('inference processor: what it offers the live replay recorder (fakes)', () => {
  let digit: Buffer;
  before(async () => {
    const pixels = new Uint8Array(28 * 28);
    for (let y = 6; y < 22; y++) pixels[y * 28 + 14] = 255;
    digit = await digitPng(pixels);
  });

  /** Runs one job; what the recorder was offered. */
  async function offered(setup: (fakes: Fakes) => void, data: unknown = payload()) {
    const fakes = new Fakes();
    fakes.taken = { finished: false, bytes: digit };
    setup(fakes);
    const offers: { model: string; status: string; bytes: Buffer }[] = [];
    const deps: ProcessorDeps = {
      ...fakes.deps(),
      recorder: { offer: (model, result, bytes) => offers.push({ model, status: result.status, bytes }) },
    };
    await createInferenceProcessor(deps)(bullJob(data, 0, 1), 'token-1').catch(() => undefined);
    return offers;
  }

  it('offers a published completed job with the image it ran on', async () => {
    expect(await offered(() => undefined)).to.deep.equal([{ model: 'digits', status: 'completed', bytes: digit }]);
  });

  it('offers nothing for a failed, refused, expired, cancelled or unpublished job', async () => {
    expect(await offered((f) => (f.modelError = new Error('onnxruntime failed')))).to.deep.equal([]);
    expect(await offered((f) => (f.taken = { finished: false, bytes: Buffer.from('not an image') }))).to.deep.equal([]);
    expect(await offered(() => undefined, payload({ deadline: Date.now() - 1000 }))).to.deep.equal([]);
    expect(await offered((f) => (f.commitOutcome = 'cancelled'))).to.deep.equal([]);
    expect(await offered((f) => (f.commitOutcome = 'lock-lost'))).to.deep.equal([]);
  });
});
