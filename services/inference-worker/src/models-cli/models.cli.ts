import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { MANIFEST_FILE, ModelManifest, ResizePolicy, type ModelManifestInput } from '@conveyor/shared/model/manifest';
import { measureProfile, type ProfileImage } from '@conveyor/shared/model/profile-builder';
import { REFERENCE_PROFILE_FILE } from '@conveyor/shared/model/reference-profile';
import { loadModel } from '@conveyor/shared/model/runtime';
import { loadWarmModel } from '../model/warm-up.js';
import { inspectOnnx, show } from './onnx-inspect.js';
import { PRESETS, presetSpec, type Preset } from './presets.js';

/**
 * `models add` and `models profile`: a model folder from an ONNX file, and its reference profile
 * from a folder of images, with no code. They live in the worker's package because they need what
 * the worker needs (onnxruntime to check the model answers, sharp to prepare images exactly as it
 * does), and the client package must not pull in either.
 */
export const USAGE = `usage:
  models add MODEL.onnx --name NAME --labels labels.txt|a,b,c [--preset imagenet|inception|unit]
             [--channel-order rgb|bgr] [--resize POLICY] [--input NAME] [--output NAME]
             [--output-kind probabilities|logits] [--models-dir DIR] [--force]
  models profile NAME IMAGES_DIR [--label CLASS] [--models-dir DIR]

  add      reads the ONNX graph, writes MODELS_DIR/NAME (model.onnx, manifest.json with its sha256,
           MODEL_CARD.md), loads it as a worker would, and says what it guessed.
  profile  runs IMAGES_DIR through the serving pipeline and writes MODELS_DIR/NAME/reference-profile.json.
           Images in subfolders named after labels are labelled (the profile then has an accuracy);
           --label CLASS labels a flat folder.`;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export interface AddOptions {
  readonly file: string;
  readonly name: string;
  readonly labels: string;
  readonly preset?: string;
  readonly channelOrder?: string;
  readonly resize?: string;
  readonly input?: string;
  readonly output?: string;
  readonly outputKind?: string;
  readonly modelsDir: string;
  readonly force?: boolean;
}

function readLabels(spec: string): string[] {
  const fromFile = existsSync(spec) && statSync(spec).isFile();
  const labels = (fromFile ? readFileSync(spec, 'utf8').split(/\r?\n/) : spec.split(','))
    .map((l) => l.trim())
    .filter((l) => l !== '');
  if (labels.length < 2) throw new UsageError(`--labels gave ${labels.length} label(s); a classifier has at least 2`);
  return labels;
}

function oneOf<T extends string>(what: string, value: string | undefined, allowed: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(value)) throw new UsageError(`${what} must be one of ${allowed.join(', ')}`);
  return value as T;
}

export interface AddResult {
  readonly dir: string;
  readonly manifest: ModelManifest;
  readonly report: string[];
}

