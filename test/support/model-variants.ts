import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import { MANIFEST_FILE, type ModelManifest } from '@conveyor/shared/model/manifest';
import { readManifest } from '@conveyor/shared/model/runtime';
import { mulberry32 } from '../../harness/seeded-random.js';

const { onnx } = onnxProto;
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/**
 * Variants of a model folder for replay tests: a copy whose weights carry a little seeded noise (a
 * stand-in for a retrained model: same architecture, nearly the same answers) and a copy with two
 * labels swapped in its manifest (a broken release: the right network, the wrong names).
 */

/** Every float weight × (1 + relative · u), u uniform in [−1, 1); sha256 and version follow the new file. */
export async function noisyCopy(from: string, to: string, relative: number, seed: number): Promise<ModelManifest> {
  const manifest = await readManifest(from);
  const model = onnx.ModelProto.decode(await readFile(path.join(from, manifest.file)));
  const random = mulberry32(seed);
  for (const tensor of model.graph?.initializer ?? []) {
    if (tensor.dataType !== onnx.TensorProto.DataType.FLOAT || !tensor.rawData?.length) continue;
    // Copied out: rawData may sit at an offset of the file's buffer that is not 4-byte aligned.
    const weights = new Float32Array(Uint8Array.from(tensor.rawData).buffer);
    for (let i = 0; i < weights.length; i++) weights[i]! *= 1 + relative * (2 * random() - 1);
    tensor.rawData = new Uint8Array(weights.buffer);
  }
  const bytes = onnx.ModelProto.encode(model).finish();
  const digest = sha256(bytes);
  // The version is the ONNX file's content, as the trainer derives it (write-model-folder.ts).
  const next = { ...manifest, sha256: digest, version: `sha-${digest.slice(0, 12)}` };
  await mkdir(to, { recursive: true });
  await writeFile(path.join(to, manifest.file), bytes);
  await writeFile(path.join(to, MANIFEST_FILE), JSON.stringify(next, null, 2));
  return next;
}

/**
 * The same ONNX file with labels `a` and `b` swapped in the manifest. The manifest's sha256 covers
 * the ONNX file alone, so it stays right (the worker checks it at load); the version is derived from
 * the file and the labels together, so the damaged release never passes for the original.
 */
export async function labelSwappedCopy(from: string, to: string, a: string, b: string): Promise<ModelManifest> {
  const manifest = await readManifest(from);
  const bytes = await readFile(path.join(from, manifest.file));
  if (sha256(bytes) !== manifest.sha256) throw new Error(`${from}: the manifest's sha256 is not its ONNX file's`);
  const labels = manifest.labels.map((l) => (l === a ? b : l === b ? a : l));
  const version = `sha-${createHash('sha256').update(bytes).update(JSON.stringify(labels)).digest('hex').slice(0, 12)}`;
  const next = { ...manifest, labels, version };
  await mkdir(to, { recursive: true });
  await writeFile(path.join(to, manifest.file), bytes);
  await writeFile(path.join(to, MANIFEST_FILE), JSON.stringify(next, null, 2));
  return next;
}
