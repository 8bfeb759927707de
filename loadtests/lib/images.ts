import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { readManifest } from '@conveyor/shared/model/runtime';
import { pngHeaderClaiming } from '../../harness/png.js';
import { ROOT } from '../../harness/service-process.js';
import { PHOTOS, readPhoto } from '../../scripts/models/moderation.js';
import { loadMnist, splitDataset } from '../../services/trainer/src/pipeline/ingest.js';

/**
 * The load tests' image set, generated once into data/loadtests/images/ (gitignored) with a
 * manifest.json that the Locust scenario, the vegeta targets and the URL server all read:
 *
 * - valid images, each with a weight (its share of the valid traffic): held-out MNIST digits of the
 *   committed model as a user would send them (the raw 28×28 PNG, small dark-on-light scans as JPEG,
 *   WebP, an animated GIF, a transparent PNG, a whole A4 page scan) and synthetic photo-like pictures
 *   from 0.3 to 6 megapixels (JPEG, WebP, PNG, GIF, every file ≤ 3 MB, the gateway's upload limit);
 * - for the moderation model (models/moderation, `model: 'moderation'`, sent to its own route
 *   /v1/models/moderation/predict): the real CC0/public-domain photos of the scikit-image wheel
 *   (.venv/models, checked by sha256) as JPEG at their own size (451–600 px, 34–71 KB), and one
 *   enlarged to 1024 px, the size an app commonly uploads;
 * - bad inputs that must be answered 4xx: text, HTML and SVG (415), truncated JPEG and PNG (422), a
 *   PNG header declaring 20,000 × 20,000 pixels (422) and a body over the upload limit (413).
 *
 * The weights say what "realistic" means here: a digit service mostly receives small scans; a few
 * clients send phone photos and page scans, which cost the workers tens of times more CPU each.
 * Everything is seeded, so a run's inputs are the same from one machine to the next.
 */
export const IMAGE_SET_DIR = path.join(ROOT, 'data', 'loadtests', 'images');
/** Bumped whenever the set changes, so an old set on disk is regenerated. */
const GENERATOR_VERSION = 2;
const MAX_UPLOAD_BYTES = 3 * 1024 * 1024;

export type Format = 'png' | 'jpeg' | 'webp' | 'gif';

/** The models the load tests send traffic to; digits is the gateway's default model (/v1/predict). */
export const LOADTEST_MODELS = ['digits', 'moderation'] as const;
export type LoadtestModel = (typeof LOADTEST_MODELS)[number];

/** The gateway route of a model: the default model's /v1/predict, or the model's own. */
export function predictRoute(model: LoadtestModel): string {
  return model === 'digits' ? '/v1/predict' : `/v1/models/${model}/predict`;
}

export interface ValidImage {
  readonly name: string;
  readonly file: string;
  /** The model it is sent to. */
  readonly model: LoadtestModel;
  /** The gateway route for it (predictRoute(model)), written out for the Python tools. */
  readonly route: string;
  readonly kind: 'digit' | 'photo';
  readonly format: Format;
  readonly contentType: string;
  readonly width: number;
  readonly height: number;
  readonly bytes: number;
  /** Relative share of its model's valid traffic. */
  readonly weight: number;
  /** The digit drawn, for digit images. */
  readonly label?: string;
}

export interface BadInput {
  readonly name: string;
  readonly file: string;
  readonly kind: 'not-an-image' | 'truncated' | 'bomb-header' | 'oversize';
  /** What the client claims it is. */
  readonly contentType: string;
  readonly bytes: number;
  /** The status the gateway answers it with (any 4xx passes; this one is the documented one). */
  readonly expect: number;
  readonly weight: number;
}

export interface ImageSet {
  readonly generatorVersion: number;
  readonly dir: string;
  readonly valid: readonly ValidImage[];
  readonly bad: readonly BadInput[];
}

/** The image set in `dir`, generated first if it is missing or from an older generator. */
export async function ensureImageSet(dir = IMAGE_SET_DIR): Promise<ImageSet> {
  const manifestFile = path.join(dir, 'manifest.json');
  if (existsSync(manifestFile)) {
    const existing = JSON.parse(readFileSync(manifestFile, 'utf8')) as ImageSet;
    if (existing.generatorVersion === GENERATOR_VERSION && existing.dir === dir) return existing;
  }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const set = await generate(dir);
  writeFileSync(manifestFile, `${JSON.stringify(set, null, 2)}\n`);
  return set;
}

