import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import type { ModelManifest } from '@conveyor/shared/model/manifest';
import { preprocess } from '@conveyor/shared/model/preprocess';
import { REFERENCE_PROFILE_FILE } from '@conveyor/shared/model/reference-profile';
import { loadModel, readManifest } from '@conveyor/shared/model/runtime';
import { readReferenceProfile } from '@conveyor/shared/validation/model-folder-checks';
import { ROOT } from '../../harness/service-process.js';
import { ensureVenv } from '../../harness/venv.js';
import { ensureNsfwjs, NSFWJS_VERSION } from './nsfwjs.js';

/**
 * models/moderation: the MobileNetV2 of the npm package nsfwjs, converted to ONNX at build time
 * (the repository holds the converter and the checksum, not the binary), and checked against the
 * original.
 *
 * build   .venv/models (harness/venv.sh models) and the nsfwjs package (nsfwjs.ts), then
 *         convert.py → model.onnx, whose sha256 must be the manifest's (convert.py refuses
 *         anything else); the committed reference profile must be this version's (it is
 *         measured by moderation-profile.ts).
 * verify  the original model, run by nsfwjs's own code (`NSFWJS.classify`) on @tensorflow/tfjs's
 *         pure-JS CPU backend, against onnxruntime on model.onnx, on three real photos from the
 *         scikit-image wheel in .venv/models: fed nsfwjs's own input tensor (the conversion alone)
 *         and through Conveyor's preprocessing from the PNG bytes (what the worker serves). Both
 *         must agree within 1e-4; the tfjs probabilities must equal reference-predictions.json,
 *         which the service tests compare against without tfjs (`--record` rewrites it).
 *
 *   node --conditions=conveyor-source --import tsx scripts/models/moderation.ts [--build-only] [--record]
 */
export const MODERATION_DIR = path.join(ROOT, 'models', 'moderation');
export const REFERENCE_PREDICTIONS_FILE = 'reference-predictions.json';
/** The largest |Δp| allowed between the original model and the converted one. */
export const TOLERANCE = 1e-4;

/**
 * Photos the scikit-image wheel ships (skimage/data), with the sha256 its data registry records
 * and the licence its docstrings state. Read from .venv/models, never committed.
 */
export const PHOTOS = [
  {
    name: 'chelsea',
    sha256: '596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb',
    licence: 'CC0 (photographer Stefan van der Walt), per skimage.data.chelsea',
  },
  {
    name: 'astronaut',
    sha256: '88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5',
    licence: 'public domain (NASA), per skimage.data.astronaut',
  },
  {
    name: 'coffee',
    sha256: 'cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7',
    licence: 'CC0 (photographer Rachel Michetti), per skimage.data.coffee',
  },
] as const;

export interface ReferencePrediction {
  readonly name: string;
  readonly file: string;
  readonly sha256: string;
  readonly licence: string;
  readonly width: number;
  readonly height: number;
  readonly label: string;
  /** In the manifest's label order. */
  readonly probabilities: number[];
}

export interface ReferencePredictions {
  readonly model: { readonly name: string; readonly version: string };
  readonly producedBy: string;
  readonly labels: string[];
  readonly images: ReferencePrediction[];
}

/** The converters' virtual environment (pinned numpy, onnx, scikit-image); installed once. */
export function ensureModelsVenv(): string {
  return ensureVenv('models');
}

/** A photo of PHOTOS in the venv's scikit-image, checked against its recorded sha256. */
export function readPhoto(name: string): { file: string; bytes: Buffer } {
  const photo = PHOTOS.find((p) => p.name === name);
  if (!photo) throw new Error(`no photo named ${name}`);
  const venv = ensureModelsVenv();
  const lib = path.join(venv, 'lib');
  const python = readdirSync(lib).find((d) => d.startsWith('python3'));
  if (!python) throw new Error(`no python3.* in ${lib}`);
  const file = path.join(lib, python, 'site-packages', 'skimage', 'data', `${name}.png`);
  const bytes = readFileSync(file);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  if (sha256 !== photo.sha256) throw new Error(`${file} has sha256 ${sha256}, expected ${photo.sha256}`);
  return { file, bytes };
}

