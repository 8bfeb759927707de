import sharp, { type Sharp } from 'sharp';
import type { ImageDescriptors } from '../contract/common.contract.js';
import { ProblemError } from '../problem.js';
import { embeddedIccProfile, isSrgbProfile } from './icc.js';
import { checkDimensions } from './limits.js';
import type { ModelManifest, PreprocessSpec } from './manifest.js';

/**
 * Image → model tensor. The trainer runs its training and evaluation data through this very
 * function, and the worker runs every upload through it, so what the model sees in production is
 * by construction what it saw in training.
 */

/** Uncompressed 8-bit pixels, as the trainer holds its dataset. */
export interface RawImage {
  readonly kind: 'raw';
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3 | 4;
}

/** The bytes of an image file in one of the accepted formats (`ImageFormat`), as uploaded. */
export interface EncodedImage {
  readonly kind: 'encoded';
  readonly bytes: Buffer;
}

export type ImageInput = RawImage | EncodedImage;

export interface Prepared {
  /**
   * One image, laid out as the model's input (without the batch dimension). With a `workspace`,
   * a view of the workspace's memory: valid until the workspace is used for the next image.
   */
  readonly tensor: Float32Array;
  /** Published with every prediction for drift monitoring (the contract's schema). */
  readonly descriptors: ImageDescriptors;
}

export interface PreprocessOptions {
  /** Refuse images with more pixels than this before decoding them (decompression bombs). */
  readonly maxPixels: number;
  /** Refuse images with a longer side, or a more extreme aspect ratio, before decoding them. */
  readonly maxSide?: number;
  readonly maxAspectRatio?: number;
  /**
   * The budget for the whole of it, in ms of this process's CPU time (shared out between the
   * preprocessings in flight; see withDeadline); past it the image is a permanent problem.
   */
  readonly timeoutMs?: number;
  /** Buffers to reuse instead of allocating fresh ones per image (one workspace per concurrent job). */
  readonly workspace?: Workspace;
  /** The upright size, when the caller already read it from the header (saves a libvips call). */
  readonly size?: { readonly width: number; readonly height: number };
}

/**
 * The typed arrays one image needs, kept between images by whoever runs one image at a time (a
 * worker slot), so a job allocates no fresh megabytes: the resampled floats, their 8-bit copy,
 * the luma plane and the tensor. (sharp's decoded pixels are still a fresh Buffer per image:
 * sharp has no way to decode into a given buffer.) Not for images in parallel.
 */
export class Workspace {
  private readonly arrays = new Map<string, Float32Array | Uint8Array>();

  floats(role: 'resampled' | 'tensor', length: number): Float32Array {
    const held = this.arrays.get(role);
    if (held instanceof Float32Array && held.length === length) return held;
    const fresh = new Float32Array(length);
    this.arrays.set(role, fresh);
    return fresh;
  }

  bytes(role: 'pixels' | 'luma', length: number): Uint8Array {
    const held = this.arrays.get(role);
    if (held instanceof Uint8Array && held.length === length) return held;
    const fresh = new Uint8Array(length);
    this.arrays.set(role, fresh);
    return fresh;
  }
}

/** `shorter-side-crop` without a cropFraction: torchvision's 224 of 256. */
export const DEFAULT_CROP_FRACTION = 0.875;
/** The digit policy works on a copy at most this many times the model's input side. */
const WORKING_SCALE = 4;
/** Images up to this many times the working side are decoded in full and shrunk in JS (see workingGray). */
const JS_SHRINK_LIMIT = 4;
/** After contrast stretching, gray levels below this are paper or sensor noise, not ink. */
const INK_FLOOR = 26;

export async function preprocess(
  input: ImageInput,
  manifest: Pick<ModelManifest, 'input' | 'preprocess'>,
  options: PreprocessOptions,
): Promise<Prepared> {
  const spec = manifest.preprocess;
  const { width, height } = manifest.input;
  try {
    const { source, warnings } = open(input, options);
    const oriented =
      input.kind === 'raw'
        ? { width: input.width, height: input.height }
        : (options.size ?? (await source.metadata()).autoOrient);
    checkDimensions(oriented.width, oriented.height, {
      maxPixels: options.maxPixels,
      maxSide: options.maxSide ?? Infinity,
      maxAspectRatio: options.maxAspectRatio ?? Infinity,
    });
    const workspace = options.workspace;
    const prepared = await withDeadline(
      spec.resize === 'digit'
        ? digitPipeline(source, oriented, manifest, spec, workspace)
        : framePipeline(source, oriented, manifest, spec, width, height, isJpeg(input), workspace),
      options.timeoutMs,
    );
    const truncated = warnings.find((w) => TRUNCATED.test(w));
    if (truncated)
      throw new ProblemError('undecodable-image', `The image is truncated: ${truncated.replace(/^\w+: /, '').trim()}`);
    return prepared;
  } catch (error) {
    throw asProblem(error);
  }
}

