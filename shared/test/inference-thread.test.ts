import { readdirSync, readFileSync } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { expect } from 'chai';
import * as ort from 'onnxruntime-node';
import { ensureModerationModel, MODERATION_DIR } from '../../scripts/models/moderation.js';
import { InferenceThread } from '../src/model/inference-thread.js';
import { loadModel, type LoadedModel } from '../src/model/runtime.js';

/**
 * onnxruntime-node's run() blocks the thread it runs on; with `offThread` the session lives on a
 * worker thread and the event loop keeps turning while it runs (issue 19: a slow model must not
 * stall BullMQ's lock renewals). A batch of the real MobileNetV2 takes ~50–300 ms of CPU, in which
 * a free event loop turns hundreds of times and a blocked one does not turn at all.
 */
describe('inference on a worker thread', function () {
  this.timeout(120_000);
  const images = Array.from({ length: 16 }, (_, i) => new Float32Array(3 * 224 * 224).fill(i / 16));
  let inThread: LoadedModel;
  let offThread: LoadedModel;
  const loaded: LoadedModel[] = [];

  before(async () => {
    await ensureModerationModel();
    [inThread, offThread] = await Promise.all([loadModel(MODERATION_DIR), loadModel(MODERATION_DIR, { offThread: true })]);
    loaded.push(inThread, offThread);
  });
  after(async () => {
    await Promise.all(loaded.map((m) => m.close()));
  });

  /**
   * Event-loop turns taken while the run is under way (a setImmediate chain): on the calling
   * thread the run is one blocking call, so at most the turn before it and the one after it.
   */
  async function turnsDuring(model: LoadedModel): Promise<number> {
    let turns = 0;
    let running = true;
    const spin = () => {
      if (!running) return;
      turns++;
      setImmediate(spin);
    };
    setImmediate(spin);
    await model.run(images);
    running = false;
    return turns;
  }

  it('gives the same answers as the session on the calling thread', async () => {
    const [a, b] = [await inThread.run(images), await offThread.run(images)];
    expect(b.map((o) => Array.from(o.probabilities))).to.deep.equal(a.map((o) => Array.from(o.probabilities)));
    expect(offThread.warmUp.probabilities).to.deep.equal(inThread.warmUp.probabilities);
  });

  it('keeps the event loop turning while the model runs (the calling thread does not)', async () => {
    expect(await turnsDuring(inThread), 'on the calling thread').to.be.at.most(3);
    // Tens of milliseconds of inference against microseconds per turn: hundreds of turns at least.
    expect(await turnsDuring(offThread), 'on a worker thread').to.be.above(20);
  });

  it('runs concurrent calls one at a time, each with its own answer', async () => {
    const one = (i: number) => offThread.run([images[i]!]);
    const together = await Promise.all([one(0), one(5), one(15)]);
    const apart = [await one(0), await one(5), await one(15)];
    expect(together.map((o) => Array.from(o[0]!.probabilities))).to.deep.equal(apart.map((o) => Array.from(o[0]!.probabilities)));
    expect(together[0][0]!.probabilities).to.not.deep.equal(together[2][0]!.probabilities);
  });

  it('answers right as its input grows and shrinks between runs (the shared input is handed over once per size)', async () => {
    const fresh = await loadModel(MODERATION_DIR, { offThread: true });
    loaded.push(fresh);
    const batches = [[3], [4, 9], [12], [0, 1, 2, 3], [7, 8], [15]].map((is) => is.map((i) => images[i]!));
    for (const batch of batches) {
      const [a, b] = [await inThread.run(batch), await fresh.run(batch)];
      expect(
        b.map((o) => Array.from(o.probabilities)),
        `batch of ${batch.length}`,
      ).to.deep.equal(a.map((o) => Array.from(o.probabilities)));
    }
  });

  it('keeps a model that answers within callingThreadUpToMs on the calling thread, with the same answers', async () => {
    // Bounds far from either model's speed, so the choice is the same on any machine: a second for
    // the small digits CNN, a nanosecond (never met) for MobileNetV2.
    const digitsDir = new URL('../../models/digits', import.meta.url).pathname;
    const [fast, onThread, slow, background] = await Promise.all([
      loadModel(digitsDir, { offThread: true, callingThreadUpToMs: 1000 }),
      loadModel(digitsDir, { offThread: true }),
      loadModel(MODERATION_DIR, { offThread: true, callingThreadUpToMs: 1e-6 }),
      loadModel(digitsDir, { offThread: true, callingThreadUpToMs: 1000, niceness: 10 }),
    ]);
    loaded.push(fast, onThread, slow, background);
    expect(fast.onThread, 'fast model').to.equal(false);
    expect(onThread.onThread, 'no bound').to.equal(true);
    expect(slow.onThread, 'slow model').to.equal(true);
    expect(background.onThread, 'a background (niced) session').to.equal(true);
    const digit = new Float32Array(28 * 28).map((_, i) => (i % 28) / 28);
    expect(Array.from((await fast.run([digit]))[0]!.probabilities)).to.deep.equal(
      Array.from((await onThread.run([digit]))[0]!.probabilities),
    );
    expect(fast.warmUp.probabilities).to.deep.equal(onThread.warmUp.probabilities);
  });

  /** Each thread of this process and its niceness (/proc/self/task/<tid>/stat, field 19). */
  function threadNiceness(): Map<number, number> {
    const out = new Map<number, number>();
    for (const tid of readdirSync('/proc/self/task')) {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      out.set(Number(tid), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]));
    }
    return out;
  }

  it('runs a background session at the niceness asked for, on its own thread only, with the same answers', async () => {
    const own = threadNiceness().get(process.pid)!;
    const before = new Set([...threadNiceness()].filter(([, n]) => n === 19).map(([tid]) => tid));
    const background = await loadModel(MODERATION_DIR, { offThread: true, niceness: 19 });
    loaded.push(background);
    const lowered = [...threadNiceness()].filter(([tid, n]) => n === 19 && !before.has(tid));
    expect(lowered, 'one new thread at niceness 19').to.have.length.of.at.least(1);
    // The process's main thread (and so production's sessions, made from it) keeps its priority.
    expect(threadNiceness().get(process.pid)).to.equal(own);
    const [a] = await offThread.run(images.slice(0, 1));
    const [b] = await background.run(images.slice(0, 1));
    expect(Array.from(b!.probabilities)).to.deep.equal(Array.from(a!.probabilities));
  });
});

