import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { measureProfile, type MeasuredProfile, type ProfileImage } from '@conveyor/shared/model/profile-builder';
import { REFERENCE_PROFILE_FILE, type ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { loadModel } from '@conveyor/shared/model/runtime';
import { ensureModelsVenv, ensureModerationModel, MODERATION_DIR } from './moderation.js';
import { mulberry32 } from '../../harness/seeded-random.js';

/**
 * The reference profile of models/moderation, measured as the digits' is: Conveyor's own serving
 * pipeline (the bytes decoded and preprocessed by `preprocess()`, the ONNX model, `classify()` with
 * its rounding) run over labelled images, summarised by reference deciles. nsfwjs ships no training
 * or validation data, so the images are the photographs in the scikit-image wheel of .venv/models
 * whose licence its docstrings state (CC0, public domain or no copyright restrictions; moon, page
 * and the Middlebury motorcycles say nothing and are left out), all safe for work, so all labelled
 * `Neutral`. Each photo is used whole and as CROPS_PER_PHOTO seeded random crops (40–100 % of the
 * shorter side, aspect 3:4–4:3, mirrored half the time, downscaled to a long side of 224–800 px,
 * encoded as JPEG at quality 70–95 or as PNG), the ways one photo reaches an upload form.
 *
 * What it stands for: a general mix of photographs (people, animals, food, textures, space,
 * microscopy). It is not the model's training distribution, and a deployment whose traffic differs
 * (screenshots, memes, product shots) will read as drifted against it: build its own with
 * `--images <dir>` from a sample of that traffic (`--label` the class those images truly are).
 *
 *   node --conditions=conveyor-source --import tsx scripts/models/moderation-profile.ts [--images DIR --label CLASS]
 */
export const CROPS_PER_PHOTO = 60;
const SEED = 20261201;

/** scikit-image 0.26.0 photographs (skimage/data), with their sha256 (as skimage's data registry records it). */
export const PROFILE_PHOTOS: Readonly<Record<string, string>> = {
  'astronaut.png': '88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5',
  'brick.png': '7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf',
  'camera.png': 'b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a',
  'cell.png': '8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515',
  'chelsea.png': '596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb',
  'clock_motion.png': 'f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955',
  'coffee.png': 'cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7',
  'coins.png': 'f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba',
  'grass.png': 'b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89',
  'gravel.png': 'c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12',
  'hubble_deep_field.jpg': '3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4',
  'ihc.png': 'f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef',
  'microaneurysms.png': 'a1e1be59aa447f8ce082f7fa809997ab369a2b137cb6c4202abc647c7ccf6456',
  'retina.jpg': '38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6',
  'rocket.jpg': 'c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c',
  'text.png': 'bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1',
};


const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

/** The photos of the scikit-image wheel, each checked against its pinned sha256. */
function skimagePhotos(): { name: string; bytes: Buffer }[] {
  const lib = path.join(ensureModelsVenv(), 'lib');
  const python = readdirSync(lib).find((d) => d.startsWith('python3'));
  if (!python) throw new Error(`no python3.* in ${lib}`);
  const dir = path.join(lib, python, 'site-packages', 'skimage', 'data');
  return Object.entries(PROFILE_PHOTOS).map(([name, expected]) => {
    const bytes = readFileSync(path.join(dir, name));
    const actual = sha256(bytes);
    if (actual !== expected) throw new Error(`${name} has sha256 ${actual}, expected ${expected}`);
    return { name, bytes };
  });
}

function folderImages(dir: string): { name: string; bytes: Buffer }[] {
  return readdirSync(dir)
    .filter((f) => /\.(png|jpe?g|webp|gif|tiff?|avif)$/i.test(f))
    .sort()
    .map((name) => ({ name, bytes: readFileSync(path.join(dir, name)) }));
}

/** One photo as it may be uploaded: whole, then seeded crops, each re-encoded. */
async function variants(bytes: Buffer, u: () => number, crops: number): Promise<Buffer[]> {
  const { data, info } = await sharp(bytes).rotate().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  const raw = { raw: { width: info.width, height: info.height, channels: info.channels } } as const;
  const out: Buffer[] = [bytes];
  for (let i = 0; i < crops; i++) {
    const short = Math.min(info.width, info.height);
    const side = short * (0.4 + 0.6 * u());
    const aspect = 0.75 + (4 / 3 - 0.75) * u();
    const width = Math.max(8, Math.min(info.width, Math.round(side * Math.sqrt(aspect))));
    const height = Math.max(8, Math.min(info.height, Math.round(side / Math.sqrt(aspect))));
    const left = Math.floor(u() * (info.width - width + 1));
    const top = Math.floor(u() * (info.height - height + 1));
    const long = Math.round(224 + 576 * u());
    let image = sharp(data, raw).extract({ left, top, width, height });
    if (u() < 0.5) image = image.flop();
    image = image.resize({ width: long, height: long, fit: 'inside', withoutEnlargement: true });
    const jpeg = u() < 0.75;
    const quality = Math.round(70 + 25 * u());
    out.push(await (jpeg ? image.jpeg({ quality }) : image.png()).toBuffer());
  }
  return out;
}

export async function buildModerationProfile(
  options: { images?: string; label?: string } = {},
): Promise<{ profile: ReferenceProfile; predicted: Record<string, number>; bySource: Record<string, Record<string, number>> }> {
  await ensureModerationModel();
  const model = await loadModel(MODERATION_DIR);
  const { manifest } = model;
  const label = options.label ?? 'Neutral';
  if (!manifest.labels.includes(label)) throw new Error(`--label must be one of ${manifest.labels.join(', ')}`);
  const sources = options.images ? folderImages(options.images) : skimagePhotos();
  if (sources.length === 0) throw new Error(`no images in ${options.images ?? 'the scikit-image wheel'}`);
  const u = mulberry32(SEED);
  const images: ProfileImage[] = [];
  for (const source of sources) {
    const all = await variants(source.bytes, u, CROPS_PER_PHOTO);
    all.forEach((bytes, i) => images.push({ name: `${source.name}#${i}`, bytes, label }));
  }
  const hash = createHash('sha256')
    .update(JSON.stringify({ images: sources.map((s) => [s.name, sha256(s.bytes)]), seed: SEED, crops: CROPS_PER_PHOTO, label }))
    .digest('hex');
  let measured: MeasuredProfile;
  try {
    // The same measurement as `models profile` (shared/src/model/profile-builder.ts).
    measured = await measureProfile(model, images, {
      hash,
      split: options.images ? `${path.basename(options.images)}: whole and cropped` : 'scikit-image photographs: whole and cropped',
    });
  } finally {
    await model.close();
  }
  const bySource: Record<string, Record<string, number>> = {};
  for (const { name, predicted } of measured.perImage) {
    const tally = (bySource[name.slice(0, name.lastIndexOf('#'))] ??= {});
    tally[predicted] = (tally[predicted] ?? 0) + 1;
  }
  const { profile } = measured;
  return { profile, predicted: measured.predicted, bySource };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { images: { type: 'string' }, label: { type: 'string' } } });
  const started = performance.now();
  const { profile, predicted, bySource } = await buildModerationProfile({
    ...(values.images ? { images: path.resolve(values.images) } : {}),
    ...(values.label ? { label: values.label } : {}),
  });
  const file = path.join(MODERATION_DIR, REFERENCE_PROFILE_FILE);
  writeFileSync(file, `${JSON.stringify(profile, null, 2)}\n`);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  for (const [name, tally] of Object.entries(bySource)) console.log(`[moderation]   ${name.padEnd(22)} ${JSON.stringify(tally)}`);
  console.log(
    `[moderation] ${path.relative(process.cwd(), file)}: ${profile.dataset.n} images (${profile.dataset.split}) in ${seconds} s; predicted ${JSON.stringify(predicted)}; accuracy ${profile.quality?.accuracy.toFixed(4) ?? 'n/a'}`,
  );
}

// Not a top-level await: tests import this module, and one with top-level await cannot be required
// (mocha would load it as ESM, with second copies of the test fixtures it imports).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
