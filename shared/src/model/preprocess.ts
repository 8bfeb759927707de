import sharp, { type Sharp } from 'sharp';
import { ProblemError } from '../problem.js';
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

/** The bytes of a JPEG, PNG, WebP or GIF file, as uploaded. */
export interface EncodedImage {
  readonly kind: 'encoded';
  readonly bytes: Buffer;
}

export type ImageInput = RawImage | EncodedImage;

/** Cheap facts about an input, published with every prediction for drift monitoring. */
export interface InputDescriptors {
  /** Size of the image as uploaded, after EXIF orientation. */
  width: number;
  height: number;
  /** Mean and standard deviation of the gray level (0–1) at working resolution, before inversion. */
  brightness: number;
  contrast: number;
  /** Share of pixels that are ink after normalisation (0–1). */
  inkRatio: number;
  /** Whether the image was inverted to light-on-dark. */
  inverted: boolean;
}

export interface Prepared {
  /** One image, laid out as the model's input (without the batch dimension). */
  readonly tensor: Float32Array;
  readonly descriptors: InputDescriptors;
}

export interface PreprocessOptions {
  /** Refuse images with more pixels than this before decoding them (decompression bombs). */
  readonly maxPixels: number;
  /** The upright size, when the caller already read it from the header (saves a libvips call). */
  readonly size?: { readonly width: number; readonly height: number };
}

/** The digit policy works on a copy at most this many times the model's input side. */
const WORKING_SCALE = 4;
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
    const source = open(input, options.maxPixels);
    const oriented =
      input.kind === 'raw'
        ? { width: input.width, height: input.height }
        : (options.size ?? (await source.metadata()).autoOrient);
    if (spec.resize === 'digit') {
      return await digitPipeline(source, oriented, manifest, spec);
    }
    return await framePipeline(source, oriented, manifest, spec, width, height);
  } catch (error) {
    throw asProblem(error);
  }
}

function open(input: ImageInput, maxPixels: number): Sharp {
  if (input.kind === 'raw') {
    return sharp(input.data, {
      raw: { width: input.width, height: input.height, channels: input.channels },
      limitInputPixels: maxPixels,
    });
  }
  // `truncated` rejects images cut short in transit but tolerates the benign warnings many real
  // cameras and editors produce; GIFs decode their first frame only.
  return sharp(input.bytes, { failOn: 'truncated', limitInputPixels: maxPixels, pages: 1 });
}

