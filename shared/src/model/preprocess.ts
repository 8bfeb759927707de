import sharp, { type Sharp } from 'sharp';
import { ProblemError } from '../problem.js';
import { embeddedIccProfile, isSrgbProfile } from './icc.js';
import { checkDimensions } from './limits.js';
import type { ModelManifest } from './manifest.js';
import { PausedError, WALL_BACKSTOP, withDeadline } from './preprocess/cpu-deadline.js';
import { digitPipeline } from './preprocess/digit.js';
import { framePipeline } from './preprocess/frame.js';
import type { ImageInput, Prepared } from './preprocess/types.js';
import type { Workspace } from './preprocess/workspace.js';

/**
 * Image → model tensor. The trainer runs its training and evaluation data through this very
 * function, and the worker runs every upload through it, so what the model sees in production is
 * by construction what it saw in training.
 */
// The parts, each in preprocess/: the types, the per-job buffers, the CPU-time deadline, the two
// pipelines (digit, frame), the resampling, the pixel statistics and the tensor. This file is the
// one entry point every caller imports.
export type { EncodedImage, ImageInput, Prepared, RawImage } from './preprocess/types.js';
export { Workspace } from './preprocess/workspace.js';
export { PausedError } from './preprocess/cpu-deadline.js';
export { DEFAULT_CROP_FRACTION } from './preprocess/frame.js';
export { resampleGray, resizeAlignedBilinear, shorterSideCrop } from './preprocess/resample.js';

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