export async function addModel(options: AddOptions): Promise<AddResult> {
  const name = options.name;
  if (!/^[a-z0-9][a-z0-9._-]*$/.test(name)) throw new UsageError('--name must be lowercase letters, digits, ".", "_" or "-"');
  const preset = oneOf<Preset>('--preset', options.preset, PRESETS) ?? 'imagenet';
  const channelOrder = oneOf('--channel-order', options.channelOrder, ['rgb', 'bgr'] as const);
  const resize = oneOf('--resize', options.resize, ResizePolicy.options);
  const outputKind = oneOf('--output-kind', options.outputKind, ['probabilities', 'logits'] as const);
  const labels = readLabels(options.labels);
  const bytes = readFileSync(options.file);
  const seen = inspectOnnx(bytes, {
    ...(options.input ? { input: options.input } : {}),
    ...(options.output ? { output: options.output } : {}),
  });
  if (seen.output.classes !== undefined && seen.output.classes !== labels.length)
    throw new UsageError(`output "${seen.output.name}" has ${seen.output.classes} classes, --labels gave ${labels.length}`);
  if (channelOrder === 'bgr' && seen.input.channels === 1) throw new UsageError('--channel-order bgr needs a 3-channel input');

  const dir = path.resolve(options.modelsDir, name);
  if (existsSync(path.join(dir, MANIFEST_FILE)) && !options.force)
    throw new UsageError(`${dir} already holds a model (--force to replace it)`);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const input: ModelManifestInput = {
    schema: 'conveyor.model/v1',
    name,
    version: `sha-${sha256.slice(0, 12)}`,
    description: `${path.basename(options.file)}, added with \`models add\` (preset ${preset})`,
    file: 'model.onnx',
    sha256,
    input: {
      name: seen.input.name,
      layout: seen.input.layout,
      channels: seen.input.channels,
      height: seen.input.height,
      width: seen.input.width,
    },
    output: { name: seen.output.name, kind: outputKind ?? seen.output.kind },
    preprocess: presetSpec(preset, seen.input.channels, {
      ...(channelOrder ? { channelOrder } : {}),
      ...(resize ? { resize } : {}),
    }),
    labels,
    training: {
      source: path.basename(options.file),
      addedWith: 'models add',
      ...(seen.producer ? { producer: seen.producer } : {}),
      ...(seen.opset !== undefined ? { opset: seen.opset } : {}),
    },
  };
  const manifest = ModelManifest.parse(input);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'model.onnx'), bytes);
  writeFileSync(path.join(dir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
  writeFileSync(path.join(dir, 'MODEL_CARD.md'), modelCard(manifest, preset, path.basename(options.file)));
  // As a worker would load it: checksum, names, the model-folder suite, one warm-up answer per label.
  const { model, warmUpMs } = await loadWarmModel(dir);
  await model.close();

  const { input: i, preprocess: p } = manifest;
  const report = [
    `wrote ${dir}: model.onnx, ${MANIFEST_FILE} (sha256 ${sha256.slice(0, 12)}…), MODEL_CARD.md`,
    `input   "${i.name}" [${seen.input.dims.map(show).join(', ')}]: ${i.layout}, ${i.channels} channel(s), ${i.width}×${i.height}, batch ${seen.input.dynamicBatch ? 'dynamic' : 'fixed'}`,
    `output  "${manifest.output.name}" [${seen.output.dims.map(show).join(', ')}]: ${manifest.output.kind} (${outputKind ? 'as --output-kind says' : seen.output.kindReason})`,
    `labels  ${labels.length}: ${labels.slice(0, 10).join(', ')}${labels.length > 10 ? ', …' : ''}`,
    `preset  ${preset}: resize ${p.resize}${p.resize === 'shorter-side-crop' ? ` (crop ${p.cropFraction ?? 0.875} of the shorter side)` : ''}, ${p.channelOrder ?? 'rgb'}, x·${round(p.normalize.scale)} − mean [${p.normalize.mean.map(round).join(', ')}] / std [${p.normalize.std.map(round).join(', ')}]`,
    ...seen.notes.map((n) => `note    ${n}`),
    ...(seen.otherOutputs.length
      ? [
          `note    other outputs: ${seen.otherOutputs.join(', ')} (add "embedding": "<name>" to the manifest's output to monitor one)`,
        ]
      : []),
    `check   loaded as a worker loads it; warm-up answer in ${warmUpMs} ms`,
    `next    serve it: MODELS=${name} (beside others: MODELS=digits,${name}) make run`,
    `        drift reference: npm run models -- profile ${name} DIR_OF_IMAGES (without one the monitor learns it from the first traffic)`,
  ];
  return { dir, manifest, report };
}

const round = (v: number) => Math.round(v * 1e4) / 1e4;

function modelCard(manifest: ModelManifest, preset: string, source: string): string {
  return `# ${manifest.name}

Added with \`models add\` from \`${source}\` (sha256 \`${manifest.sha256}\`). Fill in what only you know.

- **What it does**: ${manifest.labels.length} classes (${manifest.labels.slice(0, 10).join(', ')}${manifest.labels.length > 10 ? ', …' : ''}).
- **Where it comes from**: _source, licence, authors._
- **Trained on**: _dataset, and the preprocessing it used: the manifest says \`${manifest.preprocess.resize}\`, preset \`${preset}\`, channel order \`${manifest.preprocess.channelOrder ?? 'rgb'}\`: check them against the training code._
- **How good it is**: _accuracy on a held-out set; where it fails._
- **Drift reference**: \`npm run models -- profile ${manifest.name} DIR\` over images like its traffic; without one the monitor learns a reference from the first windows.
`;
}

export interface ProfileOptions {
  readonly name: string;
  readonly images: string;
  readonly label?: string;
  readonly modelsDir: string;
}

const IMAGE = /\.(png|jpe?g|webp|gif|tiff?|avif)$/i;

function collectImages(dir: string, label: string | undefined, labels: readonly string[]): ProfileImage[] {
  const images: ProfileImage[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory() && labels.includes(entry.name)) {
      for (const f of readdirSync(full).sort()) {
        if (IMAGE.test(f))
          images.push({ name: `${entry.name}/${f}`, bytes: readFileSync(path.join(full, f)), label: entry.name });
      }
    } else if (entry.isFile() && IMAGE.test(entry.name)) {
      images.push({ name: entry.name, bytes: readFileSync(full), ...(label ? { label } : {}) });
    }
  }
  return images;
}

