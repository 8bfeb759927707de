import type { Sharp } from 'sharp';
import type { ModelManifest, PreprocessSpec } from '../manifest.js';
import { borderMedian, clamp, meanAndStd, round4 } from './pixels.js';
import { boxShrink, resampleGray } from './resample.js';
import { toTensor } from './tensor.js';
import type { Prepared } from './types.js';
import type { Workspace } from './workspace.js';

/**
 * The `digit` policy: a handwritten digit as MNIST prepared them — the ink found, cropped, scaled
 * into a box and placed by its centre of mass — from a gray working copy of the upload.
 */

/** The digit policy works on a copy at most this many times the model's input side. */
const WORKING_SCALE = 4;
/** Images up to this many times the working side are decoded in full and shrunk in JS (see workingGray). */
const JS_SHRINK_LIMIT = 4;
/** After contrast stretching, gray levels below this are paper or sensor noise, not ink. */
const INK_FLOOR = 26;

export async function digitPipeline(
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

/** The median of the outer ring is the background; a light background means dark ink, so invert. */
function normalisePolarity(gray: Uint8Array, width: number, height: number, polarity: PreprocessSpec['polarity']): boolean {
  if (polarity === 'none') return false;
  if (borderMedian(gray, width, height) <= 127) return false;
  for (let i = 0; i < gray.length; i++) gray[i] = 255 - gray[i]!;
  return true;
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
