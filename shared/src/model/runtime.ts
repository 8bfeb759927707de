import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Prediction } from '../contract/common.contract.js';
import { InferenceThread, type InferenceEngine } from './inference-thread.js';
import { MANIFEST_FILE, ModelManifest } from './manifest.js';

/**
 * A loaded model: its manifest and an onnxruntime session. Shared by the worker (serving) and the
 * trainer (offline evaluation), so both score an ONNX file with exactly the same code.
 */
export interface ModelOutput {
  probabilities: Float32Array;
  embedding?: Float32Array;
}

export interface LoadedModel {
  readonly manifest: ModelManifest;
  readonly dir: string;
  /** Width of the probability output, measured by the warm-up inference. */
  readonly outputSize: number;
  /**
   * The warm-up inference loadModel runs before it returns: zeros of the manifest's input shape,
   * so onnxruntime's first-run allocations are not paid by a request; its time and output.
   */
  readonly warmUp: { readonly ms: number; readonly probabilities: Float32Array };
  /**
   * Whether the session runs on a worker thread of its own (LoadOptions.offThread, unless the model
   * was fast enough to stay on the calling thread: LoadOptions.callingThreadUpToMs). Absent: no.
   */
  readonly onThread?: boolean;
  /** Runs a batch of preprocessed images (each laid out as the model's input without batch axis). */
  run(images: readonly Float32Array[]): Promise<ModelOutput[]>;
  close(): Promise<void>;
}

export interface LoadOptions {
  /** onnxruntime intra-op threads. 1 per process, scaled by processes, gave the best throughput. */
  readonly threads?: number;
  /**
   * Run the session on a worker thread of its own (InferenceThread), so a slow model does not
   * block the caller's event loop; default: on the calling thread.
   */
  readonly offThread?: boolean;
  /**
   * With offThread (and no niceness): a model that answers one image within this many milliseconds
   * (the fastest of a few timed runs after the warm-up) is moved back to the calling thread. The
   * thread hop costs a fixed ~0.3 ms of CPU per run (two thread wake-ups, a second event loop):
   * more than such a model's whole run, and blocking the event loop that briefly stalls nothing.
   * 0 or absent: every model stays on its thread.
   */
  readonly callingThreadUpToMs?: number;
  /**
   * With offThread: run that thread (and onnxruntime's threads it makes) at this niceness, 1–19, so
   * the kernel serves the process's other threads first. For background sessions (a shadow model).
   */
  readonly niceness?: number;
}

export class ModelLoadError extends Error {
  override readonly name = 'ModelLoadError';
}