/**
 * libvips' `failOn: 'truncated'` catches a file cut short, but not compressed data that ends before
 * the pixels its header declares (a JPEG patched to say 6000×6000 over 28×28 of data decodes as
 * grey fill, with this warning only). Other warnings (extraneous bytes, odd markers: common in
 * real cameras' files) stay tolerated.
 */
const TRUNCATED = /premature end|truncated|unexpected end/i;

function open(input: ImageInput, options: PreprocessOptions): { source: Sharp; warnings: string[] } {
  const warnings: string[] = [];
  const source =
    input.kind === 'raw'
      ? sharp(input.data, {
          raw: { width: input.width, height: input.height, channels: input.channels },
          limitInputPixels: options.maxPixels,
        })
      : // `truncated` rejects images cut short in transit but tolerates the benign warnings many real
        // cameras and editors produce (see TRUNCATED); GIFs and TIFFs decode their first frame or page
        // only. An embedded sRGB profile is not applied: converting sRGB to sRGB changes no pixel
        // and cost ~4 ms per photo (any other profile is still applied; see icc.ts).
        sharp(input.bytes, {
          failOn: 'truncated',
          limitInputPixels: options.maxPixels,
          pages: 1,
          ignoreIcc: hasSrgbProfile(input.bytes),
        });
  source.on('warning', (message: string) => warnings.push(message));
  // A wall-clock backstop so abandoned libvips work ends: libvips stops a pipeline past its timeout
  // when it next reports progress (some pipelines seldom do: withDeadline() bounds the job either
  // way). It is wall-clock, counted from when the pipeline starts, so it is set past the CPU budget
  // (WALL_BACKSTOP ×), and when it fires before the budget was spent the process was paused or
  // starved, not the image's fault: withDeadline() makes that a transient failure (retried).
  if (options.timeoutMs) source.timeout({ seconds: Math.ceil((WALL_BACKSTOP * options.timeoutMs) / 1000) });
  return { source, warnings };
}

function hasSrgbProfile(bytes: Buffer): boolean {
  const icc = embeddedIccProfile(bytes);
  return icc !== undefined && isSrgbProfile(icc);
}

function isJpeg(input: ImageInput): boolean {
  return input.kind === 'encoded' && input.bytes[0] === 0xff && input.bytes[1] === 0xd8 && input.bytes[2] === 0xff;
}

const DEADLINE = Symbol('deadline');
/** libvips' own (wall-clock) timeout is this many times the CPU budget. */
const WALL_BACKSTOP = 3;
/** Preprocessings in flight in this process: they share its CPU time (see withDeadline). */
let inFlight = 0;

function cpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

/**
 * The job's answer does not wait past its budget, and the budget is CPU time, not wall-clock
 * time: a valid image that waits for a libuv thread behind other work, or whose process is paused
 * (SIGSTOP, a frozen VM, a throttled container) or starved by its neighbours, spends no CPU
 * meanwhile and is not refused for it. The process's CPU time (every thread: libvips', the event
 * loop's, onnxruntime's) is charged in equal shares to the preprocessings in flight, sampled
 * every tick; that over-charges (inference of other jobs counts too), never under-charges an image
 * that burns CPU itself. The libvips work itself cannot be cancelled from here; it ends when it
 * finishes or at libvips' own (wall-clock) backstop, on a libuv thread.
 */
async function withDeadline<T>(work: Promise<T>, timeoutMs: number | undefined): Promise<T> {
  if (!timeoutMs) return work;
  let timer: NodeJS.Timeout | undefined;
  let charged = 0;
  inFlight++;
  const tick = Math.max(5, timeoutMs / 20);
  const expired = new Promise<typeof DEADLINE>((resolve) => {
    let last = cpuMs();
    const check = () => {
      const now = cpuMs();
      charged += (now - last) / Math.max(1, inFlight);
      last = now;
      if (charged >= timeoutMs) resolve(DEADLINE);
      else timer = setTimeout(check, Math.min(tick, timeoutMs - charged));
    };
    timer = setTimeout(check, Math.min(tick, timeoutMs));
  });
  try {
    const outcome = await Promise.race([work, expired]).catch((error: unknown) => {
      // libvips' wall-clock backstop, with the CPU budget unspent: paused or starved, retry it.
      if (isLibvipsTimeout(error) && charged < timeoutMs) {
        throw new PausedError(
          `libvips stopped at its wall-clock backstop after ${Math.round(charged)} of ${timeoutMs} ms of CPU: the process was paused or starved`,
        );
      }
      throw error;
    });
    if (outcome === DEADLINE) {
      work.catch(() => undefined); // settles later, unobserved
      throw new ProblemError(
        'processing-deadline',
        `Preparing the image took longer than ${timeoutMs} ms of CPU time; send a smaller or simpler image`,
        { deadlineMs: timeoutMs },
      );
    }
    return outcome;
  } finally {
    inFlight--;
    clearTimeout(timer);
  }
}

