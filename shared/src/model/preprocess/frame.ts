import type { Sharp } from 'sharp';
import type { ModelManifest, PreprocessSpec } from '../manifest.js';
import type { ImageDescriptors } from '../../contract/common.contract.js';
import { resizeAlignedIntoTensor } from './aligned.js';
import { borderMedian, brightnessAndContrast, lumaOf, round4 } from './pixels.js';
import { resizeAlignedBilinear, shorterSideCrop } from './resample.js';
import { floatTensor, toTensor } from './tensor.js';
import type { Prepared } from './types.js';
import type { Workspace } from './workspace.js';

/**
 * Every policy but `digit`: the whole picture resized to the model's input (fill, contain, cover,
 * shorter-side-crop or bilinear-align-corners), in sRGB or gray, normalised into the tensor.
 */

/** `shorter-side-crop` without a cropFraction: torchvision's 224 of 256. */
export const DEFAULT_CROP_FRACTION = 0.875;

export async function framePipeline(
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
  const channels: 1 | 3 = spec.color === 'gray' ? 1 : 3;
  if (info.channels !== channels) throw new Error(`expected ${channels} channels after preprocessing, got ${info.channels}`);
  const decoded = {
    pixels: new Uint8Array(data.buffer, data.byteOffset, data.length),
    width: info.width,
    height: info.height,
    channels,
  };
  // Nothing waits on the result's border without a polarity: the resize, tensor and statistics in one walk.
  return aligned && spec.polarity === 'none'
    ? alignedInOneWalk(decoded, oriented, manifest, spec, workspace)
    : separatePasses(decoded, aligned, oriented, manifest, spec, workspace);
}

interface Decoded {
  readonly pixels: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3;
}

function alignedInOneWalk(
  decoded: Decoded,
  oriented: { width: number; height: number },
  manifest: Pick<ModelManifest, 'input'>,
  spec: PreprocessSpec,
  workspace: Workspace | undefined,
): Prepared {
  const { width, height, layout } = manifest.input;
  const { channels } = decoded;
  const n = width * height;
  const tensor = workspace?.floats('tensor', n * channels) ?? new Float32Array(n * channels);
  const { sum, sumSq, dark } = resizeAlignedIntoTensor(
    decoded.pixels,
    decoded.width,
    decoded.height,
    channels,
    width,
    height,
    layout,
    spec,
    tensor,
  );
  return { tensor, descriptors: descriptorsOf(oriented, sum, sumSq, dark, n, false) };
}

function separatePasses(
  decoded: Decoded,
  aligned: boolean,
  oriented: { width: number; height: number },
  manifest: Pick<ModelManifest, 'input'>,
  spec: PreprocessSpec,
  workspace: Workspace | undefined,
): Prepared {
  const { width, height } = manifest.input;
  const { channels } = decoded;
  let pixels = decoded.pixels;
  let resampled: Float32Array | undefined;
  if (aligned) {
    const n = width * height * channels;
    // The descriptors below are 8-bit statistics, as for every other policy; the tensor is not.
    const rounded = workspace?.bytes('pixels', n) ?? new Uint8Array(n);
    resampled = resizeAlignedBilinear(pixels, decoded.width, decoded.height, channels, width, height, {
      out: workspace?.floats('resampled', n),
      rounded,
    });
    pixels = rounded;
  } else if (decoded.width !== width || decoded.height !== height) {
    throw new Error(`expected ${width}×${height} after preprocessing, got ${decoded.width}×${decoded.height}`);
  }
  const gray = channels === 1 ? pixels : lumaOf(pixels, workspace?.bytes('luma', width * height));
  // The polarity is decided on the border before anything is inverted; the tensor's tables then
  // invert as they normalise, so the pixels are read once more and never rewritten.
  const inverted = spec.polarity !== 'none' && borderMedian(gray, width, height) > 127;
  let sum = 0;
  let sumSq = 0;
  let dark = 0;
  for (let i = 0; i < gray.length; i++) {
    const v = gray[i]!;
    sum += v;
    sumSq += v * v;
    if (v < 128) dark++;
  }
  return {
    tensor: resampled
      ? floatTensor(resampled, channels, width, height, manifest.input.layout, spec, inverted, workspace)
      : toTensor(pixels, channels, width, height, manifest.input.layout, spec, inverted, workspace),
    descriptors: descriptorsOf(oriented, sum, sumSq, dark, gray.length, inverted),
  };
}

function descriptorsOf(
  oriented: { width: number; height: number },
  sum: number,
  sumSq: number,
  dark: number,
  count: number,
  inverted: boolean,
): ImageDescriptors {
  const inkPixels = inverted ? dark : count - dark;
  return {
    width: oriented.width,
    height: oriented.height,
    ...brightnessAndContrast(sum, sumSq, count),
    inkRatio: round4(inkPixels / count),
    inverted,
  };
}
