import type { PreprocessSpec } from '../manifest.js';
import type { Workspace } from './workspace.js';

/** Interleaved float pixels (0–255) → normalised float32 in the model's layout (inverted first if asked). */
export function floatTensor(
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
export function toTensor(
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