/** Transient: the image did not spend its budget; another attempt may well succeed. */
export class PausedError extends Error {
  override readonly name = 'PausedError';
}

function isLibvipsTimeout(error: unknown): boolean {
  return error instanceof Error && /^timeout/i.test(error.message);
}

function asProblem(error: unknown): unknown {
  if (error instanceof ProblemError || error instanceof PausedError) return error;
  const message = error instanceof Error ? error.message : String(error);
  if (/^timeout/i.test(message)) {
    return new ProblemError(
      'processing-deadline',
      'Decoding the image took longer than the deadline allows; send a smaller or simpler image',
    );
  }
  if (/pixel limit/i.test(message)) {
    return new ProblemError('image-too-large', 'The image has more pixels than the configured limit');
  }
  // Everything sharp throws about a given input is about that input: a retry cannot fix it.
  return new ProblemError('undecodable-image', message.replace(/^Input (buffer|file) /, 'The image '));
}

async function digitPipeline(
  source: Sharp,
  oriented: { width: number; height: number },
  manifest: Pick<ModelManifest, 'input'>,
  spec: PreprocessSpec,
  workspace: Workspace | undefined,
): Promise<Prepared> {
  const side = Math.max(manifest.input.width, manifest.input.height) * WORKING_SCALE;
  const working = await workingGray(source, oriented, side);
  const gray = working.data;
  const { brightness, contrast } = meanAndStd(gray);
  const inverted = normalisePolarity(gray, working.width, working.height, spec.polarity);
  const ink = stretchInk(gray);

  const field = new Uint8Array(manifest.input.width * manifest.input.height);
  const box = bounds(ink, working.width, working.height);
  if (box) {
    const crop = cropGray(ink, working.width, box);
    const fitted = fitIntoBox(crop, box.w, box.h, spec.box ?? manifest.input.width);
    placeByCentreOfMass(fitted.data, fitted.width, fitted.height, field, manifest.input.width, manifest.input.height);
  }
  let inkPixels = 0;
  for (let i = 0; i < field.length; i++) if (field[i]! > INK_FLOOR) inkPixels++;
  return {
    tensor: toTensor(field, 1, manifest.input.width, manifest.input.height, manifest.input.layout, spec, false, workspace),
    descriptors: {
      width: oriented.width,
      height: oriented.height,
      brightness,
      contrast,
      inkRatio: round4(inkPixels / field.length),
      inverted,
    },
  };
}

/**
 * The gray working copy, at most `side` pixels on its longer side, from one libvips pipeline.
 *
 * Up to JS_SHRINK_LIMIT × `side`, the image is decoded at full size and shrunk here by an integer
 * box average: a libvips resize of a small image costs ~0.5 ms more than its whole decode (sharp
 * opens the image a second time to shrink it on load), the box average ~0.1 ms (measured with
 * bench/preprocess.bench.ts). Larger images are shrunk by libvips, which decodes a JPEG at 1/2,
 * 1/4 or 1/8 scale straight away.
 */
async function workingGray(
  source: Sharp,
  oriented: { width: number; height: number },
  side: number,
): Promise<{ data: Uint8Array; width: number; height: number }> {
  const longer = Math.max(oriented.width, oriented.height);
  const pipeline = source.autoOrient();
  if (longer > side * JS_SHRINK_LIMIT) {
    pipeline.resize({ width: side, height: side, fit: 'inside', withoutEnlargement: true });
  }
  const { data, info } = await pipeline.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  const { width, height, channels } = info;
  if (channels < 1 || channels > 4) throw new Error(`cannot read an image with ${channels} channels`);
  const factor = Math.ceil(Math.max(width, height) / side);
  const pixels = new Uint8Array(data.buffer, data.byteOffset, data.length);
  const small = factor > 1 ? boxShrink(pixels, width, height, channels, factor) : { data: pixels, width, height };
  return { data: toGray(small.data, small.width * small.height, channels), width: small.width, height: small.height };
}

/**
 * Interleaved pixels → each `factor`×`factor` block averaged into one (blocks at the right and
 * bottom edges may be partial and are averaged over what they hold, so no ink is cut off).
 * Integer sums in one pass over the source: this runs on every upload.
 */
