import type { PreprocessSpec } from '../manifest.js';

/** The 8-bit gray statistics of an image (for the drift descriptors): Σ gray, Σ gray², pixels < 128. */
export interface GrayTotals {
  readonly sum: number;
  readonly sumSq: number;
  readonly dark: number;
}

/**
 * The `bilinear-align-corners` resize, the normalised tensor and the gray statistics in one walk
 * over the output, for models that take the picture as it is (`polarity: 'none'`, so nothing
 * depends on the result before the tensor is written). It computes bit for bit what the separate
 * passes compute — resizeAlignedBilinear (float32 values and their 8-bit rounding), lumaOf,
 * meanAndStd and the dark count over that rounding, floatTensor over the float32 values — without
 * writing the four intermediate planes and reading them back (1.3 MB per 224×224 image, each
 * walked once more; see the tests in resize-aligned-tensor.test.ts for the equality).
 *
 * `src` holds interleaved 8-bit RGB (channels 3) or gray (channels 1) pixels, `w`×`h`; the tensor
 * is `outW`×`outH`, laid out and normalised as `input.layout` and `spec` say.
 */
export function resizeAlignedIntoTensor(
  src: Uint8Array,
  w: number,
  h: number,
  channels: 1 | 3,
  outW: number,
  outH: number,
  layout: 'NCHW' | 'NHWC',
  spec: Pick<PreprocessSpec, 'normalize' | 'channelOrder'>,
  out: Float32Array,
): GrayTotals {
  const plane = outW * outH;
  if (out.length !== plane * channels) throw new Error(`tensor of ${out.length} values for ${outW}×${outH}×${channels}`);
  // Per decoded channel k: where its values go (the model's channel c = k, or 2 − k for BGR) and
  // that channel's normalisation; pixel i's value is at base + i · stride.
  const { scale, mean, std } = spec.normalize;
  const targets = Array.from({ length: channels }, (_, k) => {
    const c = spec.channelOrder === 'bgr' ? channels - 1 - k : k;
    return { base: layout === 'NCHW' ? c * plane : c, scale, m: mean[c] ?? 0, s: std[c] ?? 1 };
  });
  const walk = { src, w, h, outW, outH, columns: columnTaps(w, outW, channels), stride: layout === 'NCHW' ? 1 : channels, out };
  return channels === 3 ? rgbWalk(walk, targets as [Target, Target, Target]) : grayWalk(walk, targets[0]!);
}

interface Target {
  readonly base: number;
  readonly scale: number;
  readonly m: number;
  readonly s: number;
}

interface Walk {
  readonly src: Uint8Array;
  readonly w: number;
  readonly h: number;
  readonly outW: number;
  readonly outH: number;
  readonly columns: Columns;
  readonly stride: number;
  readonly out: Float32Array;
}

interface Columns {
  /** Offsets of the left and right source pixels of each output column, and the weight of the right one. */
  readonly left: Int32Array;
  readonly right: Int32Array;
  readonly frac: Float64Array;
}

/** The column taps, the same for every row: computed once, exactly as resizeAlignedBilinear does. */
function columnTaps(w: number, outW: number, channels: number): Columns {
  const ratio = outW > 1 ? (w - 1) / (outW - 1) : w / outW;
  const left = new Int32Array(outW);
  const right = new Int32Array(outW);
  const frac = new Float64Array(outW);
  for (let x = 0; x < outW; x++) {
    const at = ratio * x;
    const floor = Math.max(0, Math.floor(at));
    left[x] = floor * channels;
    right[x] = Math.min(w - 1, Math.ceil(at)) * channels;
    frac[x] = at - floor;
  }
  return { left, right, frac };
}

/** Row y's source rows (offsets of their first pixel) and the weight of the lower one. */
function rowTaps(walk: Walk, y: number, channels: number): { top: number; bottom: number; fy: number } {
  const { w, h, outH } = walk;
  const ratio = outH > 1 ? (h - 1) / (outH - 1) : h / outH;
  const at = ratio * y;
  const floor = Math.max(0, Math.floor(at));
  return { top: floor * w * channels, bottom: Math.min(h - 1, Math.ceil(at)) * w * channels, fy: at - floor };
}