function fileSha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** Converts the model and writes the folder's generated files; fails unless the sha256 is the manifest's. */
export async function buildModerationModel(): Promise<string> {
  const manifest = await readManifest(MODERATION_DIR);
  const venv = ensureModelsVenv();
  const { tfjsDir } = ensureNsfwjs();
  const convert = spawnSync(path.join(venv, 'bin', 'python'), [path.join(MODERATION_DIR, 'convert.py'), '--tfjs', tfjsDir], {
    stdio: 'inherit',
  });
  if (convert.status !== 0) throw new Error(`models/moderation/convert.py failed (exit ${String(convert.status)}; see above)`);
  const sha256 = fileSha256(path.join(MODERATION_DIR, manifest.file));
  if (sha256 !== manifest.sha256) throw new Error(`model.onnx has sha256 ${sha256}, the manifest says ${manifest.sha256}`);
  // The reference profile is committed (measured by moderation-profile.ts, a minute's work): it
  // must describe this very version, or drift would be judged against another model's outputs.
  const profile = await readReferenceProfile(MODERATION_DIR);
  if (profile?.model.name !== manifest.name || profile.model.version !== manifest.version)
    throw new Error(
      `models/moderation/${REFERENCE_PROFILE_FILE} does not describe ${manifest.name}@${manifest.version}: run make model-moderation-profile`,
    );
  return sha256;
}

/** Builds model.onnx unless it is there with the manifest's sha256 (the converter takes seconds). */
export async function ensureModerationModel(): Promise<string> {
  const manifest = await readManifest(MODERATION_DIR);
  const file = path.join(MODERATION_DIR, manifest.file);
  if (existsSync(file) && fileSha256(file) === manifest.sha256) return manifest.sha256;
  return buildModerationModel();
}

export function readReferencePredictions(): ReferencePredictions {
  return JSON.parse(readFileSync(path.join(MODERATION_DIR, REFERENCE_PREDICTIONS_FILE), 'utf8')) as ReferencePredictions;
}

/** The subset of nsfwjs's API used here (the package has no types we could import from .tools/). */
interface Nsfwjs {
  load(model: 'MobileNetV2'): Promise<{
    classify(image: tf.Tensor3D, topk: number): Promise<{ className: string; probability: number }[]>;
    dispose(): void;
  }>;
}

export interface VerifyReport {
  readonly images: (ReferencePrediction & { conversionDiff: number; pipelineDiff: number })[];
  /** max |Δp| between tfjs and onnxruntime on the same input tensor. */
  readonly conversionDiff: number;
  /** max |Δp| between tfjs (nsfwjs's preprocessing) and onnxruntime after Conveyor's preprocessing. */
  readonly pipelineDiff: number;
  /** max |Δp| between this tfjs run and reference-predictions.json (before --record). */
  readonly recordedDiff: number | undefined;
}

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  if (a.length !== b.length) return Infinity;
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
};