/**
 * The hand-off itself (InferenceThread without loadModel), checked directly against a session on
 * the calling thread: answers as the batch size and the fetches (so the outputs' sizes) change,
 * errors per run, and a clean end however it comes (released with runs still queued: the release
 * used to overtake them, "Cannot read properties of undefined (reading 'run')"; the thread dying
 * under a run), with no unhandled rejection.
 */
describe("the inference thread's hand-off", function () {
  this.timeout(120_000);
  const digitsDir = new URL('../../models/digits', import.meta.url).pathname;
  const options: ort.InferenceSession.SessionOptions = { executionMode: 'sequential', intraOpNumThreads: 1 };
  const image = (seed: number) => new Float32Array(28 * 28).map((_, i) => ((i * (seed + 3)) % 29) / 29);
  const batchOf = (seeds: number[]) => {
    const out = new Float32Array(seeds.length * 28 * 28);
    seeds.forEach((s, i) => out.set(image(s), i * 28 * 28));
    return out;
  };
  let bytes: Buffer;
  let here: ort.InferenceSession;
  const threads: InferenceThread[] = [];
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);

  before(async () => {
    bytes = readFileSync(`${digitsDir}/model.onnx`);
    here = await ort.InferenceSession.create(bytes, options);
    process.on('unhandledRejection', onUnhandled);
  });
  after(async () => {
    process.off('unhandledRejection', onUnhandled);
    await Promise.all(threads.map((t) => t.release()));
    await here.release();
  });
  afterEach(() => expect(unhandled, 'unhandled rejections').to.deep.equal([]));

  async function start(): Promise<InferenceThread> {
    const thread = await InferenceThread.start(bytes, options);
    threads.push(thread);
    return thread;
  }
  async function onCallingThread(data: Float32Array, n: number, fetches: string[]) {
    const out = await here.run({ input: new ort.Tensor('float32', data, [n, 1, 28, 28]) }, fetches);
    return Object.fromEntries(fetches.map((f) => [f, Array.from(out[f]!.data as Float32Array)]));
  }
  const plain = (r: Record<string, Float32Array>) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Array.from(v)]));

  it('answers as the calling thread does while batch sizes and fetches change from run to run', async () => {
    const thread = await start();
    const steps: [number[], string[]][] = [
      [[1], ['probabilities']],
      [
        [2, 3, 4, 5, 6, 7, 8, 9],
        ['probabilities', 'embedding'],
      ],
      [[4], ['probabilities', 'embedding']],
      [
        [5, 6, 7],
        ['embedding', 'probabilities'],
      ],
      [[8], ['embedding']],
      [
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        ['probabilities', 'embedding'],
      ],
      [[9], ['probabilities']],
    ];
    for (const [seeds, fetches] of steps) {
      const data = batchOf(seeds);
      const got = await thread.run('input', data, [seeds.length, 1, 28, 28], fetches);
      expect(Object.keys(got), `fetches of batch ${seeds.length}`).to.deep.equal(fetches);
      expect(plain(got), `batch of ${seeds.length}, ${fetches.join('+')}`).to.deep.equal(
        await onCallingThread(data, seeds.length, fetches),
      );
    }
  });

  it('fails only the run that failed, with its message, and answers the next ones', async () => {
    const thread = await start();
    const good = batchOf([2]);
    const [a, bad, unknown, b] = await Promise.allSettled([
      thread.run('input', good, [1, 1, 28, 28], ['probabilities']),
      thread.run('input', good, [1, 1, 28, 27], ['probabilities']), // dims that do not match the data
      thread.run('input', good, [1, 1, 28, 28], ['no-such-output']),
      thread.run('input', good, [1, 1, 28, 28], ['probabilities']),
    ]);
    expect(a.status).to.equal('fulfilled');
    expect(b.status).to.equal('fulfilled');
    expect(bad.status).to.equal('rejected');
    expect(String((bad as PromiseRejectedResult).reason)).to.match(/size|length/i);
    expect(unknown.status).to.equal('rejected');
    expect(String((unknown as PromiseRejectedResult).reason)).to.match(/no-such-output/);
    const want = await onCallingThread(good, 1, ['probabilities']);
    expect(plain((a as PromiseFulfilledResult<Record<string, Float32Array>>).value)).to.deep.equal(want);
    expect(plain((b as PromiseFulfilledResult<Record<string, Float32Array>>).value)).to.deep.equal(want);
  });

  it('lets the runs under way finish when released, then refuses new ones', async () => {
    const thread = await start();
    const data = batchOf([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    const runs = [1, 2, 3].map(() => thread.run('input', data, [16, 1, 28, 28], ['probabilities']));
    const released = thread.release();
    const answers = await Promise.all(runs);
    await released;
    const want = await onCallingThread(data, 16, ['probabilities']);
    for (const answer of answers) expect(plain(answer)).to.deep.equal(want);
    let refused: unknown;
    await thread.run('input', data, [16, 1, 28, 28], ['probabilities']).catch((error: unknown) => (refused = error));
    expect(String(refused)).to.match(/released|exited/);
    await thread.release(); // a second release is harmless
  });

  it('rejects the run under way and the next ones when the thread dies, instead of waiting forever', async () => {
    const thread = await start();
    const data = batchOf([3]);
    await thread.run('input', data, [1, 1, 28, 28], ['probabilities']);
    const worker = (thread as unknown as { worker: Worker }).worker;
    const pending = thread.run('input', batchOf(Array.from({ length: 1024 }, (_, i) => i)), [1024, 1, 28, 28], ['probabilities']);
    const dying = worker.terminate();
    const outcome = await pending.then(
      () => 'answered',
      (error: unknown) => String(error),
    );
    await dying;
    // The run may have finished before the thread was stopped; if not, it says the thread exited.
    if (outcome !== 'answered') expect(outcome).to.match(/exited/);
    let next: unknown;
    await thread.run('input', data, [1, 1, 28, 28], ['probabilities']).catch((error: unknown) => (next = error));
    expect(String(next)).to.match(/exited/);
    await thread.release();
  });
});