function boxShrink(
  src: Uint8Array,
  width: number,
  height: number,
  channels: number,
  factor: number,
): { data: Uint8Array; width: number; height: number } {
  const outW = Math.ceil(width / factor);
  const outH = Math.ceil(height / factor);
  const rowLength = width * channels;
  const sums = new Uint32Array(outW * channels);
  const out = new Uint8Array(outW * outH * channels);
  for (let oy = 0; oy < outH; oy++) {
    sums.fill(0);
    const y0 = oy * factor;
    const y1 = Math.min(height, y0 + factor);
    for (let y = y0; y < y1; y++) addRow(src, y * rowLength, width, channels, factor, sums);
    const rows = y1 - y0;
    for (let ox = 0, o = oy * outW * channels; ox < outW; ox++) {
      const area = rows * (Math.min(width, (ox + 1) * factor) - ox * factor);
      const half = area >> 1;
      for (let c = 0; c < channels; c++, o++) out[o] = Math.floor((sums[ox * channels + c]! + half) / area);
    }
  }
  return { data: out, width: outW, height: outH };
}

async function framePipeline(
  source: Sharp,
  oriented: { width: number; height: number },
  manifest: Pick<ModelManifest, 'input'>,
  spec: PreprocessSpec,
  width: number,
  height: number,
  jpeg: boolean,
  workspace: Workspace | undefined,
): Promise<Prepared> {
  const [r, g, b] = spec.background;
  const background = { r, g, b, alpha: 1 };
  const fit = spec.resize === 'fill' ? 'fill' : spec.resize === 'contain' ? 'contain' : 'cover';
  // `bilinear-align-corners` is resampled here in floating point from the full-size decode: libvips
  // has no such kernel, and rounding its output to 8 bits would already move the model's answers.
  const aligned = spec.resize === 'bilinear-align-corners';
  let pipeline = source.autoOrient().flatten({ background });
  if (spec.resize === 'shorter-side-crop') {
    const { resized, crop } = shorterSideCrop(oriented, width, height, spec.cropFraction ?? DEFAULT_CROP_FRACTION);
    if (resized.width !== oriented.width || resized.height !== oriented.height)
      pipeline = pipeline.resize({ ...resized, fit: 'fill' });
    // After the resize (sharp runs an extract given after resize() on the resized image).
    pipeline = pipeline.extract(crop);
  } else if (!aligned && (oriented.width !== width || oriented.height !== height)) {
    // An image already at the model's size needs no resampling (every fit is the identity then).
    pipeline = pipeline.resize({ width, height, fit, background });
  }
  // The manifest's choice for large JPEGs: decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
  // scaling) down to a working copy at least `shrinkOnLoad` × the input on each side, then resample
  // exactly as for any other image. It moves the answers a little; the model card says how much.
  const k = spec.shrinkOnLoad;
  if (aligned && jpeg && k !== undefined && oriented.width >= 2 * k * width && oriented.height >= 2 * k * height) {
    pipeline = pipeline.resize({ width: k * width, height: k * height, fit: 'outside', fastShrinkOnLoad: true });
  }
  pipeline = spec.color === 'gray' ? pipeline.greyscale() : pipeline.toColourspace('srgb');
  const { data, info } = await pipeline.removeAlpha().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  const channels = spec.color === 'gray' ? 1 : 3;
  if (info.channels !== channels) throw new Error(`expected ${channels} channels after preprocessing, got ${info.channels}`);
  let pixels: Uint8Array = new Uint8Array(data.buffer, data.byteOffset, data.length);
  let resampled: Float32Array | undefined;
  if (aligned) {
    const n = width * height * channels;
    // The descriptors below are 8-bit statistics, as for every other policy; the tensor is not.
    const rounded = workspace?.bytes('pixels', n) ?? new Uint8Array(n);
    resampled = resizeAlignedBilinear(pixels, info.width, info.height, channels, width, height, {
      out: workspace?.floats('resampled', n),
      rounded,
    });
    pixels = rounded;
  } else if (info.width !== width || info.height !== height) {
    throw new Error(`expected ${width}×${height} after preprocessing, got ${info.width}×${info.height}`);
  }
  const gray = channels === 1 ? pixels : lumaOf(pixels, workspace?.bytes('luma', width * height));
  // The polarity is decided on the border before anything is inverted; the tensor's tables then
  // invert as they normalise, so the pixels are read once more and never rewritten.
  const inverted = spec.polarity !== 'none' && borderMedian(gray, width, height) > 127;
  const { brightness, contrast } = meanAndStd(gray);
  let dark = 0;
  for (let i = 0; i < gray.length; i++) if (gray[i]! < 128) dark++;
  const inkPixels = inverted ? dark : gray.length - dark;
  return {
    tensor: resampled
      ? floatTensor(resampled, channels, width, height, manifest.input.layout, spec, inverted, workspace)
      : toTensor(pixels, channels, width, height, manifest.input.layout, spec, inverted, workspace),
    descriptors: {
      width: oriented.width,
      height: oriented.height,
      brightness,
      contrast,
      inkRatio: round4(inkPixels / gray.length),
      inverted,
    },
  };
}

