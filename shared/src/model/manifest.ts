import { z } from 'zod';

/**
 * A model is a folder: `model.onnx` plus `manifest.json` described here. The worker knows nothing
 * about a model beyond its manifest, so a new architecture, input size or colour mode is a new
 * folder, not new code.
 */
export const MANIFEST_FILE = 'manifest.json';

const Normalize = z
  .object({
    /** Applied first: pixel (0–255) × scale. */
    scale: z
      .number()
      .positive()
      .default(1 / 255),
    /** Then (value − mean[c]) / std[c], one entry per channel. */
    mean: z.array(z.number()).min(1).max(3),
    std: z.array(z.number().positive()).min(1).max(3),
  })
  .describe('Per-channel normalisation');

export const ResizePolicy = z.enum([
  /** MNIST's own recipe: crop to the ink, fit it in a `box`×`box` square, centre by mass. */
  'digit',
  /** Scale to cover the input, centre-crop the overflow (the usual ImageNet recipe). */
  'cover',
  /** Scale to fit inside, pad with the background colour. */
  'contain',
  /** Stretch to the input size, ignoring aspect ratio. */
  'fill',
  /**
   * Stretch like `fill`, but sampled exactly as TensorFlow's `resizeBilinear(…, alignCorners: true)`
   * (corner pixels onto corner pixels, two-tap linear interpolation, no antialiasing), in floating
   * point from the full-size decode: for models served that way at training time (nsfwjs). A
   * different resampler moves such a model's probabilities by far more than its conversion does.
   */
  'bilinear-align-corners',
  /**
   * torchvision's `Resize(256)` + `CenterCrop(224)` (and PaddleClas' `ResizeImage(resize_short=256)`
   * + `CropImage(224)`): scale so the input fits inside the image enlarged by 1 / `cropFraction`
   * (the shorter side to 256 for a 224 input at 0.875), then cut the input size out of the centre.
   * `cover` crops at the input size itself, which shows the model more of the border than it was
   * trained on.
   */
  'shorter-side-crop',
]);
export type ResizePolicy = z.infer<typeof ResizePolicy>;

export const PreprocessSpec = z
  .object({
    color: z.enum(['gray', 'rgb']),
    resize: ResizePolicy,
    /** For `digit`: the side of the square the ink is fitted into (MNIST: 20 in a 28 field). */
    box: z.number().int().positive().optional(),
    /**
     * `light-on-dark`: detect the background from the border and invert dark-on-light scans so the
     * model always sees light ink on a dark field (as MNIST does). `none`: leave pixels as they are.
     */
    polarity: z.enum(['light-on-dark', 'none']).default('none'),
    /** Colour that transparent pixels are flattened onto (and `contain` pads with), as 0–255 RGB. */
    background: z.tuple([z.number(), z.number(), z.number()]).default([255, 255, 255]),
    normalize: Normalize,
    /**
     * For `bilinear-align-corners`: JPEGs at least 2 × shrinkOnLoad × the input on both sides are
     * decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, then libvips' reduce) to a working
     * copy at least `shrinkOnLoad` × the input, and resampled from that. Absent: always decoded in
     * full, the exact path. A phone's 12 MP photo then costs a fraction of its full decode, and the
     * answers move a little (measure it on real photos and state it in the model card).
     */
    shrinkOnLoad: z.number().int().min(1).max(8).optional(),
    /** For `shorter-side-crop`: the share of the resized image the centre crop keeps (default 0.875 = 224 / 256). */
    cropFraction: z.number().gt(0).max(1).optional(),
    /**
     * The order of the colour channels the model was trained on: `bgr` for models trained on
     * OpenCV's `imread` (Caffe, many PaddlePaddle and MXNet exports). `normalize.mean` and `std`
     * are given in this order too, as the training code wrote them. Absent: `rgb`.
     */
    channelOrder: z.enum(['rgb', 'bgr']).optional(),
  })
  .refine((p) => p.resize !== 'digit' || (p.box !== undefined && p.color === 'gray'), {
    error: 'the digit policy needs a box size and gray colour',
  })
  .refine((p) => p.channelOrder !== 'bgr' || p.color === 'rgb', { error: 'channelOrder bgr needs rgb colour' });
export type PreprocessSpec = z.infer<typeof PreprocessSpec>;

export const ModelManifest = z
  .object({
    schema: z.literal('conveyor.model/v1'),
    name: z.string().regex(/^[a-z0-9][a-z0-9._-]*$/),
    version: z.string().min(1),
    description: z.string().optional(),
    file: z.string().default('model.onnx'),
    /** sha256 of the ONNX file; checked when the model is loaded. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    input: z.object({
      name: z.string(),
      layout: z.enum(['NCHW', 'NHWC']),
      channels: z.union([z.literal(1), z.literal(3)]),
      height: z.number().int().positive(),
      width: z.number().int().positive(),
    }),
    output: z.object({
      name: z.string(),
      /** `probabilities` are used as they are; `logits` go through a softmax first. */
      kind: z.enum(['probabilities', 'logits']),
      /** An optional second output (e.g. the penultimate layer) published for drift monitoring. */
      embedding: z.string().optional(),
    }),
    preprocess: PreprocessSpec,
    labels: z.array(z.string().min(1)).min(2),
    /** Classes listed in a prediction's `top` for this model (overrides the worker's TOP_K; default: all up to 10, else 5). */
    topK: z.number().int().min(1).max(1000).optional(),
    /** Figures measured when the model was built, e.g. `{ testAccuracy: 0.981 }`. */
    metrics: z.record(z.string(), z.number()).default({}),
    /** Free-form provenance: dataset hash, seed, git commit, training run id. */
    training: z.record(z.string(), z.unknown()).default({}),
  })
  .refine((m) => (m.preprocess.color === 'gray' ? 1 : 3) === m.input.channels, {
    error: 'preprocess.color must match input.channels (gray = 1, rgb = 3)',
  })
  .refine(
    (m) => m.preprocess.normalize.mean.length === m.input.channels && m.preprocess.normalize.std.length === m.input.channels,
    { error: 'normalize.mean and normalize.std need one entry per input channel' },
  );
export type ModelManifest = z.infer<typeof ModelManifest>;
export type ModelManifestInput = z.input<typeof ModelManifest>;