export async function profileModel(options: ProfileOptions): Promise<{ file: string; report: string[] }> {
  const dir = path.resolve(options.modelsDir, options.name);
  const model = await loadModel(dir);
  try {
    const { labels } = model.manifest;
    if (options.label && !labels.includes(options.label)) throw new UsageError(`--label must be one of ${labels.join(', ')}`);
    const images = collectImages(path.resolve(options.images), options.label, labels);
    if (images.length === 0) throw new UsageError(`no images (${IMAGE.source}) in ${options.images}`);
    const started = performance.now();
    const { profile, predicted, skipped } = await measureProfile(model, images, {
      split: `${path.basename(path.resolve(options.images))}: ${images.length} images`,
    });
    const file = path.join(dir, REFERENCE_PROFILE_FILE);
    writeFileSync(file, `${JSON.stringify(profile, null, 2)}\n`);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    return {
      file,
      report: [
        `wrote ${file}: ${profile.dataset.n} images through the serving pipeline in ${seconds} s`,
        `predicted ${JSON.stringify(predicted)}`,
        profile.quality
          ? `accuracy ${profile.quality.accuracy.toFixed(4)} on the labelled images`
          : 'no labels: the profile has no accuracy',
        ...(profile.dataset.n < 500
          ? [`note: ${profile.dataset.n} images give coarse deciles; 500 or more keep false alarms near zero`]
          : []),
        ...skipped.map((s) => `skipped ${s.name}: ${s.problem}`),
        'restart the workers and the monitor (or wait a minute) to use it',
      ],
    };
  } finally {
    await model.close();
  }
}

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: [...rest],
    allowPositionals: true,
    options: {
      name: { type: 'string' },
      labels: { type: 'string' },
      preset: { type: 'string' },
      'channel-order': { type: 'string' },
      resize: { type: 'string' },
      input: { type: 'string' },
      output: { type: 'string' },
      'output-kind': { type: 'string' },
      'models-dir': { type: 'string' },
      label: { type: 'string' },
      force: { type: 'boolean' },
    },
  });
  const modelsDir = values['models-dir'] ?? process.env.MODELS_DIR ?? 'models';
  if (command === 'add') {
    const [file] = positionals;
    if (!file || !values.name || !values.labels) throw new UsageError('add needs MODEL.onnx, --name and --labels');
    const { report } = await addModel({
      file,
      name: values.name,
      labels: values.labels,
      modelsDir,
      ...(values.preset ? { preset: values.preset } : {}),
      ...(values['channel-order'] ? { channelOrder: values['channel-order'] } : {}),
      ...(values.resize ? { resize: values.resize } : {}),
      ...(values.input ? { input: values.input } : {}),
      ...(values.output ? { output: values.output } : {}),
      ...(values['output-kind'] ? { outputKind: values['output-kind'] } : {}),
      ...(values.force ? { force: true } : {}),
    });
    for (const line of report) console.log(line);
    return 0;
  }
  if (command === 'profile') {
    const [name, images] = positionals;
    if (!name || !images) throw new UsageError('profile needs NAME and IMAGES_DIR');
    const { report } = await profileModel({ name, images, modelsDir, ...(values.label ? { label: values.label } : {}) });
    for (const line of report) console.log(line);
    return 0;
  }
  throw new UsageError(command ? `unknown command "${command}"` : 'no command');
}