/**
 * The sizes of the `shorter-side-crop` policy, as torchvision computes them for `Resize(s)` and
 * `CenterCrop(w, h)`: the image is scaled so the crop fits inside it enlarged by 1 / `fraction`
 * (for a square input: the shorter side to round(side / fraction), the longer one truncated, as
 * `int(s * long / short)` does), and the crop starts at round((resized − crop) / 2) with Python's
 * round (halves to even): a one-pixel difference there moves a model's answers measurably.
 */
export function shorterSideCrop(
  image: { readonly width: number; readonly height: number },
  width: number,
  height: number,
  fraction: number,
): { resized: { width: number; height: number }; crop: { left: number; top: number; width: number; height: number } } {
  const shorter = Math.min(image.width, image.height);
  const longer = Math.max(image.width, image.height);
  // The shorter side's target: the crop's matching side enlarged, or more if the crop is not square.
  const portrait = image.width <= image.height;
  const target = Math.max(
    Math.round((portrait ? width : height) / fraction),
    Math.ceil(((portrait ? height : width) * shorter) / longer / fraction),
  );
  const other = Math.max(Math.floor((target * longer) / shorter), portrait ? height : width);
  const resized = portrait ? { width: target, height: other } : { width: other, height: target };
  return {
    resized,
    crop: { left: roundHalfEven((resized.width - width) / 2), top: roundHalfEven((resized.height - height) / 2), width, height },
  };
}

function roundHalfEven(v: number): number {
  const floor = Math.floor(v);
  const diff = v - floor;
  if (diff !== 0.5) return Math.round(v);
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * TensorFlow's `resizeBilinear` with `alignCorners: true` (and no half-pixel centres), computed as
 * tfjs' CPU kernel computes it: output pixel (x, y) samples the source at (x · (w − 1) / (W − 1),
 * y · (h − 1) / (H − 1)) and interpolates its four neighbours, first along x, then along y.
 * Interleaved 8-bit pixels in, interleaved floats (0–255) out (into `into.out` when given), and,
 * when `into.rounded` is given, the same values rounded to 8 bits in the same pass (`(v + 0.5) | 0`
 * is Math.round for v ≥ 0, at a fifth of its cost in V8).
 */
export function resizeAlignedBilinear(
  src: Uint8Array,
  w: number,
  h: number,
  channels: number,
  outW: number,
  outH: number,
  into: { readonly out?: Float32Array | undefined; readonly rounded?: Uint8Array | undefined } = {},
): Float32Array {
  const ratioX = outW > 1 ? (w - 1) / (outW - 1) : w / outW;
  const ratioY = outH > 1 ? (h - 1) / (outH - 1) : h / outH;
  // The column taps are the same for every row: computed once.
  const left = new Int32Array(outW);
  const right = new Int32Array(outW);
  const fracX = new Float64Array(outW);
  for (let x = 0; x < outW; x++) {
    const at = ratioX * x;
    const floor = Math.max(0, Math.floor(at));
    left[x] = floor * channels;
    right[x] = Math.min(w - 1, Math.ceil(at)) * channels;
    fracX[x] = at - floor;
  }
  const out = into.out ?? new Float32Array(outW * outH * channels);
  const rounded = into.rounded;
  for (let y = 0, o = 0; y < outH; y++) {
    const at = ratioY * y;
    const floor = Math.max(0, Math.floor(at));
    const fracY = at - floor;
    const top = floor * w * channels;
    const bottom = Math.min(h - 1, Math.ceil(at)) * w * channels;
    for (let x = 0; x < outW; x++) {
      const l = left[x]!;
      const r = right[x]!;
      const t = fracX[x]!;
      for (let c = 0; c < channels; c++, o++) {
        const topLeft = src[top + l + c]!;
        const bottomLeft = src[bottom + l + c]!;
        const upper = topLeft + (src[top + r + c]! - topLeft) * t;
        const lower = bottomLeft + (src[bottom + r + c]! - bottomLeft) * t;
        const v = upper + (lower - upper) * fracY;
        out[o] = v;
        if (rounded) rounded[o] = (v + 0.5) | 0;
      }
    }
  }
  return out;
}

/**
 * 8-bit pixels of 1–4 channels (gray, gray + alpha, RGB, RGBA) → gray. Transparent pixels are
 * flattened onto whichever of white or black contrasts with the visible content, so a dark or a
 * light drawing on a transparent canvas both stay visible.
 */
