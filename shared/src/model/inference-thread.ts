import { createRequire } from 'node:module';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import type * as ort from 'onnxruntime-node';

/**
 * onnxruntime-node's `session.run()` blocks the thread it runs on (it only defers the native call
 * with setImmediate: microsoft/onnxruntime#19611), so a model that takes 2 s per image froze the
 * worker's event loop for 2 s per job: no BullMQ lock renewals, no Redis replies, no heartbeats,
 * no metrics. An InferenceThread holds the session on a worker thread instead and runs one batch at
 * a time, as the event loop did (so the process's CPU use and ORT_THREADS mean what they meant).
 *
 * The hand-off per run uses no postMessage: the input goes through a SharedArrayBuffer kept for the
 * thread's life (one memcpy in, one out into the thread's own reused array: onnxruntime-node refuses
 * SharedArrayBuffer-backed tensors), the outputs come back through another one (a few floats), and
 * the two sides tell each other with Atomics on a control array: the thread sleeps in Atomics.wait
 * instead of running an event loop for 'message' events, the calling side learns of the end with
 * Atomics.waitAsync. Two postMessages, two event-loop wake-ups and a structured clone per run cost
 * ~0.3 ms of CPU (docs/performance-worker.md). What does not fit in integers (the input's name, the
 * fetches, a new buffer, an error's message) travels on a MessageChannel read synchronously with
 * receiveMessageOnPort, and only when it changed.
 */
export interface InferenceEngine {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(
    input: string,
    data: Float32Array,
    dims: readonly number[],
    fetches: readonly string[],
  ): Promise<Record<string, Float32Array>>;
  release(): Promise<void>;
}

type LoadReply =
  | { ok: true; inputNames: string[]; outputNames: string[]; niceness: number | null }
  | { ok: false; error: string };

/** The control array's slots (Int32Array over a SharedArrayBuffer). */
const CMD = 0; // calling side → thread: what to do (IDLE until asked)
const DONE = 1; // thread → calling side: how it ended (PENDING until then)
const LENGTH = 2; // the input's length in floats
const NDIMS = 3; // how many dims follow
const DIMS = 4; // the dims, up to MAX_DIMS
const MAX_DIMS = 8;
const OUT_LENGTHS = DIMS + MAX_DIMS; // one length per fetch, up to MAX_FETCHES
const MAX_FETCHES = 8;
const CONTROL_SLOTS = OUT_LENGTHS + MAX_FETCHES;

const IDLE = 0;
const RUN = 1;
const RELEASE = 2;
const PENDING = 0;
const OK = 1;
const FAILED = 2;

