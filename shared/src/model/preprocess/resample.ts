/**
 * Interleaved pixels → each `factor`×`factor` block averaged into one (blocks at the right and
 * bottom edges may be partial and are averaged over what they hold, so no ink is cut off).
 * Integer sums in one pass over the source: this runs on every upload.
 */
export function boxShrink(
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