function toGray(pixels: Uint8Array, n: number, channels: number): Uint8Array {
  if (channels === 1) return Uint8Array.from(pixels);
  const gray = new Uint8Array(n);
  const hasAlpha = channels === 2 || channels === 4;
  const colour = channels >= 3;
  const alpha = hasAlpha ? new Float32Array(n) : undefined;
  let weighted = 0;
  let weights = 0;
  let transparent = false;
  for (let i = 0, o = 0; i < n; i++, o += channels) {
    const y = colour ? 0.299 * pixels[o]! + 0.587 * pixels[o + 1]! + 0.114 * pixels[o + 2]! : pixels[o]!;
    gray[i] = Math.round(y);
    if (alpha) {
      const a = pixels[o + channels - 1]! / 255;
      alpha[i] = a;
      weighted += y * a;
      weights += a;
      if (a < 1) transparent = true;
    }
  }
  if (!alpha || !transparent) return gray;
  const background = weights > 0 && weighted / weights < 128 ? 255 : 0;
  for (let i = 0; i < n; i++) {
    const a = alpha[i]!;
    gray[i] = Math.round(gray[i]! * a + background * (1 - a));
  }
  return gray;
}

function lumaOf(rgb: Uint8Array, into?: Uint8Array): Uint8Array {
  const n = rgb.length / 3;
  const gray = into ?? new Uint8Array(n);
  // ITU-R BT.601 weights (0.299, 0.587, 0.114) in 16-bit fixed point, rounded: exact for gray
  // pixels, and 2–3× faster in V8 than the floating-point form.
  for (let i = 0, o = 0; i < n; i++, o += 3)
    gray[i] = (19595 * rgb[o]! + 38470 * rgb[o + 1]! + 7471 * rgb[o + 2]! + 32768) >>> 16;
  return gray;
}

function meanAndStd(gray: Uint8Array): { brightness: number; contrast: number } {
  let sum = 0;
  let sumSq = 0;
  for (let i = 0; i < gray.length; i++) {
    const v = gray[i]!;
    sum += v;
    sumSq += v * v;
  }
  const mean = sum / gray.length;
  const variance = Math.max(0, sumSq / gray.length - mean * mean);
  return { brightness: round4(mean / 255), contrast: round4(Math.sqrt(variance) / 255) };
}

/** The median of the outer ring is the background; a light background means dark ink, so invert. */
function normalisePolarity(gray: Uint8Array, width: number, height: number, polarity: PreprocessSpec['polarity']): boolean {
  if (polarity === 'none') return false;
  if (borderMedian(gray, width, height) <= 127) return false;
  for (let i = 0; i < gray.length; i++) gray[i] = 255 - gray[i]!;
  return true;
}

function borderMedian(gray: Uint8Array, width: number, height: number): number {
  const ring = Math.max(1, Math.round(Math.min(width, height) * 0.05));
  const histogram = new Uint32Array(256);
  let count = 0;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    // Whole rows in the top and bottom bands, the left and right bands elsewhere.
    const band = y < ring || y >= height - ring;
    for (let x = 0; x < width; x = band || x >= width - ring - 1 || x < ring - 1 ? x + 1 : width - ring) {
      histogram[gray[row + x]!]!++;
      count++;
    }
  }
  let seen = 0;
  for (let v = 0; v < 256; v++) {
    seen += histogram[v] ?? 0;
    if (seen * 2 >= count) return v;
  }
  return 0;
}

/** Background → 0, brightest ink → 255, noise below the floor → 0. */
function stretchInk(gray: Uint8Array): Uint8Array {
  const histogram = new Uint32Array(256);
  let max = 0;
  for (let i = 0; i < gray.length; i++) {
    const v = gray[i]!;
    histogram[v]!++;
    if (v > max) max = v;
  }
  // The background level is the most common gray (the field), which is robust to the ink's share.
  let background = 0;
  for (let v = 1; v < 256; v++) if ((histogram[v] ?? 0) > (histogram[background] ?? 0)) background = v;
  const out = new Uint8Array(gray.length);
  const range = max - background;
  if (range < 16) return out; // a blank or nearly uniform image: no ink
  // The same arithmetic for every pixel of a level: one table of 256, not a division per pixel.
  const level = new Uint8Array(256);
  for (let g = 0; g < 256; g++) {
    const v = Math.round(((g - background) * 255) / range);
    level[g] = v < INK_FLOOR ? 0 : Math.min(255, v);
  }
  for (let i = 0; i < gray.length; i++) out[i] = level[gray[i]!]!;
  return out;
}

interface Box {
  x: number;
  y: number;
  w: number;
  h: number;
}