/** The thread's code: CommonJS, evaluated, so it runs the same from the sources and from dist/. */
const THREAD_SOURCE = `
const { parentPort, workerData, receiveMessageOnPort } = require('node:worker_threads');
const ort = require(workerData.ort);
const [CMD, DONE, LENGTH, NDIMS, DIMS, OUT_LENGTHS] = workerData.slots;
const [IDLE, RUN, RELEASE, OK, FAILED] = workerData.codes;
// A background session (a shadow model) lowers its own thread's priority before it makes its
// session, so onnxruntime's threads inherit it: Linux keeps a niceness per thread, and
// setpriority(2) given a thread id changes that thread alone (/proc/thread-self names it).
let niceness = null;
if (workerData.niceness) {
  try {
    const tid = Number(require('node:fs').readlinkSync('/proc/thread-self').split('/').pop());
    require('node:os').setPriority(tid, workerData.niceness);
    niceness = require('node:os').getPriority(tid);
  } catch {
    niceness = null;
  }
}
const control = new Int32Array(workerData.control);
const port = workerData.port;
let session;
let local = new Float32Array(0);
let shared = new Float32Array(0);
let output = new Float32Array(0);
let input = '';
let fetches = [];
parentPort.once('message', async (m) => {
  try {
    session = await ort.InferenceSession.create(m.bytes, m.options);
    parentPort.postMessage({ ok: true, inputNames: session.inputNames, outputNames: session.outputNames, niceness });
  } catch (error) {
    parentPort.postMessage({ ok: false, error: String((error && error.message) || error) });
    return;
  }
  // From here on the thread sleeps in Atomics.wait between runs: no event loop turns for a message.
  // (It turns only inside session.run, which defers the native call with setImmediate.)
  for (;;) {
    while (Atomics.load(control, CMD) === IDLE) Atomics.wait(control, CMD, IDLE);
    const cmd = Atomics.exchange(control, CMD, IDLE);
    if (cmd === RELEASE) {
      try { await session.release(); } catch {}
      Atomics.store(control, DONE, OK);
      Atomics.notify(control, DONE);
      parentPort.close();
      return;
    }
    let done = OK;
    try {
      for (let change; (change = receiveMessageOnPort(port)); ) {
        const c = change.message;
        if (c.input !== undefined) shared = new Float32Array(c.input);
        if (c.output !== undefined) output = new Float32Array(c.output);
        if (c.name !== undefined) input = c.name;
        if (c.fetches !== undefined) fetches = c.fetches;
      }
      const length = control[LENGTH];
      const dims = Array.from(control.subarray(DIMS, DIMS + control[NDIMS]));
      if (local.length !== length) local = new Float32Array(length);
      local.set(length === shared.length ? shared : shared.subarray(0, length));
      const out = await session.run({ [input]: new ort.Tensor('float32', local, dims) }, fetches);
      let total = 0;
      for (const name of fetches) total += out[name].data.length;
      // A bigger answer than the buffer holds (the first run, a bigger batch): a new buffer, sent
      // along; the calling side takes it before it reads.
      if (total > output.length) {
        output = new Float32Array(new SharedArrayBuffer(total * 4));
        port.postMessage({ output: output.buffer });
      }
      let at = 0;
      fetches.forEach((name, i) => {
        const data = out[name].data;
        output.set(data, at);
        control[OUT_LENGTHS + i] = data.length;
        at += data.length;
      });
    } catch (error) {
      done = FAILED;
      port.postMessage({ error: String((error && error.message) || error) });
    }
    Atomics.store(control, DONE, done);
    Atomics.notify(control, DONE);
  }
});
`;

export class InferenceThread implements InferenceEngine {
  /** Runs one at a time: the shared buffers and the control array serve every run. */
  private queue: Promise<unknown> = Promise.resolve();
  private input = new Float32Array(new SharedArrayBuffer(0));
  private output = new Float32Array(0);
  /** The name and fetches the thread holds: sent only when they change. */
  private sentName: string | undefined;
  private sentFetches: readonly string[] | undefined;
  private failure: Error | undefined;
  /** Settles when the thread fails or exits: a run waiting on the control array stops waiting. */
  private readonly failed: Promise<never>;
  private released = false;
  inputNames: readonly string[] = [];
  outputNames: readonly string[] = [];
  /** The thread's niceness when one was asked for and set (null: not asked, or not on Linux). */
  niceness: number | null = null;

  private constructor(
    private readonly worker: Worker,
    private readonly port: MessagePort,
    private readonly control: Int32Array,
  ) {
    this.failed = new Promise<never>((_, reject) => {
      const fail = (error: Error) => {
        this.failure ??= error;
        reject(this.failure);
      };
      worker.on('error', fail);
      worker.on('exit', (code) => fail(new Error(`the inference thread exited (code ${code})`)));
    });
    // Nobody may be waiting when the thread fails; the failure is rethrown to the next caller.
    this.failed.catch(() => undefined);
  }

  /** `niceness` (1–19): run the session at that lower priority (background work: a shadow model). */
  static async start(
    bytes: Uint8Array,
    options: ort.InferenceSession.SessionOptions,
    niceness?: number,
  ): Promise<InferenceThread> {
    const ortPath = createRequire(import.meta.url).resolve('onnxruntime-node');
    const { port1, port2 } = new MessageChannel();
    const control = new SharedArrayBuffer(CONTROL_SLOTS * 4);
    const worker = new Worker(THREAD_SOURCE, {
      eval: true,
      workerData: {
        ort: ortPath,
        niceness: niceness ?? 0,
        control,
        port: port2,
        slots: [CMD, DONE, LENGTH, NDIMS, DIMS, OUT_LENGTHS],
        codes: [IDLE, RUN, RELEASE, OK, FAILED],
      },
      transferList: [port2],
    });
    const thread = new InferenceThread(worker, port1, new Int32Array(control));
    try {
      const reply = await Promise.race([
        new Promise<LoadReply>((resolve) => {
          worker.once('message', resolve);
          worker.postMessage({ bytes, options });
        }),
        thread.failed,
      ]);
      if (!reply.ok) throw new Error(reply.error);
      thread.inputNames = reply.inputNames;
      thread.outputNames = reply.outputNames;
      thread.niceness = reply.niceness;
      return thread;
    } catch (error) {
      port1.close();
      await worker.terminate();
      throw error;
    }
  }