function rgbWalk(walk: Walk, [t0, t1, t2]: [Target, Target, Target]): GrayTotals {
  const { src, outW, outH, stride, out } = walk;
  const { left, right, frac } = walk.columns;
  // (x · scale − 0) / 1 is x · scale exactly in IEEE arithmetic: with mean 0 and std 1 (nsfwjs'
  // [0, 1] input) the subtraction and the division, a tenth of this walk, are left out.
  const { scale } = t0;
  const scaleOnly = [t0, t1, t2].every((t) => t.m === 0 && t.s === 1);
  let sum = 0;
  let sumSq = 0;
  let dark = 0;
  for (let y = 0, i = 0; y < outH; y++) {
    const { top, bottom, fy } = rowTaps(walk, y, 3);
    for (let x = 0; x < outW; x++, i++) {
      const tl = top + left[x]!;
      const tr = top + right[x]!;
      const bl = bottom + left[x]!;
      const br = bottom + right[x]!;
      const t = frac[x]!;
      // resizeAlignedBilinear's arithmetic, in the same order: along x, then along y, in doubles.
      let a = src[tl]!;
      let b = src[bl]!;
      let upper = a + (src[tr]! - a) * t;
      const v0 = upper + (b + (src[br]! - b) * t - upper) * fy;
      a = src[tl + 1]!;
      b = src[bl + 1]!;
      upper = a + (src[tr + 1]! - a) * t;
      const v1 = upper + (b + (src[br + 1]! - b) * t - upper) * fy;
      a = src[tl + 2]!;
      b = src[bl + 2]!;
      upper = a + (src[tr + 2]! - a) * t;
      const v2 = upper + (b + (src[br + 2]! - b) * t - upper) * fy;
      // Normalised from the float32 value, as floatTensor reads it from the resampled plane.
      const at = i * stride;
      if (scaleOnly) {
        out[t0.base + at] = Math.fround(v0) * scale;
        out[t1.base + at] = Math.fround(v1) * scale;
        out[t2.base + at] = Math.fround(v2) * scale;
      } else {
        out[t0.base + at] = (Math.fround(v0) * t0.scale - t0.m) / t0.s;
        out[t1.base + at] = (Math.fround(v1) * t1.scale - t1.m) / t1.s;
        out[t2.base + at] = (Math.fround(v2) * t2.scale - t2.m) / t2.s;
      }
      // The statistics from the 8-bit rounding of the double ((v + 0.5) | 0 is Math.round for
      // v ≥ 0) through lumaOf's fixed-point BT.601 weights.
      const gray = (19595 * ((v0 + 0.5) | 0) + 38470 * ((v1 + 0.5) | 0) + 7471 * ((v2 + 0.5) | 0) + 32768) >>> 16;
      sum += gray;
      sumSq += gray * gray;
      if (gray < 128) dark++;
    }
  }
  return { sum, sumSq, dark };
}

function grayWalk(walk: Walk, target: Target): GrayTotals {
  const { src, outW, outH, stride, out } = walk;
  const { left, right, frac } = walk.columns;
  const { base, scale, m, s } = target;
  let sum = 0;
  let sumSq = 0;
  let dark = 0;
  for (let y = 0, i = 0; y < outH; y++) {
    const { top, bottom, fy } = rowTaps(walk, y, 1);
    for (let x = 0; x < outW; x++, i++) {
      const t = frac[x]!;
      const a = src[top + left[x]!]!;
      const b = src[bottom + left[x]!]!;
      const upper = a + (src[top + right[x]!]! - a) * t;
      const v = upper + (b + (src[bottom + right[x]!]! - b) * t - upper) * fy;
      out[base + i * stride] = (Math.fround(v) * scale - m) / s;
      const gray = (v + 0.5) | 0;
      sum += gray;
      sumSq += gray * gray;
      if (gray < 128) dark++;
    }
  }
  return { sum, sumSq, dark };
}