function bounds(ink: Uint8Array, width: number, height: number): Box | undefined {
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if ((ink[y * width + x] ?? 0) > 0) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return x1 < 0 ? undefined : { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
}

function cropGray(ink: Uint8Array, width: number, box: Box): Uint8Array {
  const out = new Uint8Array(box.w * box.h);
  for (let y = 0; y < box.h; y++) {
    const from = (box.y + y) * width + box.x;
    out.set(ink.subarray(from, from + box.w), y * box.w);
  }
  return out;
}

/** Scale the ink so its longer side is `box` pixels, keeping the aspect ratio (MNIST: 20). */
function fitIntoBox(crop: Uint8Array, w: number, h: number, box: number): { data: Uint8Array; width: number; height: number } {
  const scale = box / Math.max(w, h);
  const width = Math.max(1, Math.round(w * scale));
  const height = Math.max(1, Math.round(h * scale));
  if (width === w && height === h) return { data: crop, width, height };
  return { data: resampleGray(crop, w, h, width, height), width, height };
}

/**
 * Separable resampling of a small gray image: area averaging when shrinking (every source pixel
 * counts by the share of it an output pixel covers, so thin strokes survive), linear interpolation
 * when enlarging. Done here rather than in libvips because the crop is tiny and a second libvips
 * pipeline per image cost more than the whole resize.
 */
export function resampleGray(src: Uint8Array, w: number, h: number, outW: number, outH: number): Uint8Array {
  const xs = taps(w, outW);
  const ys = taps(h, outH);
  const rows = new Float32Array(outW * h);
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let x = 0; x < outW; x++) {
      let v = 0;
      for (let t = xs.start[x]!, end = xs.start[x + 1]!; t < end; t++) v += src[row + xs.index[t]!]! * xs.weight[t]!;
      rows[y * outW + x] = v;
    }
  }
  const out = new Uint8Array(outW * outH);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      let v = 0;
      for (let t = ys.start[y]!, end = ys.start[y + 1]!; t < end; t++) v += rows[ys.index[t]! * outW + x]! * ys.weight[t]!;
      out[y * outW + x] = Math.min(255, Math.max(0, Math.round(v)));
    }
  }
  return out;
}

/** For each output index o, the source indices and weights (summing to 1) that make it up, at
 * `index[start[o] … start[o + 1])` and `weight[…]` (flat typed arrays: this runs per image). */
interface Taps {
  readonly start: Int32Array;
  readonly index: Int32Array;
  readonly weight: Float64Array;
}

function taps(from: number, to: number): Taps {
  const scale = from / to;
  const start = new Int32Array(to + 1);
  const index: number[] = [];
  const weight: number[] = [];
  for (let o = 0; o < to; o++) {
    start[o] = index.length;
    if (scale >= 1) {
      const first = o * scale;
      const last = first + scale;
      for (let i = Math.floor(first); i < Math.min(from, Math.ceil(last)); i++) {
        const overlap = Math.min(last, i + 1) - Math.max(first, i);
        if (overlap > 0) {
          index.push(i);
          weight.push(overlap / scale);
        }
      }
    } else {
      const centre = Math.min(from - 1, Math.max(0, (o + 0.5) * scale - 0.5));
      const left = Math.floor(centre);
      const t = centre - left;
      index.push(left);
      weight.push(1 - t);
      if (t > 0 && left + 1 < from) {
        index.push(left + 1);
        weight.push(t);
      }
    }
  }
  start[to] = index.length;
  return { start, index: Int32Array.from(index), weight: Float64Array.from(weight) };
}

/** Put the ink's centre of mass at the centre of the field, as MNIST did. */
function placeByCentreOfMass(ink: Uint8Array, w: number, h: number, field: Uint8Array, fieldW: number, fieldH: number): void {
  let mass = 0;
  let mx = 0;
  let my = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = ink[y * w + x] ?? 0;
      mass += v;
      mx += v * (x + 0.5);
      my += v * (y + 0.5);
    }
  }
  const cx = mass > 0 ? mx / mass : w / 2;
  const cy = mass > 0 ? my / mass : h / 2;
  const ox = clamp(Math.round(fieldW / 2 - cx), 0, fieldW - w);
  const oy = clamp(Math.round(fieldH / 2 - cy), 0, fieldH - h);
  for (let y = 0; y < h; y++) field.set(ink.subarray(y * w, y * w + w), (oy + y) * fieldW + ox);
}

function round4(v: number): number {
  return Math.round(v * 1e4) / 1e4;
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(Math.max(v, lo), Math.max(lo, hi));
}

/**
 * Adds one source row into the per-block sums. Gray and RGB rows, the common cases, run with the
 * block's sums in locals: a typed-array read-modify-write per byte, or a loop set up per block,
 * made the whole shrink 4–5× slower (measured with bench/preprocess.bench.ts).
 */
