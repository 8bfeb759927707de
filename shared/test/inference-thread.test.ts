import { readdirSync, readFileSync } from 'node:fs';
import { expect } from 'chai';
import { ensureModerationModel, MODERATION_DIR } from '../../scripts/models/moderation.js';
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
