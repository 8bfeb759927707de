import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type * as ort from 'onnxruntime-node';

/**
 * onnxruntime-node's `session.run()` blocks the thread it runs on (it only defers the native call
 * with setImmediate: microsoft/onnxruntime#19611), so a model that takes 2 s per image froze the
 * worker's event loop for 2 s per job: no BullMQ lock renewals, no Redis replies, no heartbeats,
 * no metrics. An InferenceThread holds the session on a worker thread instead and runs one batch at
 * a time, as the event loop did (so the process's CPU use and ORT_THREADS mean what they meant).
 *
 * The input travels through a SharedArrayBuffer kept for the thread's life: one memcpy in, one out
 * into the thread's own reused array (onnxruntime-node refuses SharedArrayBuffer-backed tensors),
 * no allocation per job; the outputs (a few floats) come back by structured clone. Handing the
 * outputs back through shared memory and waking each side with Atomics instead of postMessage was
 * tried and measured at ~0.02 ms of CPU less per run (docs/performance-worker.md, "The hand-off to
 * the inference thread"): not worth the extra protocol.
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

type Reply =
  | {
      id: number;
      ok: true;
      inputNames?: string[];
      outputNames?: string[];
      niceness?: number | null;
      result?: Record<string, Float32Array>;
    }
  | { id: number; ok: false; error: string };

/** The thread's code: CommonJS, evaluated, so it runs the same from the sources and from dist/. */
const THREAD_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const ort = require(workerData.ort);
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
let session;
let local = new Float32Array(0);
let shared = new Float32Array(0);
parentPort.on('message', async (m) => {
  try {
    if (m.sab) shared = new Float32Array(m.sab);
    if (m.kind === 'load') {
      session = await ort.InferenceSession.create(m.bytes, m.options);
      parentPort.postMessage({ id: m.id, ok: true, inputNames: session.inputNames, outputNames: session.outputNames, niceness });
    } else if (m.kind === 'run') {
      if (local.length !== m.length) local = new Float32Array(m.length);
      local.set(m.length === shared.length ? shared : shared.subarray(0, m.length));
      const out = await session.run({ [m.input]: new ort.Tensor('float32', local, m.dims) }, m.fetches);
      const result = {};
      for (const name of m.fetches) result[name] = out[name].data;
      parentPort.postMessage({ id: m.id, ok: true, result });
    } else if (m.kind === 'release') {
      if (session) await session.release();
      session = undefined;
      parentPort.postMessage({ id: m.id, ok: true });
    }
  } catch (error) {
    parentPort.postMessage({ id: m.id, ok: false, error: String((error && error.message) || error) });
  }
});
`;

export class InferenceThread implements InferenceEngine {
  private readonly pending = new Map<number, { resolve: (reply: Reply) => void; reject: (error: Error) => void }>();
  private nextId = 0;
  /** Runs one at a time: the shared input buffer is reused by every run. */
  private queue: Promise<unknown> = Promise.resolve();
  private input = new SharedArrayBuffer(0);
  /** Whether the thread holds `input` already: it is posted only when it was replaced (grown). */
  private inputPosted = false;
  private failure: Error | undefined;
  private released = false;
  inputNames: readonly string[] = [];
  outputNames: readonly string[] = [];
  /** The thread's niceness when one was asked for and set (null: not asked, or not on Linux). */
  niceness: number | null = null;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (reply: Reply) => {
      const waiter = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      waiter?.resolve(reply);
    });
    const fail = (error: Error) => {
      this.failure = error;
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the inference thread exited (code ${code})`)));
  }

  /** `niceness` (1–19): run the session at that lower priority (background work: a shadow model). */
  static async start(
    bytes: Uint8Array,
    options: ort.InferenceSession.SessionOptions,
    niceness?: number,
  ): Promise<InferenceThread> {
    const ortPath = createRequire(import.meta.url).resolve('onnxruntime-node');
    const thread = new InferenceThread(
      new Worker(THREAD_SOURCE, { eval: true, workerData: { ort: ortPath, niceness: niceness ?? 0 } }),
    );
    try {
      const reply = await thread.call({ kind: 'load', bytes, options });
      thread.inputNames = reply.inputNames ?? [];
      thread.outputNames = reply.outputNames ?? [];
      thread.niceness = reply.niceness ?? null;
      return thread;
    } catch (error) {
      await thread.worker.terminate();
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
    const turn = this.queue.then(async () => {
      if (this.input.byteLength < data.byteLength) {
        this.input = new SharedArrayBuffer(data.byteLength);
        this.inputPosted = false;
      }
      new Float32Array(this.input, 0, data.length).set(data);
      // The buffer itself only with the first run after it was made: a SharedArrayBuffer in a message
      // is a new handle on the other side every time, and the thread keeps the one it was given.
      const sab = this.inputPosted ? undefined : this.input;
      this.inputPosted = true;
      const reply = await this.call({ kind: 'run', sab, length: data.length, input, dims, fetches });
      return reply.result!;
    });
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    try {
      // After the runs already asked for: the thread handles messages as they come, so a release
      // posted at once overtook the queued runs (they then found no session) and could free the
      // session under the run in progress.
      await this.queue;
      if (!this.failure) await this.call({ kind: 'release' });
    } finally {
      await this.worker.terminate();
    }
  }

  private async call(message: Record<string, unknown>): Promise<Extract<Reply, { ok: true }>> {
    if (this.failure) throw this.failure;
    const id = this.nextId++;
    message.id = id;
    const reply = await new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage(message);
    });
    if (!reply.ok) throw new Error(reply.error);
    return reply;
  }
}