/** A small linear congruential generator: the same pixels on every machine. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
}

/** Held-out digits of the committed model (its manifest records the split), as the tests take them. */
async function heldOutDigits(count: number): Promise<{ pixels: Uint8Array; label: string }[]> {
  const manifest = await readManifest(path.join(ROOT, 'models', 'digits'));
  const recorded = manifest.training.split as { seed: number; train: number; validation: number };
  const dataset = loadMnist();
  const split = splitDataset(dataset, recorded, recorded.seed);
  return split.test.slice(0, count).map((i) => {
    const sample = dataset.samples[i]!;
    return { pixels: sample.pixels, label: dataset.labels[sample.label]! };
  });
}

/** Dark ink on light paper, upscaled from 28×28 by `side / 28` (a scan). */
function scanRaw(pixels: Uint8Array, side: number): Promise<Buffer> {
  const ink = Uint8Array.from(pixels, (v) => 255 - Math.round(v * 0.85));
  return sharp(ink, { raw: { width: 28, height: 28, channels: 1 } })
    .resize(side, side, { kernel: 'cubic' })
    .toColourspace('b-w') // libvips hands back sRGB otherwise: one byte per pixel is wanted
    .raw()
    .toBuffer();
}

/**
 * A photo-like RGB picture: a sky-to-ground gradient with soft coloured blobs, drawn at 1/8 scale and
 * upscaled (smooth areas, as in a photo), then grain at full resolution (what makes photos weigh
 * what they do once compressed). Deterministic for a seed.
 */
async function photoRaw(width: number, height: number, seed: number, grain: number): Promise<Buffer> {
  const rand = seeded(seed);
  const w = Math.ceil(width / 8);
  const h = Math.ceil(height / 8);
  const blobs = Array.from({ length: 14 }, () => ({
    x: rand() * w,
    y: rand() * h,
    r: (0.05 + rand() * 0.25) * Math.min(w, h),
    c: [rand() * 255, rand() * 255, rand() * 255],
  }));
  const small = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const t = y / h;
      const rgb = [90 + 120 * (1 - t), 140 + 60 * (1 - t) - 40 * t, 200 * (1 - t) + 60 * t];
      for (const b of blobs) {
        const d = Math.hypot(x - b.x, y - b.y) / b.r;
        const weight = d < 1 ? 1 : Math.max(0, 1 - (d - 1) * 4);
        for (let c = 0; c < 3; c++) rgb[c] = rgb[c]! * (1 - weight * 0.8) + b.c[c]! * weight * 0.8;
      }
      for (let c = 0; c < 3; c++) small[(y * w + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(rgb[c]!)));
    }
  }
  const full = await sharp(small, { raw: { width: w, height: h, channels: 3 } })
    .resize(width, height, { kernel: 'cubic' })
    .raw()
    .toBuffer();
  for (let i = 0; i < full.length; i += 3) {
    const g = (rand() - 0.5) * grain;
    for (let c = 0; c < 3; c++) full[i + c] = Math.max(0, Math.min(255, Math.round(full[i + c]! + g)));
  }
  return full;
}

/** An A4 page at 150 dpi (1240 × 1754), off-white paper with faint noise, one digit written large. */
async function pageScanRaw(pixels: Uint8Array, seed: number): Promise<Buffer> {
  const [width, height] = [1240, 1754];
  const rand = seeded(seed);
  const page = Buffer.alloc(width * height);
  for (let i = 0; i < page.length; i++) page[i] = 236 + Math.round((rand() - 0.5) * 10);
  const side = 420;
  const digit = await scanRaw(pixels, side);
  const [left, top] = [Math.round((width - side) / 2), Math.round((height - side) / 2)];
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const i = (top + y) * width + left + x;
      page[i] = Math.min(page[i]!, digit[y * side + x]!);
    }
  }
  return page;
}