function addRow(src: Uint8Array, start: number, width: number, channels: number, factor: number, sums: Uint32Array): void {
  const end = start + width * channels;
  let o = 0;
  let n = 0;
  if (channels === 1) {
    let s0 = 0;
    for (let p = start; p < end; p++) {
      s0 += src[p]!;
      if (++n === factor) {
        sums[o++]! += s0;
        s0 = 0;
        n = 0;
      }
    }
    if (n > 0) sums[o]! += s0;
  } else if (channels === 3) {
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    for (let p = start; p < end; p += 3) {
      s0 += src[p]!;
      s1 += src[p + 1]!;
      s2 += src[p + 2]!;
      if (++n === factor) {
        sums[o]! += s0;
        sums[o + 1]! += s1;
        sums[o + 2]! += s2;
        o += 3;
        s0 = s1 = s2 = 0;
        n = 0;
      }
    }
    if (n > 0) {
      sums[o]! += s0;
      sums[o + 1]! += s1;
      sums[o + 2]! += s2;
    }
  } else {
    for (let p = start, x = 0; p < end; x++) {
      const block = Math.floor(x / factor) * channels;
      for (let c = 0; c < channels; c++) sums[block + c]! += src[p++]!;
    }
  }
}

/** Interleaved float pixels (0–255) → normalised float32 in the model's layout (inverted first if asked). */
function floatTensor(
  values: Float32Array,
  channels: number,
  width: number,
  height: number,
  layout: 'NCHW' | 'NHWC',
  spec: PreprocessSpec,
  inverted: boolean,
  workspace: Workspace | undefined,
): Float32Array {
  const { scale, mean, std } = spec.normalize;
  const plane = width * height;
  const out = workspace?.floats('tensor', plane * channels) ?? new Float32Array(plane * channels);
  const bgr = spec.channelOrder === 'bgr';
  // c is the model's channel; it reads the decoded (RGB) channel `from`.
  for (let c = 0; c < channels; c++) {
    const m = mean[c] ?? 0;
    const s = std[c] ?? 1;
    const from = bgr ? channels - 1 - c : c;
    for (let i = 0, p = from; i < plane; i++, p += channels) {
      const v = inverted ? 255 - values[p]! : values[p]!;
      out[layout === 'NCHW' ? c * plane + i : i * channels + c] = (v * scale - m) / s;
    }
  }
  return out;
}

/** Interleaved 8-bit pixels → normalised float32 in the model's layout (inverted first if asked). */
function toTensor(
  pixels: Uint8Array,
  channels: number,
  width: number,
  height: number,
  layout: 'NCHW' | 'NHWC',
  spec: PreprocessSpec,
  inverted: boolean,
  workspace: Workspace | undefined,
): Float32Array {
  const { scale, mean, std } = spec.normalize;
  const plane = width * height;
  const out = workspace?.floats('tensor', plane * channels) ?? new Float32Array(plane * channels);
  // One table per channel: the same arithmetic as (v · scale − m) / s, done 256 times, not per pixel.
  const tables = Array.from({ length: channels }, (_, c) => {
    const m = mean[c] ?? 0;
    const s = std[c] ?? 1;
    const table = new Float32Array(256);
    for (let v = 0; v < 256; v++) table[v] = ((inverted ? 255 - v : v) * scale - m) / s;
    return table;
  });
  if (spec.channelOrder === 'bgr' && channels === 3) {
    // The model's channel 0 is blue: it reads the decoded pixel's third byte (tables are in the model's order).
    const [t0, t1, t2] = tables as [Float32Array, Float32Array, Float32Array];
    const nchw = layout === 'NCHW';
    for (let i = 0, p = 0; i < plane; i++, p += 3) {
      out[nchw ? i : p] = t0[pixels[p + 2]!]!;
      out[nchw ? plane + i : p + 1] = t1[pixels[p + 1]!]!;
      out[nchw ? 2 * plane + i : p + 2] = t2[pixels[p]!]!;
    }
  } else if (layout === 'NHWC') {
    for (let i = 0; i < out.length; i++) out[i] = tables[i % channels]![pixels[i]!]!;
  } else if (channels === 3) {
    const [r, g, b] = tables as [Float32Array, Float32Array, Float32Array];
    for (let i = 0, p = 0; i < plane; i++, p += 3) {
      out[i] = r[pixels[p]!]!;
      out[plane + i] = g[pixels[p + 1]!]!;
      out[2 * plane + i] = b[pixels[p + 2]!]!;
    }
  } else {
    for (let c = 0; c < channels; c++) {
      const table = tables[c]!;
      for (let i = 0, o = c * plane, p = c; i < plane; i++, o++, p += channels) out[o] = table[pixels[p]!]!;
    }
  }
  return out;
}