function asProblem(error: unknown): unknown {
  if (error instanceof ProblemError) return error;
  const message = error instanceof Error ? error.message : String(error);
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
): Promise<Prepared> {
  const side = Math.max(manifest.input.width, manifest.input.height) * WORKING_SCALE;
  const { data, info } = await source
    .autoOrient()
    .resize({ width: side, height: side, fit: 'inside', withoutEnlargement: true })
    .ensureAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });

  const gray = flattenToGray(data, info.width * info.height);
  const { brightness, contrast } = meanAndStd(gray);
  const inverted = normalisePolarity(gray, info.width, info.height, spec.polarity);
  const ink = stretchInk(gray);

  const field = new Uint8Array(manifest.input.width * manifest.input.height);
  const box = bounds(ink, info.width, info.height);
  if (box) {
    const crop = cropGray(ink, info.width, box);
    const fitted = fitIntoBox(crop, box.w, box.h, spec.box ?? manifest.input.width);
    placeByCentreOfMass(fitted.data, fitted.width, fitted.height, field, manifest.input.width, manifest.input.height);
  }
  let inkPixels = 0;
  for (const v of field) if (v > INK_FLOOR) inkPixels++;
  return {
    tensor: toTensor(field, 1, manifest.input.width, manifest.input.height, manifest.input.layout, spec),
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

async function framePipeline(
  source: Sharp,
  oriented: { width: number; height: number },
  manifest: Pick<ModelManifest, 'input'>,
  spec: PreprocessSpec,
  width: number,
  height: number,
): Promise<Prepared> {
  const [r, g, b] = spec.background;
  const background = { r, g, b, alpha: 1 };
  const fit = spec.resize === 'fill' ? 'fill' : spec.resize === 'contain' ? 'contain' : 'cover';
  let pipeline = source.autoOrient().flatten({ background }).resize({ width, height, fit, background });
  pipeline = spec.color === 'gray' ? pipeline.greyscale() : pipeline.toColourspace('srgb');
  const { data, info } = await pipeline.removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const channels = spec.color === 'gray' ? 1 : 3;
  if (info.channels !== channels) throw new Error(`expected ${channels} channels after preprocessing, got ${info.channels}`);
  const pixels = new Uint8Array(data.buffer, data.byteOffset, data.length);

  const gray = channels === 1 ? Uint8Array.from(pixels) : lumaOf(pixels);
  const { brightness, contrast } = meanAndStd(gray);
  const inverted = normalisePolarity(gray, width, height, spec.polarity);
  if (inverted) for (let i = 0; i < pixels.length; i++) pixels[i] = 255 - (pixels[i] ?? 0);
  let inkPixels = 0;
  for (const v of gray) if (v > 127) inkPixels++;
  return {
    tensor: toTensor(pixels, channels, width, height, manifest.input.layout, spec),
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

/** RGBA → gray. Transparent pixels are flattened onto whichever of white or black contrasts with
 * the visible content, so a dark or a light drawing on a transparent canvas both stay visible. */
function flattenToGray(rgba: Buffer, n: number): Uint8Array {
  const gray = new Uint8Array(n);
  const alpha = new Float32Array(n);
  let weighted = 0;
  let weights = 0;
  let transparent = false;
  for (let i = 0; i < n; i++) {
    const o = i * 4;
    const y = 0.299 * (rgba[o] ?? 0) + 0.587 * (rgba[o + 1] ?? 0) + 0.114 * (rgba[o + 2] ?? 0);
    const a = (rgba[o + 3] ?? 255) / 255;
    gray[i] = Math.round(y);
    alpha[i] = a;
    weighted += y * a;
    weights += a;
    if (a < 1) transparent = true;
  }
  if (!transparent) return gray;
  const background = weights > 0 && weighted / weights < 128 ? 255 : 0;
  for (let i = 0; i < n; i++) {
    const a = alpha[i] ?? 1;
    gray[i] = Math.round((gray[i] ?? 0) * a + background * (1 - a));
  }
  return gray;
}

function lumaOf(rgb: Uint8Array): Uint8Array {
  const n = rgb.length / 3;
  const gray = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    gray[i] = Math.round(0.299 * (rgb[i * 3] ?? 0) + 0.587 * (rgb[i * 3 + 1] ?? 0) + 0.114 * (rgb[i * 3 + 2] ?? 0));
  }
  return gray;
}

function meanAndStd(gray: Uint8Array): { brightness: number; contrast: number } {
  let sum = 0;
  let sumSq = 0;
  for (const v of gray) {
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
  for (let i = 0; i < gray.length; i++) gray[i] = 255 - (gray[i] ?? 0);
  return true;
}

function borderMedian(gray: Uint8Array, width: number, height: number): number {
  const ring = Math.max(1, Math.round(Math.min(width, height) * 0.05));
  const histogram = new Uint32Array(256);
  let count = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (y < ring || y >= height - ring || x < ring || x >= width - ring) {
        histogram[gray[y * width + x] ?? 0]!++;
        count++;
      }
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
  for (const v of gray) {
    histogram[v]!++;
    if (v > max) max = v;
  }
  // The background level is the most common gray (the field), which is robust to the ink's share.
  let background = 0;
  for (let v = 1; v < 256; v++) if ((histogram[v] ?? 0) > (histogram[background] ?? 0)) background = v;
  const out = new Uint8Array(gray.length);
  const range = max - background;
  if (range < 16) return out; // a blank or nearly uniform image: no ink
  for (let i = 0; i < gray.length; i++) {
    const v = Math.round((((gray[i] ?? 0) - background) * 255) / range);
    out[i] = v < INK_FLOOR ? 0 : Math.min(255, v);
  }
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
  const xs = weights(w, outW);
  const ys = weights(h, outH);
  const rows = new Float32Array(outW * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < outW; x++) {
      let v = 0;
      for (const [i, wt] of xs[x]!) v += src[y * w + i]! * wt;
      rows[y * outW + x] = v;
    }
  }
  const out = new Uint8Array(outW * outH);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      let v = 0;
      for (const [i, wt] of ys[y]!) v += rows[i * outW + x]! * wt;
      out[y * outW + x] = Math.min(255, Math.max(0, Math.round(v)));
    }
  }
  return out;
}

/** For each output index, the source indices and weights (summing to 1) that make it up. */
function weights(from: number, to: number): [number, number][][] {
  const scale = from / to;
  const table: [number, number][][] = [];
  for (let o = 0; o < to; o++) {
    const taps: [number, number][] = [];
    if (scale >= 1) {
      const start = o * scale;
      const end = start + scale;
      for (let i = Math.floor(start); i < Math.min(from, Math.ceil(end)); i++) {
        const overlap = Math.min(end, i + 1) - Math.max(start, i);
        if (overlap > 0) taps.push([i, overlap / scale]);
      }
    } else {
      const centre = Math.min(from - 1, Math.max(0, (o + 0.5) * scale - 0.5));
      const left = Math.floor(centre);
      const t = centre - left;
      taps.push([left, 1 - t]);
      if (t > 0 && left + 1 < from) taps.push([left + 1, t]);
    }
    table.push(taps);
  }
  return table;
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

/** Interleaved 8-bit pixels → normalised float32 in the model's layout. */
function toTensor(
  pixels: Uint8Array,
  channels: number,
  width: number,
  height: number,
  layout: 'NCHW' | 'NHWC',
  spec: PreprocessSpec,
): Float32Array {
  const { scale, mean, std } = spec.normalize;
  const plane = width * height;
  const out = new Float32Array(plane * channels);
  for (let c = 0; c < channels; c++) {
    const m = mean[c] ?? 0;
    const s = std[c] ?? 1;
    for (let i = 0; i < plane; i++) {
      const v = ((pixels[i * channels + c] ?? 0) * scale - m) / s;
      out[layout === 'NCHW' ? c * plane + i : i * channels + c] = v;
    }
  }
  return out;
}