const CONTENT_TYPES: Record<Format, string> = { png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp', gif: 'image/gif' };

async function generate(dir: string): Promise<ImageSet> {
  const valid: ValidImage[] = [];
  const write = async (
    entry: Omit<ValidImage, 'file' | 'bytes' | 'contentType' | 'width' | 'height' | 'model' | 'route'> & {
      model?: LoadtestModel;
    },
    bytes: Buffer,
  ): Promise<Buffer> => {
    const model = entry.model ?? 'digits';
    const file = `${entry.name}.${entry.format === 'jpeg' ? 'jpg' : entry.format}`;
    if (bytes.length > MAX_UPLOAD_BYTES) throw new Error(`${file} is ${bytes.length} B, over the upload limit`);
    writeFileSync(path.join(dir, file), bytes);
    const meta = await sharp(bytes).metadata();
    valid.push({
      ...entry,
      model,
      route: predictRoute(model),
      file,
      contentType: CONTENT_TYPES[entry.format],
      width: meta.width,
      height: meta.pageHeight ?? meta.height,
      bytes: bytes.length,
    });
    return bytes;
  };
  const digits = await heldOutDigits(6);
  const digit = (i: number) => digits[i]!;
  const [d0, d1, d2, d3, d4, d5] = [digit(0), digit(1), digit(2), digit(3), digit(4), digit(5)];
  const gray = (raw: Buffer, side: number) => sharp(raw, { raw: { width: side, height: side, channels: 1 } });

  // Digits: three quarters of the valid traffic, as small files.
  await write(
    { name: 'digit-28x28', kind: 'digit', format: 'png', weight: 15, label: d0.label },
    await sharp(d0.pixels, { raw: { width: 28, height: 28, channels: 1 } })
      .png()
      .toBuffer(),
  );
  await write(
    { name: 'digit-scan-112', kind: 'digit', format: 'jpeg', weight: 20, label: d1.label },
    await gray(await scanRaw(d1.pixels, 112), 112)
      .jpeg({ quality: 90 })
      .toBuffer(),
  );
  await write(
    { name: 'digit-scan-280', kind: 'digit', format: 'jpeg', weight: 15, label: d2.label },
    await gray(await scanRaw(d2.pixels, 280), 280)
      .jpeg({ quality: 85 })
      .toBuffer(),
  );
  await write(
    { name: 'digit-scan-84', kind: 'digit', format: 'webp', weight: 10, label: d3.label },
    await gray(await scanRaw(d3.pixels, 84), 84)
      .webp({ quality: 90 })
      .toBuffer(),
  );
  // Animated: the digit, then a blank frame; Conveyor reads the first.
  const frame = await scanRaw(d4.pixels, 84);
  await write(
    { name: 'digit-animated-84', kind: 'digit', format: 'gif', weight: 5, label: d4.label },
    await sharp(Buffer.concat([frame, Buffer.alloc(frame.length, 255)]), {
      raw: { width: 84, height: 168, channels: 1, pageHeight: 84 },
    })
      .gif({ delay: [100, 100] })
      .toBuffer(),
  );
  // Black strokes on a transparent canvas, as a drawing app exports them.
  const rgba = Buffer.alloc(28 * 28 * 4);
  d5.pixels.forEach((v, i) => rgba.set([0, 0, 0, v], i * 4));
  await write(
    { name: 'digit-drawing-84', kind: 'digit', format: 'png', weight: 5, label: d5.label },
    await sharp(rgba, { raw: { width: 28, height: 28, channels: 4 } })
      .resize(84, 84)
      .png()
      .toBuffer(),
  );
  await write(
    { name: 'page-scan-1240x1754', kind: 'digit', format: 'jpeg', weight: 5, label: d2.label },
    await sharp(await pageScanRaw(d2.pixels, 7), { raw: { width: 1240, height: 1754, channels: 1 } })
      .jpeg({ quality: 80 })
      .toBuffer(),
  );

  // Photo-like pictures: a quarter of the valid traffic, 0.15 to 6 megapixels.
  const photo = async (width: number, height: number, seed: number, grain: number) =>
    sharp(await photoRaw(width, height, seed, grain), { raw: { width, height, channels: 3 } });
  await write(
    { name: 'photo-640x480', kind: 'photo', format: 'jpeg', weight: 10 },
    await (await photo(640, 480, 11, 24)).jpeg({ quality: 85 }).toBuffer(),
  );
  await write(
    { name: 'photo-480x320', kind: 'photo', format: 'gif', weight: 4 },
    await (await photo(480, 320, 12, 8)).gif({ colours: 64 }).toBuffer(),
  );
  await write(
    { name: 'photo-1024x768', kind: 'photo', format: 'png', weight: 4 },
    await (await photo(1024, 768, 13, 6)).png({ compressionLevel: 6 }).toBuffer(),
  );
  await write(
    { name: 'photo-1600x1200', kind: 'photo', format: 'webp', weight: 4 },
    await (await photo(1600, 1200, 14, 20)).webp({ quality: 80 }).toBuffer(),
  );
  await write(
    { name: 'photo-3000x2000', kind: 'photo', format: 'jpeg', weight: 3 },
    await (await photo(3000, 2000, 15, 24)).jpeg({ quality: 88 }).toBuffer(),
  );

  // The moderation model's traffic: real photographs, as JPEG.
  for (const photo of PHOTOS) {
    await write(
      { name: `moderation-${photo.name}`, model: 'moderation', kind: 'photo', format: 'jpeg', weight: 4 },
      await sharp(readPhoto(photo.name).bytes).jpeg({ quality: 90 }).toBuffer(),
    );
  }
  await write(
    { name: 'moderation-coffee-1024', model: 'moderation', kind: 'photo', format: 'jpeg', weight: 3 },
    await sharp(readPhoto('coffee').bytes).resize({ width: 1024, kernel: 'lanczos3' }).jpeg({ quality: 90 }).toBuffer(),
  );

  // Bad inputs: what a careless or hostile client sends. Each must be answered 4xx, never 5xx.
  const bad: BadInput[] = [];
  const writeBad = (entry: Omit<BadInput, 'bytes'>, bytes: Buffer) => {
    writeFileSync(path.join(dir, entry.file), bytes);
    bad.push({ ...entry, bytes: bytes.length });
  };
  writeBad(
    { name: 'text', file: 'bad-text.txt', kind: 'not-an-image', contentType: 'text/plain', expect: 415, weight: 2 },
    Buffer.from('This is not an image, whatever the form says.\n'.repeat(20)),
  );
  writeBad(
    { name: 'html-as-png', file: 'bad-page.png', kind: 'not-an-image', contentType: 'image/png', expect: 415, weight: 1 },
    Buffer.from('<!doctype html><html><head><title>hi</title></head><body><p>hello</p></body></html>\n'),
  );
  writeBad(
    { name: 'svg', file: 'bad-drawing.svg', kind: 'not-an-image', contentType: 'image/svg+xml', expect: 415, weight: 1 },
    Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><circle cx="14" cy="14" r="9"/></svg>'),
  );
  const jpeg = readFileSync(path.join(dir, 'photo-640x480.jpg'));
  writeBad(
    { name: 'truncated-jpeg', file: 'bad-truncated.jpg', kind: 'truncated', contentType: 'image/jpeg', expect: 422, weight: 2 },
    jpeg.subarray(0, Math.floor(jpeg.length * 0.4)),
  );
  const png = readFileSync(path.join(dir, 'photo-1024x768.png'));
  writeBad(
    { name: 'truncated-png', file: 'bad-truncated.png', kind: 'truncated', contentType: 'image/png', expect: 422, weight: 1 },
    png.subarray(0, Math.floor(png.length * 0.5)),
  );
  writeBad(
    { name: 'bomb-header', file: 'bad-bomb.png', kind: 'bomb-header', contentType: 'image/png', expect: 422, weight: 1 },
    pngHeaderClaiming(20_000, 20_000),
  );
  // Starts like a JPEG, so only its size is wrong; 4 KiB over the limit.
  writeBad(
    { name: 'oversize', file: 'bad-oversize.jpg', kind: 'oversize', contentType: 'image/jpeg', expect: 413, weight: 1 },
    Buffer.concat([jpeg.subarray(0, 2), randomBytesSeeded(MAX_UPLOAD_BYTES + 4096 - 2)]),
  );
  return { generatorVersion: GENERATOR_VERSION, dir, valid, bad };
}

function randomBytesSeeded(length: number): Buffer {
  const rand = seeded(99);
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i++) bytes[i] = Math.floor(rand() * 256);
  return bytes;
}

/** The same multipart/form-data framing for every tool: the image in the `file` field. */
export function multipartBody(bytes: Buffer, filename: string, contentType: string): { body: Buffer; type: string } {
  const boundary = `conveyor-load-${randomBytes(6).toString('hex')}`;
  const head =
    `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\n` +
    `Content-Type: ${contentType}\r\n\r\n`;
  return {
    body: Buffer.concat([Buffer.from(head), bytes, Buffer.from(`\r\n--${boundary}--\r\n`)]),
    type: `multipart/form-data; boundary=${boundary}`,
  };
}

// `node --conditions=conveyor-source --import tsx loadtests/lib/images.ts [dir]`: the Locust
// scenario runs this when the set is missing (it prints the manifest's path).
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const set = await ensureImageSet(process.argv[2] ? path.resolve(process.argv[2]) : IMAGE_SET_DIR);
  console.log(path.join(set.dir, 'manifest.json'));
}