export async function verifyModerationModel(options: { record?: boolean } = {}): Promise<VerifyReport> {
  await ensureModerationModel();
  const manifest: ModelManifest = await readManifest(MODERATION_DIR);
  const { packageDir } = ensureNsfwjs();
  await tf.setBackend('cpu');
  // nsfwjs's own entry point resolves @tensorflow/tfjs to this project's copy: the same engine and backend.
  const nsfwjs = (await import(pathToFileURL(path.join(packageDir, 'dist', 'esm', 'index.js')).href)) as Nsfwjs;
  const original = await nsfwjs.load('MobileNetV2');
  const converted = await loadModel(MODERATION_DIR);
  const tfjsVersion = (JSON.parse(readFileSync(path.join(ROOT, 'node_modules/@tensorflow/tfjs/package.json'), 'utf8')) as { version: string })
    .version;
  try {
    const images: VerifyReport['images'][number][] = [];
    for (const photo of PHOTOS) {
      const { bytes } = readPhoto(photo.name);
      // As nsfwjs's Node example does it: the decoded RGB pixels as an int32 tensor (sharp decodes).
      const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      const image = tf.tensor3d(Int32Array.from(data), [info.height, info.width, 3], 'int32');
      const ranked = await original.classify(image, manifest.labels.length);
      const probabilities = manifest.labels.map((label) => ranked.find((r) => r.className === label)?.probability ?? NaN);
      // The input nsfwjs's infer() builds (core.js: toFloat, ÷ 255, resizeBilinear with alignCorners), as NCHW.
      const nsfwInput = tf.tidy(() =>
        tf.image
          .resizeBilinear(image.toFloat().div<tf.Tensor3D>(tf.scalar(255)), [manifest.input.height, manifest.input.width], true)
          .transpose([2, 0, 1]),
      );
      const [same] = await converted.run([Float32Array.from(await nsfwInput.data())]);
      const prepared = await preprocess({ kind: 'encoded', bytes }, manifest, { maxPixels: 40_000_000 });
      const [served] = await converted.run([prepared.tensor]);
      tf.dispose([image, nsfwInput]);
      const best = probabilities.indexOf(Math.max(...probabilities));
      images.push({
        name: photo.name,
        file: `skimage/data/${photo.name}.png`,
        sha256: photo.sha256,
        licence: photo.licence,
        width: info.width,
        height: info.height,
        label: manifest.labels[best]!,
        probabilities,
        conversionDiff: maxAbsDiff(same!.probabilities, probabilities),
        pipelineDiff: maxAbsDiff(served!.probabilities, probabilities),
      });
    }
    const recordFile = path.join(MODERATION_DIR, REFERENCE_PREDICTIONS_FILE);
    const recorded = existsSync(recordFile) ? readReferencePredictions() : undefined;
    const recordedDiff = recorded
      ? Math.max(
          ...images.map((image) => maxAbsDiff(recorded.images.find((r) => r.name === image.name)?.probabilities ?? [], image.probabilities)),
        )
      : undefined;
    const report: VerifyReport = {
      images,
      conversionDiff: Math.max(...images.map((i) => i.conversionDiff)),
      pipelineDiff: Math.max(...images.map((i) => i.pipelineDiff)),
      recordedDiff,
    };
    if (options.record || !recorded) {
      const predictions: ReferencePredictions = {
        model: { name: manifest.name, version: manifest.version },
        producedBy: `nsfwjs@${NSFWJS_VERSION} NSFWJS.classify on @tensorflow/tfjs@${tfjsVersion} (cpu backend), PNGs decoded by sharp`,
        labels: manifest.labels,
        images: images.map(({ conversionDiff: _c, pipelineDiff: _p, ...image }) => image),
      };
      writeFileSync(recordFile, `${JSON.stringify(predictions, null, 2)}\n`);
    }
    return report;
  } finally {
    original.dispose();
    await converted.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { 'build-only': { type: 'boolean' }, record: { type: 'boolean' } } });
  const sha256 = await buildModerationModel();
  console.log(`[moderation] models/moderation/model.onnx: sha256 ${sha256} (the manifest's)`);
  if (values['build-only']) return;
  const report = await verifyModerationModel({ record: values.record ?? false });
  for (const image of report.images) {
    const p = image.probabilities.map((v) => v.toFixed(6)).join(' ');
    console.log(
      `[moderation] ${image.name.padEnd(9)} ${image.label.padEnd(8)} [${p}]  |Δ| conversion ${image.conversionDiff.toExponential(1)}, serving pipeline ${image.pipelineDiff.toExponential(1)}`,
    );
  }
  const recorded = report.recordedDiff === undefined ? 'none before' : report.recordedDiff.toExponential(1);
  console.log(
    `[moderation] max |Δp| vs tfjs: conversion ${report.conversionDiff.toExponential(2)}, serving pipeline ${report.pipelineDiff.toExponential(2)} (tolerance ${TOLERANCE}); vs ${REFERENCE_PREDICTIONS_FILE}: ${recorded}`,
  );
  // Written as !(diff <= limit) so that a NaN (a label nsfwjs did not return) fails too.
  const failures = [
    !(report.conversionDiff <= TOLERANCE) && 'the converted model differs from the original',
    !(report.pipelineDiff <= TOLERANCE) && "Conveyor's preprocessing differs from nsfwjs's",
    !values.record &&
      report.recordedDiff !== undefined &&
      !(report.recordedDiff <= 1e-6) &&
      `tfjs no longer gives the probabilities in ${REFERENCE_PREDICTIONS_FILE} (--record rewrites it)`,
  ].filter((f): f is string => typeof f === 'string');
  if (failures.length > 0) throw new Error(failures.join('; '));
}

// Not a top-level await: tests import this module, and one with top-level await cannot be required
// (mocha would load it as ESM, with second copies of the test fixtures it imports).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