export async function readManifest(dir: string): Promise<ModelManifest> {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new ModelLoadError(`cannot read ${file}: ${(error as Error).message}`);
  }
  const parsed = ModelManifest.safeParse(JSON.parse(text));
  if (!parsed.success) {
    throw new ModelLoadError(
      `invalid manifest ${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  }
  return parsed.data;
}

/** The inputs and outputs the manifest names are the model's. */
function checkNames({ input, output }: ModelManifest, session: InferenceEngine): void {
  for (const name of [output.name, ...(output.embedding ? [output.embedding] : [])]) {
    if (!session.outputNames.includes(name)) {
      throw new ModelLoadError(`the manifest names output "${name}", the model has ${session.outputNames.join(', ')}`);
    }
  }
  if (!session.inputNames.includes(input.name)) {
    throw new ModelLoadError(`the manifest names input "${input.name}", the model has ${session.inputNames.join(', ')}`);
  }
}

export function sessionOptionsFor(options: LoadOptions): ort.InferenceSession.SessionOptions {
  return {
    intraOpNumThreads: options.threads ?? 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    // Idle onnxruntime threads spin by default and burn a core each; serving processes share cores.
    extra: { session: { 'intra_op.allow_spinning': '0', 'inter_op.allow_spinning': '0' } },
  };
}

export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const manifest = await readManifest(dir);
  const bytes = await readFile(path.join(dir, manifest.file));
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  if (sha256 !== manifest.sha256) {
    throw new ModelLoadError(`${manifest.file} in ${dir} has sha256 ${sha256}, the manifest says ${manifest.sha256}`);
  }
  const sessionOptions = sessionOptionsFor(options);
  let session = options.offThread
    ? await InferenceThread.start(bytes, sessionOptions, options.niceness)
    : await inCallingThread(bytes, sessionOptions);
  const { input, output } = manifest;
  checkNames(manifest, session);
  const imageSize = input.channels * input.height * input.width;
  const dims = (n: number) =>
    input.layout === 'NCHW' ? [n, input.channels, input.height, input.width] : [n, input.height, input.width, input.channels];
  const fetches = output.embedding ? [output.name, output.embedding] : [output.name];

  let warmUp: LoadedModel['warmUp'] = { ms: 0, probabilities: new Float32Array() };
  const model: LoadedModel = {
    manifest,
    dir,
    get onThread() {
      return session instanceof InferenceThread;
    },
    get outputSize() {
      return warmUp.probabilities.length;
    },
    get warmUp() {
      return warmUp;
    },
    async run(images) {
      if (images.length === 0) return [];
      for (const image of images) {
        if (image.length !== imageSize) throw new Error(`expected ${imageSize} values per image, got ${image.length}`);
      }
      // One image (what a worker runs) is its own batch: passed through, not copied.
      let batch = images[0]!;
      if (images.length > 1) {
        batch = new Float32Array(images.length * imageSize);
        images.forEach((image, i) => batch.set(image, i * imageSize));
      }
      const results = await session.run(input.name, batch, dims(images.length), fetches);
      const scores = results[output.name]!;
      const classes = scores.length / images.length;
      const embedding = output.embedding ? results[output.embedding] : undefined;
      const width = embedding ? embedding.length / images.length : 0;
      return images.map((_, i) => {
        const row = scores.slice(i * classes, (i + 1) * classes);
        return {
          probabilities: output.kind === 'logits' ? softmax(row) : row,
          ...(embedding ? { embedding: embedding.slice(i * width, (i + 1) * width) } : {}),
        };
      });
    },
    async close() {
      await session.release();
    },
  };
  // The first run allocates and plans; do it now so the first request does not pay for it.
  const started = performance.now();
  const [warm] = await model.run([new Float32Array(imageSize)]);
  warmUp = { ms: Math.round((performance.now() - started) * 100) / 100, probabilities: warm!.probabilities };
  const upToMs = options.callingThreadUpToMs ?? 0;
  if (
    session instanceof InferenceThread &&
    !options.niceness &&
    upToMs > 0 &&
    (await fastestRunMs(model, imageSize, upToMs)) <= upToMs
  ) {
    const thread = session;
    session = await inCallingThread(bytes, sessionOptions);
    await thread.release();
    await model.run([new Float32Array(imageSize)]); // this session's own first-run allocations
  }
  return model;
}

/**
 * The fastest of up to five runs of one zero image (wall-clock, so a loaded machine can only make a
 * model look slower, never faster), stopping at the first within `upToMs`. A warm-up far above the
 * bound (a model of seconds) is not timed again: it would only delay the start.
 */
async function fastestRunMs(model: LoadedModel, imageSize: number, upToMs: number): Promise<number> {
  if (model.warmUp.ms > upToMs * 50) return model.warmUp.ms;
  let fastest = Infinity;
  const image = new Float32Array(imageSize);
  for (let i = 0; i < 5 && fastest > upToMs; i++) {
    const started = performance.now();
    await model.run([image]);
    fastest = Math.min(fastest, performance.now() - started);
  }
  return fastest;
}

async function inCallingThread(bytes: Uint8Array, options: ort.InferenceSession.SessionOptions): Promise<InferenceEngine> {
  const session = await ort.InferenceSession.create(bytes, options);
  return {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    async run(input, data, dims, fetches) {
      const results = await session.run({ [input]: new ort.Tensor('float32', data, dims) }, [...fetches]);
      return Object.fromEntries(fetches.map((name) => [name, results[name]!.data as Float32Array]));
    },
    release: () => session.release(),
  };
}

export function softmax(logits: Float32Array): Float32Array {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  const out = new Float32Array(logits.length);
  let sum = 0;
  logits.forEach((v, i) => {
    const e = Math.exp(v - max);
    out[i] = e;
    sum += e;
  });
  for (let i = 0; i < out.length; i++) out[i] = out[i]! / sum;
  return out;
}

/** Models with at most this many classes answer with all of them unless told otherwise. */
export const ALL_CLASSES_UP_TO = 10;
/** How many classes a larger model lists by default. */
export const DEFAULT_TOP_K = 5;

/**
 * How many classes `prediction.top` lists for a model: its manifest's `topK`, else the deployment's
 * TOP_K, else every class of a model with up to ALL_CLASSES_UP_TO (a 5-way moderation model's whole
 * distribution), DEFAULT_TOP_K of a larger one (ImageNet's 1,000 would make every answer 40 KB).
 */
export function topKFor(manifest: Pick<ModelManifest, 'labels' | 'topK'>, configured: number | undefined): number {
  const k = manifest.topK ?? configured ?? (manifest.labels.length <= ALL_CLASSES_UP_TO ? manifest.labels.length : DEFAULT_TOP_K);
  return Math.min(k, manifest.labels.length);
}

export function classify(probabilities: Float32Array, labels: readonly string[], topK = 3): Prediction {
  const ranked = Array.from(probabilities, (confidence, index) => ({ index, confidence }))
    .sort((a, b) => b.confidence - a.confidence)
    .slice(0, Math.min(topK, labels.length));
  const best = ranked[0]!;
  const round = (v: number) => Math.round(v * 1e6) / 1e6;
  return {
    label: labels[best.index] ?? String(best.index),
    index: best.index,
    confidence: round(best.confidence),
    top: ranked.map((r) => ({ label: labels[r.index] ?? String(r.index), confidence: round(r.confidence) })),
  };
}