  run(
    input: string,
    data: Float32Array,
    dims: readonly number[],
    fetches: readonly string[],
  ): Promise<Record<string, Float32Array>> {
    // Runs asked for before release() still run; none after it.
    if (this.released) return Promise.reject(new Error('the inference thread was released'));
    const turn = this.queue.then(() => this.runNow(input, data, dims, fetches));
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  private async runNow(
    input: string,
    data: Float32Array,
    dims: readonly number[],
    fetches: readonly string[],
  ): Promise<Record<string, Float32Array>> {
    if (this.failure) throw this.failure;
    if (dims.length > MAX_DIMS) throw new Error(`at most ${MAX_DIMS} dims, got ${dims.length}`);
    if (fetches.length > MAX_FETCHES) throw new Error(`at most ${MAX_FETCHES} outputs, got ${fetches.length}`);
    const change: { input?: SharedArrayBuffer; name?: string; fetches?: readonly string[] } = {};
    if (this.input.length < data.length) {
      this.input = new Float32Array(new SharedArrayBuffer(data.byteLength));
      change.input = this.input.buffer as SharedArrayBuffer;
    }
    if (input !== this.sentName) change.name = this.sentName = input;
    if (fetches !== this.sentFetches && !sameNames(fetches, this.sentFetches)) {
      change.fetches = [...fetches];
    }
    this.sentFetches = fetches;
    // A SharedArrayBuffer in a message is a new handle on the other side every time: each is sent
    // once, when it is made, and the thread keeps it.
    if (Object.keys(change).length > 0) this.port.postMessage(change);
    this.input.set(data);
    const control = this.control;
    control[LENGTH] = data.length;
    control[NDIMS] = dims.length;
    dims.forEach((d, i) => (control[DIMS + i] = d));
    Atomics.store(control, DONE, PENDING);
    Atomics.store(control, CMD, RUN);
    Atomics.notify(control, CMD);
    const done = await this.ended();
    const changes = this.drain();
    if (done === FAILED) throw new Error(changes.error ?? 'the inference thread failed');
    if (changes.output) this.output = new Float32Array(changes.output);
    const result: Record<string, Float32Array> = {};
    let at = 0;
    fetches.forEach((name, i) => {
      const length = control[OUT_LENGTHS + i]!;
      result[name] = this.output.slice(at, at + length);
      at += length;
    });
    return result;
  }

  /** Waits, off the event loop's message queue, until the thread sets DONE. */
  private async ended(): Promise<number> {
    const wait = Atomics.waitAsync(this.control, DONE, PENDING);
    if (wait.async) await Promise.race([wait.value, this.failed]);
    return Atomics.load(this.control, DONE);
  }

  private drain(): { output?: SharedArrayBuffer; error?: string } {
    const out: { output?: SharedArrayBuffer; error?: string } = {};
    for (let m; (m = receiveMessageOnPort(this.port)); ) Object.assign(out, m.message);
    return out;
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    try {
      // After the run under way, if any (its caller gets its answer); then the session's release.
      await this.queue;
      if (!this.failure) {
        Atomics.store(this.control, DONE, PENDING);
        Atomics.store(this.control, CMD, RELEASE);
        Atomics.notify(this.control, CMD);
        await this.ended();
      }
    } catch {
      // The thread failed: nothing left to release but the thread itself.
    } finally {
      this.port.close();
      await this.worker.terminate();
    }
  }
}

function sameNames(a: readonly string[], b: readonly string[] | undefined): boolean {
  return b !== undefined && a.length === b.length && a.every((name, i) => name === b[i]);
}
